/// Numbers read from JSON text, and how a number kept as written (``ExprValue/number(_:)``)
/// compares and takes part in arithmetic.
///
/// The rule: what was written is what is written back. An integer that fits 64 bits is an `.int`
/// (its text is its decimal form), a number a double writes back the same is a `.double`, and any
/// other number keeps its text. Comparisons between integers are exact at any size; any other
/// comparison is between doubles.
public enum ExprNumber {
    /// The value of a JSON number's text (already checked to be one).
    static func value(of text: String) -> ExprValue {
        if self.isIntegral(text) {
            // `-0` is the one integer text that fits but would not write back the same.
            if text != "-0", let number = Int64(text) { return .int(number) }
            return .number(text)
        }
        if let number = Double(text), number.isFinite, number.description == text { return .double(number) }
        return .number(text)
    }

    /// Whether a number's text is a whole number written without fraction or exponent.
    public static func isIntegral(_ text: String) -> Bool {
        var digits = text.utf8[...]
        if digits.first == UInt8(ascii: "-") { digits = digits.dropFirst() }
        return !digits.isEmpty && digits.allSatisfy { (UInt8(ascii: "0") ... UInt8(ascii: "9")).contains($0) }
    }

    /// The value as arithmetic takes it: an int for a whole number within 64 bits, a double for a
    /// number a finite double holds; nil for an integer beyond 64 bits or a number beyond a double.
    public static func arithmetic(_ text: String) -> ExprValue? {
        if self.isIntegral(text) {
            return Int64(text).map(ExprValue.int)
        }
        guard let number = Double(text), number.isFinite else { return nil }
        return .double(number)
    }

    /// -1, 0 or 1 as `a` is below, equal to or above `b`, both numbers; nil when a double is NaN.
    /// Two integers compare exactly at any size; otherwise the doubles nearest them compare.
    static func compare(_ a: ExprValue, _ b: ExprValue) -> Int? {
        if let x = self.integerText(a), let y = self.integerText(b) {
            return self.compareIntegers(x, y)
        }
        guard let x = a.number, let y = b.number, !x.isNaN, !y.isNaN else { return nil }
        return x < y ? -1 : (x == y ? 0 : 1)
    }

    /// The decimal text of an integer value: an `.int`, or a `.number` written as a whole number.
    static func integerText(_ value: ExprValue) -> String? {
        switch value {
        case .int(let number): return String(number)
        case .number(let text) where self.isIntegral(text): return text
        default: return nil
        }
    }

    /// Compares two whole numbers written in decimal, of any length.
    static func compareIntegers(_ a: String, _ b: String) -> Int {
        func split(_ text: String) -> (negative: Bool, digits: Substring.UTF8View) {
            var digits = Substring(text).utf8
            let negative = digits.first == UInt8(ascii: "-")
            if negative { digits = digits.dropFirst() }
            while digits.count > 1, digits.first == UInt8(ascii: "0") { digits = digits.dropFirst() }
            let zero = digits.count == 1 && digits.first == UInt8(ascii: "0")
            return (negative && !zero, digits)
        }
        let x = split(a)
        let y = split(b)
        if x.negative != y.negative { return x.negative ? -1 : 1 }
        var magnitude: Int
        if x.digits.count != y.digits.count {
            magnitude = x.digits.count < y.digits.count ? -1 : 1
        } else if x.digits.elementsEqual(y.digits) {
            magnitude = 0
        } else {
            magnitude = x.digits.lexicographicallyPrecedes(y.digits) ? -1 : 1
        }
        if x.negative { magnitude = -magnitude }
        return magnitude
    }

    /// What `JSONSerialization` is given for a number kept as written: what the value read as
    /// before such numbers kept their text (an int within 64 bits, else a double), so that content
    /// hashes computed over it do not change; a number beyond a double is given as its text.
    static func jsonObject(_ text: String) -> Any {
        if self.isIntegral(text), let number = Int64(text) { return number }
        if let number = Double(text), number.isFinite { return number }
        return text
    }
}
