import Foundation
import NIOHTTP1
import SparkTesting
import Testing

/// What a workflow declares for its runs as a whole, on every backend: `estimated_cost`, held on
/// the project's budgets from a run's creation to its end (a run that does not fit a hard budget
/// is refused, and the run's calls draw on its estimate), and `timeout`, past which a run ends
/// `timed_out` wherever it is waiting.
@Suite("Run estimates and timeouts")
struct RunBudgetTests {
    /// A paid tool step, then a human's approval, which keeps the run (and its estimate) open.
    static let estimated = """
        name: estimated
        estimated_cost: 0.6
        steps:
          - id: fetch
            tool: priced
            with: { q: one }
          - id: review
            approval: { message: "Go on?" }
            needs: [fetch]
        """

    static let slow = """
        name: slow
        timeout: 2s
        steps:
          - id: review
            approval: { message: "Waits longer than the run may take" }
        """

    static func usage(_ cluster: TestCluster, _ token: String, project: String) async throws -> (spent: Int64, reserved: Int64) {
        let budget = try await cluster.http.send(.GET, "/api/v1/projects/\(project)/budgets/runs", token: token)
        let usage = budget.json["usage"] as? [String: Any]
        return (ReservationLoad.micros(usage?["spentMicros"]), ReservationLoad.micros(usage?["reservedMicros"]))
    }

    @Test("a run holds its workflow's estimated_cost until it ends; its tool call draws on it; a run that does not fit a hard budget is 429 and is not stored", arguments: TestBackend.all)
    func estimatedCost(backend: TestBackend) async throws {
        try await TestCluster.run(backend: backend) { cluster in
            let admin = try await cluster.adminToken()
            let project = try await cluster.createProject("estimates", token: admin)
            let base = "/api/v1/projects/\(project)"
            let tool = try await cluster.http.send(.POST, "\(base)/tools/apply", token: admin, json: ["source": "tool: priced\nkind: echo\ncost_micros: 100000"])
            try #require(tool.status == 200, "\(tool.text)")
            let applied = try await cluster.http.send(.POST, "\(base)/workflows/apply", token: admin, json: ["source": Self.estimated])
            try #require(applied.status == 200, "\(applied.text)")
            let budget = try await cluster.http.send(.PUT, "\(base)/budgets/runs", token: admin, json: ["limitMicros": "1000000", "period": "total"])
            try #require(budget.status == 200, "\(budget.text)")

            let created = try await cluster.http.send(.POST, "\(base)/runs", token: admin, json: ["workflow": "estimated"])
            try #require(created.status == 201, "\(created.text)")
            let run = try #require(created.json["run"] as? [String: Any])
            let id = try #require(run["id"] as? String)
            #expect(ReservationLoad.micros(run["estimatedCostMicros"]) == 600_000)
            let envelopeID = try #require(run["budgetReservationId"] as? String)
            #expect(envelopeID.hasPrefix("res_"))

            // The tool call (100,000 reserved and spent) came out of the estimate: what the run
            // holds and spent together stays at 600,000.
            _ = try await RunAPITests.until(cluster, admin, project: project, run: id) { RunAPITests.steps($0)["review"]?["status"] as? String == "awaiting_approval" }
            #expect(try await Self.usage(cluster, admin, project: project) == (100_000, 500_000))
            let envelope = try await cluster.http.send(.GET, "\(base)/reservations/\(envelopeID)", token: admin)
            #expect(envelope.json["status"] as? String == "held")
            #expect(ReservationLoad.micros(envelope.json["amountMicros"]) == 500_000)
            let ledger = try await cluster.http.send(.GET, "\(base)/budgets/runs/ledger", token: admin)
            let kinds = (ledger.json["entries"] as? [[String: Any]])?.compactMap { $0["kind"] as? String }
            #expect(kinds == ["settle", "reserve", "draw", "reserve"], "\(kinds ?? [])")

            // 400,000 are left: a second run's 600,000 does not fit, and nothing of it is stored.
            let refused = try await cluster.http.send(.POST, "\(base)/runs", token: admin, json: ["workflow": "estimated", "idempotencyKey": "second"])
            #expect(refused.status == 429, "\(refused.text)")
            #expect(refused.text.contains("runs") && refused.text.contains("estimated_cost"), "\(refused.text)")
            let listed = try await cluster.http.send(.GET, "\(base)/runs", token: admin)
            #expect((listed.json["runs"] as? [[String: Any]])?.count == 1, "\(listed.text)")
            #expect(try await Self.usage(cluster, admin, project: project) == (100_000, 500_000))

            // The run ends: its estimate goes back, and the second run fits.
            let approval = try #require((try await cluster.http.send(.GET, "\(base)/approvals", token: admin).json["approvals"] as? [[String: Any]])?.first)
            let decided = try await cluster.http.send(.POST, "\(base)/approvals/\(approval["id"] as? String ?? "")/decide", token: admin, json: ["decision": "approve"])
            try #require(decided.status == 200, "\(decided.text)")
            let done = try await RunAPITests.finished(cluster, admin, project: project, run: id)
            #expect(done["status"] as? String == "succeeded", "\(done)")
            let deadline = Date().addingTimeInterval(60)
            var figures = try await Self.usage(cluster, admin, project: project)
            while figures.reserved != 0, Date() < deadline {
                try await Task.sleep(for: .milliseconds(100))
                figures = try await Self.usage(cluster, admin, project: project)
            }
            #expect(figures == (100_000, 0))
            #expect(try await cluster.http.send(.GET, "\(base)/reservations/\(envelopeID)", token: admin).json["status"] as? String == "released")
            let second = try await cluster.http.send(.POST, "\(base)/runs", token: admin, json: ["workflow": "estimated", "idempotencyKey": "second"])
            #expect(second.status == 201, "\(second.text)")

            // Bad definitions name the field.
            for (value, shown) in [("-1", "-1"), ("0", "0"), ("1.0000001", "1.0000001"), ("lots", "lots"), ("2000000", "2000000")] {
                let bad = try await cluster.http.send(.POST, "\(base)/workflows/apply", token: admin, json: ["source": "name: bad\nestimated_cost: \(value)\nsteps: [{id: a, tool: priced}]"])
                #expect(bad.status == 400, "\(value): \(bad.text)")
                #expect(bad.text.contains("estimated_cost") && bad.text.contains(shown), "\(value): \(bad.text)")
            }
        }
    }

