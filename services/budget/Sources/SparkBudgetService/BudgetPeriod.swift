import Foundation

/// How a budget's spend is counted: per calendar day or month in the service's time zone, or in
/// total. A period is named by its key (`2026-12-02`, `2026-12`, `total`); spend counts in the
/// period its reservation was made in, even when it settles after the boundary.
enum BudgetPeriod: String, Sendable, CaseIterable {
    case day, month, total

    /// The key of the period that holds `date`.
    func key(at date: Date, in timeZone: TimeZone) -> String {
        guard self != .total else { return "total" }
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = timeZone
        let parts = calendar.dateComponents([.year, .month, .day], from: date)
        let year = parts.year ?? 1970
        let month = parts.month ?? 1
        let monthKey = "\(year)-\(month < 10 ? "0" : "")\(month)"
        guard self == .day else { return monthKey }
        let day = parts.day ?? 1
        return "\(monthKey)-\(day < 10 ? "0" : "")\(day)"
    }

    /// Whether `key` names a period of this kind (it need not have started yet).
    func isKey(_ key: String) -> Bool {
        let parts = key.split(separator: "-", omittingEmptySubsequences: false)
        switch self {
        case .total: return key == "total"
        case .month: return parts.count == 2 && Self.number(parts[0], digits: 4, in: 1...9999) && Self.number(parts[1], digits: 2, in: 1...12)
        case .day:
            return parts.count == 3 && Self.number(parts[0], digits: 4, in: 1...9999) && Self.number(parts[1], digits: 2, in: 1...12)
                && Self.number(parts[2], digits: 2, in: 1...31)
        }
    }

    /// What a key of this kind looks like, for error messages.
    var example: String {
        switch self {
        case .day: return "YYYY-MM-DD, such as 2026-12-02"
        case .month: return "YYYY-MM, such as 2026-12"
        case .total: return "total"
        }
    }

    private static func number(_ text: Substring, digits: Int, in range: ClosedRange<Int>) -> Bool {
        text.count == digits && text.allSatisfy(\.isASCII) && Int(text).map(range.contains) == true
    }
}
