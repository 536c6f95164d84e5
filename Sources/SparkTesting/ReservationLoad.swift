public import Foundation
import NIOHTTP1

/// The budget proofs' load: concurrent reservations of random sizes on one hard `total` budget,
/// sent round robin through `clients` (one gateway, or several in front of several budget
/// replicas), then half settled below what they held and half released, concurrently.
///
/// `problems` lists every broken promise: a reply other than 201 or 429, an admitted total over
/// the limit, a refused amount that would have fitted what was left at the end (nothing was
/// released while reserving, so what was left only shrank), a ledger entry whose figures exceed
/// the limit, a settle or release that failed, and final figures other than what was settled.
public struct ReservationLoad: Sendable {
    public struct Outcome: Sendable {
        public var amount: Int64
        public var reservationID: String?
        public var status: Int
    }

    public var limit: Int64
    public var outcomes: [Outcome]
    public var ledgerEntries: Int
    public var problems: [String]

    public var admitted: [Outcome] { self.outcomes.filter { $0.reservationID != nil } }

    /// A micro-dollar figure of a reply: JSON leaves zeros out, and writes 64-bit numbers as strings.
    public static func micros(_ value: Any?) -> Int64 {
        if let text = value as? String { return Int64(text) ?? -1 }
        return (value as? NSNumber)?.int64Value ?? 0
    }

    /// Runs `calls` concurrently, at most 32 in flight: more than the HTTP client's connections
    /// per host (8), so that the server always has every connection busy, and few enough that no
    /// call waits in the client's queue past its connection timeout on a loaded machine.
    static func concurrently<T: Sendable>(_ calls: [@Sendable () async throws -> T]) async throws -> [T] {
        try await withThrowingTaskGroup(of: T.self) { group in
            var results: [T] = []
            for (index, call) in calls.enumerated() {
                if index >= 32, let result = try await group.next() { results.append(result) }
                group.addTask { try await call() }
            }
            for try await result in group { results.append(result) }
            return results
        }
    }

    /// Sets budget `budget` of project `base` (`/api/v1/projects/prj_…`) to `limit` for the
    /// whole time, then runs the load with `count` reservations of 1 to `largest` micro-dollars.
    public static func run(
        clients: [HTTPTestClient], base: String, token: String, budget: String = "cap",
        limit: Int64 = 50_000, count: Int = 200, largest: Int64 = 900
    ) async throws -> ReservationLoad {
        var problems: [String] = []
        let set = try await clients[0].send(.PUT, "\(base)/budgets/\(budget)", token: token, json: ["limitMicros": "\(limit)", "period": "total"])
        guard set.status == 200 else { throw TestSetupError(description: "budget \(budget) could not be set: \(set.text)") }

        let amounts = (0 ..< count).map { _ in Int64.random(in: 1 ... largest) }
        let outcomes = try await Self.concurrently(amounts.enumerated().map { index, amount in
            { @Sendable () async throws -> Outcome in
                let reply = try await clients[index % clients.count].send(.POST, "\(base)/reservations", token: token, json: ["amountMicros": "\(amount)"])
                return Outcome(amount: amount, reservationID: (reply.json["reservation"] as? [String: Any])?["id"] as? String, status: reply.status)
            }
        })
        for outcome in outcomes where outcome.status != 201 && outcome.status != 429 {
            problems.append("a reservation of \(outcome.amount) answered \(outcome.status)")
        }
        let admitted = outcomes.filter { $0.reservationID != nil }
        let admittedTotal = admitted.reduce(0) { $0 + $1.amount }
        if admittedTotal > limit { problems.append("\(admittedTotal) admitted on a limit of \(limit)") }
        let leftover = limit - admittedTotal
        for refused in outcomes where refused.reservationID == nil && refused.amount <= leftover {
            problems.append("\(refused.amount) was refused with \(leftover) left")
        }
        if admitted.count == count { problems.append("every reservation fitted: the amounts were meant to exceed the limit") }

        // The figures right after every ledger entry stay within the limit.
        var entries: [[String: Any]] = []
        var pageToken = ""
        repeat {
            let page = try await clients[0].send(.GET, "\(base)/budgets/\(budget)/ledger?pageSize=500&pageToken=\(pageToken)", token: token)
            entries += page.json["entries"] as? [[String: Any]] ?? []
            pageToken = page.json["nextPageToken"] as? String ?? ""
        } while !pageToken.isEmpty
        if entries.count != admitted.count { problems.append("\(entries.count) ledger entries for \(admitted.count) reservations") }
        for entry in entries {
            let held = Self.micros(entry["spentAfterMicros"]) + Self.micros(entry["reservedAfterMicros"])
            if held > limit { problems.append("a ledger entry shows \(held) held on a limit of \(limit)") }
        }

        // Half settle at half of what they held, half release, concurrently and spread the same way.
        let spent = try await Self.concurrently(admitted.enumerated().map { index, outcome in
            { @Sendable () async throws -> Int64 in
                let settle = index % 2 == 0
                let reply = try await clients[index % clients.count].send(
                    .POST, "\(base)/reservations/\(outcome.reservationID!)/\(settle ? "settle" : "release")", token: token,
                    json: settle ? ["actualMicros": "\(outcome.amount / 2)"] : [:]
                )
                return reply.status == 200 ? (settle ? outcome.amount / 2 : 0) : -1
            }
        })
        if spent.contains(-1) { problems.append("\(spent.filter { $0 == -1 }.count) settles or releases failed") }
        let usage = try await clients[0].send(.GET, "\(base)/budgets/\(budget)", token: token).json["usage"] as? [String: Any] ?? [:]
        let settled = spent.filter { $0 > 0 }.reduce(0, +)
        if Self.micros(usage["reservedMicros"]) != 0 { problems.append("\(Self.micros(usage["reservedMicros"])) still reserved at the end") }
        if Self.micros(usage["spentMicros"]) != settled { problems.append("\(Self.micros(usage["spentMicros"])) spent, \(settled) settled") }
        return ReservationLoad(limit: limit, outcomes: outcomes, ledgerEntries: entries.count, problems: problems)
    }
}
