// make bench-policy: what a policy decision and a budget reservation cost a caller, beside the
// cheapest thing of the same kind, in one run.
//
// - Evaluate: a tool.invoke decision over SparkWire (mutual TLS) against a project with one policy
//   of 100 rules, one call at a time, as the tool service asks it; beside Evaluate against a
//   project without policies (the fixed cost: the principal's role from the project service, the
//   context, the store's policy read), and beside one unary SparkWire echo call, which does
//   nothing but cross the wire.
// - Reserve + Settle: pairs per second on PostgreSQL at 1 and 64 concurrent callers, over
//   SparkWire as the agent service makes them; beside one single-row UPDATE per pair on the same
//   database with the same pool and concurrency.
//
// SparkOps runs in this process as `sparkops dev` does (every service and the gateway): on SQLite
// for Evaluate, on PostgreSQL (SPARKOPS_TEST_DATABASE_URL, a fresh database) for Reserve + Settle.
import BenchmarkSupport
import Foundation
import GRPCCore
import NIOHTTP1
import SQLKit
import SparkKit
import SparkProto
import SparkTesting
import SparkWire

@main
struct PolicyBenchmarks {
    static let calls = Int(ProcessInfo.processInfo.environment["BENCH_CALLS"] ?? "") ?? 2000
    static let seconds = Double(ProcessInfo.processInfo.environment["BENCH_SECONDS"] ?? "") ?? 10
    static let connections = 20
    static let limits = [
        "log.level": "error", "gateway.rateLimit.principalPerMinute": "100000000", "gateway.rateLimit.principalBurst": "100000000",
        "gateway.rateLimit.ipPerMinute": "100000000", "gateway.rateLimit.ipBurst": "100000000",
    ]

    static func main() async throws {
        Bench.say(Bench.machine())
        try await Self.evaluate()
        guard let url = ProcessInfo.processInfo.environment["SPARKOPS_TEST_DATABASE_URL"] else {
            Bench.say("\nReserve + Settle: skipped, SPARKOPS_TEST_DATABASE_URL is not set (make bench-policy sets it)")
            return
        }
        try await Self.reserveAndSettle(url)
    }

    /// One policy of 100 rules on tool.invoke, none of which matches the benchmark's call, so
    /// that every rule's condition is evaluated on every decision.
    static var hundredRules: String {
        var source = "policy: payments\npoints: [tool.invoke]\nrules:\n"
        for index in 0 ..< 100 {
            switch index % 4 {
            case 0: source += "  - { name: large-\(index), effect: require_approval, when: 'tool.name == \"pay-\(index)\" && tool.arguments.amount > \(index * 10)' }\n"
            case 1: source += "  - { name: host-\(index), effect: deny, when: 'tool.host.endsWith(\".blocked-\(index).example\")' }\n"
            case 2: source += "  - { name: hours-\(index), effect: deny, when: 'tool.side_effects == \"non_idempotent\" && time.hour == \(index % 24) && time.minute == 61' }\n"
            default: source += "  - { name: known-\(index), effect: require_approval, when: 'tool.name in [\"a-\(index)\", \"b-\(index)\", \"c-\(index)\"] && principal.role != \"owner\"' }\n"
            }
        }
        return source
    }

    static func principal(_ cluster: TestCluster, token: String) async throws -> Sparkops_Common_V1_Principal {
        let me = try await cluster.http.send(.GET, "/api/v1/users/me", token: token)
        guard let userID = me.json["id"] as? String else { fatalError("users/me failed: \(me.text)") }
        return .with {
            $0.kind = .user
            $0.id = userID
            $0.userID = userID
            $0.isAdmin = true
        }
    }