    @Test("runs created at once never hold more than a hard budget: of 12 estimates of a quarter of it, exactly 4 are admitted", arguments: TestBackend.all)
    func concurrentEstimates(backend: TestBackend) async throws {
        try await TestCluster.run(backend: backend) { cluster in
            let admin = try await cluster.adminToken()
            let project = try await cluster.createProject("crowd", token: admin)
            let base = "/api/v1/projects/\(project)"
            let source = "name: quarter\nestimated_cost: 0.25\nsteps: [{id: wait, approval: {message: hold}}]"
            let applied = try await cluster.http.send(.POST, "\(base)/workflows/apply", token: admin, json: ["source": source])
            try #require(applied.status == 200, "\(applied.text)")
            _ = try await cluster.http.send(.PUT, "\(base)/budgets/runs", token: admin, json: ["limitMicros": "1000000", "period": "total"])
            let statuses = try await withThrowingTaskGroup(of: Int.self) { group in
                for index in 0 ..< 12 {
                    group.addTask {
                        try await cluster.http.send(.POST, "\(base)/runs", token: admin, json: ["workflow": "quarter", "idempotencyKey": "crowd-\(index)"]).status
                    }
                }
                return try await group.reduce(into: [Int]()) { $0.append($1) }
            }
            #expect(statuses.filter { $0 == 201 }.count == 4, "\(statuses.sorted())")
            #expect(statuses.filter { $0 == 429 }.count == 8, "\(statuses.sorted())")
            let listed = try await cluster.http.send(.GET, "\(base)/runs", token: admin)
            #expect((listed.json["runs"] as? [[String: Any]])?.count == 4, "\(listed.text)")
            #expect(try await Self.usage(cluster, admin, project: project) == (0, 1_000_000))
        }
    }

    @Test("a run past its workflow's timeout ends timed_out, even while it waits for a human, and its approval closes", arguments: TestBackend.all)
    func runTimeout(backend: TestBackend) async throws {
        try await TestCluster.run(backend: backend) { cluster in
            let admin = try await cluster.adminToken()
            let project = try await cluster.createProject("timeouts", token: admin)
            let base = "/api/v1/projects/\(project)"
            let applied = try await cluster.http.send(.POST, "\(base)/workflows/apply", token: admin, json: ["source": Self.slow])
            try #require(applied.status == 200, "\(applied.text)")
            let created = try await cluster.http.send(.POST, "\(base)/runs", token: admin, json: ["workflow": "slow"])
            try #require(created.status == 201, "\(created.text)")
            let id = try #require((created.json["run"] as? [String: Any])?["id"] as? String)
            let done = try await RunAPITests.finished(cluster, admin, project: project, run: id)
            #expect(done["status"] as? String == "timed_out", "\(done)")
            #expect((done["error"] as? [String: Any])?["reason"] as? String == "timeout", "\(done)")
            #expect(RunAPITests.steps(done)["review"]?["status"] as? String == "cancelled", "\(done)")
            // Not before its time: 2 s after its creation at the earliest.
            #expect(RunAPITests.seconds(done["createTime"], done["endTime"]) >= 1.9, "\(done)")
            let pending = try await cluster.http.send(.GET, "\(base)/approvals", token: admin)
            #expect((pending.json["approvals"] as? [[String: Any]] ?? []).isEmpty, "\(pending.text)")

            let bad = try await cluster.http.send(.POST, "\(base)/workflows/apply", token: admin, json: ["source": "name: bad\ntimeout: soon\nsteps: [{id: a, approval: {}}]"])
            #expect(bad.status == 400 && bad.text.contains("timeout"), "\(bad.text)")
        }
    }
}
