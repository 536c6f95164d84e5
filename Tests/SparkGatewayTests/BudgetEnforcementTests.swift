import Foundation
import NIOHTTP1
import SparkTesting
import Testing

/// Budgets enforced where the money is spent, on every backend: the agent service holds each
/// model call's worst case and settles its cost, the tool service holds a tool's configured cost,
/// and the policy service reads a budget's figures for the rules that ask.
@Suite("Budget enforcement")
struct BudgetEnforcementTests {
    typealias Project = AgentAPITests.Project

    static func budget(_ cluster: TestCluster, _ project: Project, _ name: String, limit: Int64, extra: [String: Any] = [:]) async throws {
        var body: [String: Any] = ["period": "total", "limitMicros": "\(limit)", "kind": "hard"]
        body.merge(extra) { $1 }
        let reply = try await cluster.http.send(.PUT, "\(project.base)/budgets/\(name)", token: project.token, json: body)
        try #require(reply.status == 200 || reply.status == 201, "\(reply.text)")
    }

    static func usage(_ cluster: TestCluster, _ project: Project, _ name: String, groupBy: String = "") async throws -> HTTPTestClient.Reply {
        try await cluster.http.send(.GET, "\(project.base)/budgets/\(name)/usage\(groupBy.isEmpty ? "" : "?groupBy=\(groupBy)")", token: project.token)
    }

    static func spent(_ cluster: TestCluster, _ project: Project, _ name: String) async throws -> (spent: Int64, reserved: Int64) {
        let usage = try #require(try await Self.usage(cluster, project, name).json["usage"] as? [String: Any])
        return (BudgetAPITests.micros(usage["spentMicros"]), BudgetAPITests.micros(usage["reservedMicros"]))
    }

    static func invoke(_ cluster: TestCluster, _ project: Project, name: String, key: String, workflow: String = "") async throws -> HTTPTestClient.Reply {
        var body: [String: Any] = ["input": ["name": name], "idempotencyKey": key]
        if !workflow.isEmpty { body["workflow"] = workflow }
        return try await cluster.http.send(.POST, "\(project.base)/tools/repeat/invoke", token: project.token, json: body)
    }