    static func evaluate() async throws {
        try await TestCluster.run(backend: .sqlite, overrides: Self.limits) { cluster in
            let token = try await cluster.adminToken()
            let governed = try await cluster.createProject("governed", token: token)
            let bare = try await cluster.createProject("bare", token: token)
            let applied = try await cluster.http.send(.POST, "/api/v1/projects/\(governed)/policies/apply", token: token, json: ["source": Self.hundredRules])
            guard applied.status == 200 else { fatalError("apply failed: \(applied.text)") }
            let metadata = try await Self.principal(cluster, token: token).metadata
            let context = Sparkops_Policy_V1_PolicyContext.with {
                $0.tool.name = "pay"
                $0.tool.kind = "http"
                $0.tool.host = "pay.example.com"
                $0.tool.sideEffects = "non_idempotent"
                $0.tool.arguments = .init(structValue: .init(fields: ["amount": .init(numberValue: 250)]))
            }
            let (withRules, withoutRules) = try await cluster.withPeer(.policy, as: .tool) { client in
                let policy = Sparkops_Policy_V1_PolicyService.Client(wrapping: client)
                let decide: @Sendable (String) async throws -> Sparkops_Policy_V1_Decision = { project in
                    try await policy.evaluate(.with {
                        $0.projectID = project
                        $0.point = "tool.invoke"
                        $0.context = context
                    }, metadata: metadata).decision
                }
                let first = try await decide(governed)
                guard first.effect == "allow", first.policies.count == 1 else { fatalError("unexpected decision: \(first)") }
                return (
                    try await Bench.latencies(Self.calls) { _ = try await decide(governed) },
                    try await Bench.latencies(Self.calls) { _ = try await decide(bare) }
                )
            }
            let certificates = try TestCertificates.make()
            let echo = try await withEchoPair(certificates: certificates) { echo, _, _ in
                try await Bench.latencies(Self.calls) { _ = try await echo.get(.with { $0.text = "policy" }) }
            }
            Bench.say("\nEvaluate over SparkWire, one call at a time, \(Self.calls) calls each (after 10 of warm-up)")
            Bench.say(Bench.row("", "p50 ms", "p99 ms", "vs echo"))
            Bench.say(Bench.row("Evaluate tool.invoke, one policy of 100 rules", Bench.ms(withRules, 0.5), Bench.ms(withRules, 0.99), Bench.ratio(withRules, echo)))
            Bench.say(Bench.row("Evaluate tool.invoke, no policy", Bench.ms(withoutRules, 0.5), Bench.ms(withoutRules, 0.99), Bench.ratio(withoutRules, echo)))
            Bench.say(Bench.row("SparkWire echo, unary", Bench.ms(echo, 0.5), Bench.ms(echo, 0.99), "1.00×"))
        }
    }

    static func reserveAndSettle(_ url: String) async throws {
        var overrides = Self.limits
        overrides["database.maxConnections"] = "\(Self.connections)"
        try await TestCluster.run(backend: .postgres(url: url), overrides: overrides) { cluster in
            let token = try await cluster.adminToken()
            let project = try await cluster.createProject("spend", token: token)
            let set = try await cluster.http.send(.PUT, "/api/v1/projects/\(project)/budgets/spend", token: token, json: ["limitMicros": "1000000000000000", "period": "total"])
            guard set.status == 200 else { fatalError("budget failed: \(set.text)") }
            let metadata = try await Self.principal(cluster, token: token).metadata
            let pairs = try await cluster.withPeer(.budget, as: .agent) { client in
                let budget = Sparkops_Budget_V1_BudgetService.Client(wrapping: client)
                let pair: @Sendable () async throws -> Void = {
                    let reserved = try await budget.reserve(.with {
                        $0.projectID = project
                        $0.amountMicros = 1000
                        $0.ttlSeconds = 600
                        $0.attribution.model = "bench/model"
                    }, metadata: metadata)
                    _ = try await budget.settle(.with {
                        $0.projectID = project
                        $0.reservationID = reserved.reservation.id
                        $0.actualMicros = 700
                    }, metadata: metadata)
                }
                return (
                    one: try await Bench.throughput(concurrency: 1, seconds: Self.seconds, pair),
                    many: try await Bench.throughput(concurrency: 64, seconds: Self.seconds, pair)
                )
            }
            let usage = try await cluster.http.send(.GET, "/api/v1/projects/\(project)/budgets/spend", token: token)
            let store = try SparkStore(service: "public", location: .postgres(url: cluster.databaseURL!, maxConnections: Self.connections))
            let updates = try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await store.run() }
                defer { group.cancelAll() }
                try await store.sql { db in
                    try await db.raw("CREATE TABLE bench_counter (id integer PRIMARY KEY, n bigint NOT NULL)").run()
                    try await db.raw("INSERT INTO bench_counter VALUES (1, 0)").run()
                }
                let update: @Sendable () async throws -> Void = {
                    try await store.sql { db in try await db.raw("UPDATE bench_counter SET n = n + 1 WHERE id = 1").run() }
                }
                return (
                    one: try await Bench.throughput(concurrency: 1, seconds: Self.seconds, update),
                    many: try await Bench.throughput(concurrency: 64, seconds: Self.seconds, update)
                )
            }
            Bench.say("\nReserve + Settle on PostgreSQL over SparkWire, \(Int(Self.seconds)) s each, a pool of \(Self.connections) connections")
            Bench.say(Bench.row("", "pairs/s", "", "vs UPDATE"))
            Bench.say(Bench.row("Reserve + Settle, 1 caller", String(format: "%.0f", pairs.one), "", String(format: "%.2f×", pairs.one / updates.one)))
            Bench.say(Bench.row("one single-row UPDATE, 1 caller", String(format: "%.0f", updates.one), "", "1.00×"))
            Bench.say(Bench.row("Reserve + Settle, 64 callers", String(format: "%.0f", pairs.many), "", String(format: "%.2f×", pairs.many / updates.many)))
            Bench.say(Bench.row("one single-row UPDATE, 64 callers", String(format: "%.0f", updates.many), "", "1.00×"))
            let figures = usage.json["usage"] as? [String: Any] ?? [:]
            Bench.say("budget after the run: spent \(figures["spentMicros"] ?? 0), reserved \(figures["reservedMicros"] ?? 0) micro-USD")
        }
    }
}