    @Test("a model call is held at its worst case first: refused without calling the model when it does not fit, settled at its cost when it does", arguments: TestBackend.all)
    func modelCalls(backend: TestBackend) async throws {
        let llm = try await FakeLLMServer.start()
        defer { Task { try? await llm.stop() } }
        try await TestCluster.run(backend: backend, overrides: AgentAPITests.overrides(llm)) { cluster in
            let project = try await AgentAPITests.project(cluster, "spend")
            try #require(try await AgentAPITests.apply(cluster, project, AgentAPITests.agent()).status == 200)

            // max_tokens 1024 at 8 micro-dollars a token is 8,192 at worst: 5,000 does not fit.
            try await Self.budget(cluster, project, "cap", limit: 5_000)
            let refused = try await AgentAPITests.execute(cluster, project, ["prompt": "Say hello."])
            try #require(refused.status == 200, "\(refused.text)")
            #expect(refused.json["status"] as? String == "failed", "\(refused.text)")
            let error = try #require(refused.json["error"] as? [String: Any])
            #expect(error["reason"] as? String == "budget_exceeded", "\(refused.text)")
            #expect((error["message"] as? String)?.contains("budget cap") == true, "\(refused.text)")
            #expect(llm.requests.isEmpty, "the model was not called")
            #expect(try await Self.spent(cluster, project, "cap") == (0, 0))

            // Room for it: two model calls (100 in, 20 out: 360 each) and one tool call (250).
            try await Self.budget(cluster, project, "cap", limit: 20_000)
            llm.enqueue(.toolCalls([.init(name: "repeat", arguments: #"{"name":"Ann"}"#)]), .text("Done."))
            let step = try await AgentAPITests.execute(cluster, project, ["prompt": "Repeat Ann.", "workflow": "greetings"])
            try #require(step.json["status"] as? String == "succeeded", "\(step.text)")
            #expect(BudgetAPITests.micros(step.json["costMicros"]) == 970, "\(step.text)")
            #expect(try await Self.spent(cluster, project, "cap") == (970, 0))

            let byModel = try #require(try await Self.usage(cluster, project, "cap", groupBy: "model").json["groups"] as? [[String: Any]])
            let model = try #require(byModel.first { $0["key"] as? String == "fake-openai/m1" }, "\(byModel)")
            #expect(BudgetAPITests.micros(model["spentMicros"]) == 720)
            #expect(BudgetAPITests.micros(model["calls"]) == 2)
            let byTool = try #require(try await Self.usage(cluster, project, "cap", groupBy: "tool").json["groups"] as? [[String: Any]])
            #expect(byTool.contains { $0["key"] as? String == "repeat" && BudgetAPITests.micros($0["spentMicros"]) == 250 }, "\(byTool)")
            let byWorkflow = try #require(try await Self.usage(cluster, project, "cap", groupBy: "workflow").json["groups"] as? [[String: Any]])
            #expect(byWorkflow.map { $0["key"] as? String } == ["greetings"], "\(byWorkflow)")
            #expect(byWorkflow.first.map { BudgetAPITests.micros($0["spentMicros"]) } == 970)

            // Each call was reserved and settled: three of each, nothing left held.
            let ledger = try await cluster.http.send(.GET, "\(project.base)/budgets/cap/ledger", token: project.token)
            let kinds = (ledger.json["entries"] as? [[String: Any]] ?? []).compactMap { $0["kind"] as? String }
            #expect(kinds.filter { $0 == "reserve" }.count == 3, "\(kinds)")
            #expect(kinds.filter { $0 == "settle" }.count == 3, "\(kinds)")

            // A provider failure spends nothing: its hold is released.
            llm.enqueue(.status(400, message: "bad request"))
            let failed = try await AgentAPITests.execute(cluster, project, ["prompt": "Fail."])
            #expect((failed.json["error"] as? [String: Any])?["reason"] as? String == "llm_error", "\(failed.text)")
            #expect(try await Self.spent(cluster, project, "cap") == (970, 0))
            let after = try await cluster.http.send(.GET, "\(project.base)/budgets/cap/ledger", token: project.token)
            #expect((after.json["entries"] as? [[String: Any]])?.first?["kind"] as? String == "release", "\(after.text)")

            // A workflow's budget counts that workflow's steps only.
            try await Self.budget(cluster, project, "greetings-cap", limit: 1_000, extra: ["workflow": "greetings"])
            let other = try await AgentAPITests.execute(cluster, project, ["prompt": "Fail.", "workflow": "greetings"])
            #expect((other.json["error"] as? [String: Any])?["reason"] as? String == "budget_exceeded", "\(other.text)")
            #expect(((other.json["error"] as? [String: Any])?["message"] as? String)?.contains("greetings-cap") == true, "\(other.text)")
        }
    }

    @Test("a tool call is held at its cost before it runs: a replay costs nothing, a refusal runs nothing and leaves the key free", arguments: TestBackend.all)
    func toolCalls(backend: TestBackend) async throws {
        try await TestCluster.run(backend: backend) { cluster in
            let token = try await cluster.adminToken()
            let project = Project(token: token, id: try await cluster.createProject("tools", token: token))
            try #require(try await cluster.http.send(.POST, "\(project.base)/tools/apply", token: token, json: ["source": AgentAPITests.echoTool]).status == 200)
            try await Self.budget(cluster, project, "tools", limit: 600)

            #expect(try await Self.invoke(cluster, project, name: "a", key: "k1").status == 200)
            #expect(try await Self.spent(cluster, project, "tools") == (250, 0))
            let replay = try await Self.invoke(cluster, project, name: "a", key: "k1")
            #expect(replay.json["replayed"] as? Bool == true, "\(replay.text)")
            #expect(try await Self.spent(cluster, project, "tools") == (250, 0))
            #expect(try await Self.invoke(cluster, project, name: "b", key: "k2").status == 200)

            // 100 left: the call is refused before it runs, and its key stays unused.
            let refused = try await Self.invoke(cluster, project, name: "c", key: "k3")
            #expect(refused.status == 429, "\(refused.text)")
            #expect(refused.text.contains("budget tools"), "\(refused.text)")
            #expect(try await Self.spent(cluster, project, "tools") == (500, 0))
            try await Self.budget(cluster, project, "tools", limit: 1_000)
            let later = try await Self.invoke(cluster, project, name: "c", key: "k3")
            #expect(later.status == 200, "\(later.text)")
            #expect(later.json["replayed"] as? Bool != true)
            #expect(try await Self.spent(cluster, project, "tools") == (750, 0))

            // A workflow's budget: its calls only.
            try await Self.budget(cluster, project, "nightly", limit: 100, extra: ["workflow": "nightly"])
            #expect(try await Self.invoke(cluster, project, name: "d", key: "k4", workflow: "nightly").status == 429)
            #expect(try await Self.invoke(cluster, project, name: "d", key: "k5", workflow: "daily").status == 200)
            #expect(try await Self.spent(cluster, project, "tools") == (1_000, 0))

            // Bad input.
            let long = try await Self.invoke(cluster, project, name: "e", key: "k6", workflow: String(repeating: "w", count: 201))
            #expect(long.status == 400, "\(long.text)")
            #expect(long.text.contains("workflow"), "\(long.text)")
        }
    }

    @Test("rules read a budget's figures from the budget service: the covering hard budget with the least room", arguments: TestBackend.all)
    func policyReadsBudgets(backend: TestBackend) async throws {
        try await TestCluster.run(backend: backend) { cluster in
            let token = try await cluster.adminToken()
            let project = Project(token: token, id: try await cluster.createProject("governed", token: token))
            try #require(try await cluster.http.send(.POST, "\(project.base)/tools/apply", token: token, json: ["source": AgentAPITests.echoTool]).status == 200)
            try await Self.budget(cluster, project, "roomy", limit: 1_000_000)
            try await Self.budget(cluster, project, "tight", limit: 1_000)
            try await Self.budget(cluster, project, "elsewhere", limit: 10, extra: ["workflow": "other"])
            let policy = try await cluster.http.send(.POST, "\(project.base)/policies/apply", token: token, json: ["source": """
                policy: thrift
                points: [tool.invoke]
                rules:
                  - name: half-spent
                    effect: deny
                    when: budget.percent_used >= 50 && tool.cost_micros > 0
                    message: Half the budget is gone.
                """])
            try #require(policy.status == 200, "\(policy.text)")

            #expect(try await Self.invoke(cluster, project, name: "a", key: "k1").status == 200)
            #expect(try await Self.invoke(cluster, project, name: "b", key: "k2").status == 200)
            // "tight" is at 50 %: denied by the rule, before any reservation.
            let denied = try await Self.invoke(cluster, project, name: "c", key: "k3")
            #expect(denied.status == 403, "\(denied.text)")
            let deniedMessage = (denied.json["error"] as? [String: Any])?["message"] as? String ?? ""
            #expect(deniedMessage.contains("thrift/half-spent: Half the budget is gone."), "\(denied.text)")
            #expect(try await Self.spent(cluster, project, "tight") == (500, 0))
            let violations = try await cluster.http.send(.GET, "\(project.base)/violations", token: token)
            let violationID = try #require((violations.json["violations"] as? [[String: Any]])?.first?["id"] as? String, "\(violations.text)")
            let violation = try await cluster.http.send(.GET, "\(project.base)/violations/\(violationID)", token: token)
            let context = try #require(violation.json["context"] as? [String: Any], "\(violation.text)")
            let budget = try #require(context["budget"] as? [String: Any])
            #expect((budget["id"] as? String)?.hasPrefix("bud_") == true)
            #expect(budget["percent_used"] as? Double == 50 || budget["percent_used"] as? Int == 50, "\(budget)")
            #expect(BudgetAPITests.micros(budget["remaining_micros"]) == 500, "\(budget)")
        }
    }
}
