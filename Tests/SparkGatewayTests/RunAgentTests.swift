import Foundation
import NIOHTTP1
import SparkKit
import SparkTesting
import Testing

/// Agent steps of runs, against the fake model provider over real HTTP.
@Suite("Run API: agent steps")
struct RunAgentTests {
    @Test("an agent step whose model call or tool call a policy holds waits for a human; approved, the held calls go ahead", arguments: TestBackend.all)
    func heldAgentSteps(backend: TestBackend) async throws {
        let llm = try await FakeLLMServer.start()
        defer { Task { try? await llm.stop() } }
        try await TestCluster.run(backend: backend, overrides: AgentAPITests.overrides(llm)) { cluster in
            let project = try await AgentAPITests.project(cluster)
            let (token, base) = (project.token, project.base)
            try #require(try await AgentAPITests.apply(cluster, project, AgentAPITests.agent("careful", provider: "fake-anthropic")).status == 200)
            try #require(try await AgentAPITests.apply(cluster, project, AgentAPITests.agent("toolish")).status == 200)
            let policy = try await cluster.http.send(.POST, "\(base)/policies/apply", token: token, json: ["source": """
                policy: agents
                points: [llm.call, tool.invoke]
                rules:
                  - name: think-first
                    effect: require_approval
                    when: point == "llm.call" && agent.name == "careful"
                    message: A person looks before careful calls its model.
                  - name: repeat-needs-a-look
                    effect: require_approval
                    when: point == "tool.invoke" && agent.name == "toolish" && tool.name == "repeat"
                    message: Look at repeat calls first.
                """])
            try #require(policy.status == 200, "\(policy.text)")
            let workflow = """
                name: agents
                steps:
                  - id: think
                    agent: careful
                    with: { prompt: "Think." }
                  - id: act
                    agent: toolish
                    needs: [think]
                    with: { prompt: "Repeat Ada." }
                """
            try #require(try await cluster.http.send(.POST, "\(base)/workflows/apply", token: token, json: ["source": workflow]).status == 200)
            let created = try await cluster.http.send(.POST, "\(base)/runs", token: token, json: ["workflow": "agents"])
            let id = try #require((created.json["run"] as? [String: Any])?["id"] as? String, "\(created.text)")
            func approve(_ step: String) async throws {
                let approvals = try await cluster.http.send(.GET, "\(base)/approvals?runId=\(id)", token: token).json["approvals"] as? [[String: Any]] ?? []
                let approval = try #require(approvals.first { $0["stepId"] as? String == step && $0["status"] as? String == "pending" }, "\(approvals)")
                let decided = try await cluster.http.send(.POST, "\(base)/approvals/\(approval["id"] as? String ?? "")/decide", token: token, json: ["decision": "approve"])
                #expect(decided.status == 200, "\(decided.text)")
            }

            // The model call is held: the step waits, and the model was not called.
            let thinking = try await RunAPITests.until(cluster, token, project: project.id, run: id) { RunAPITests.steps($0)["think"]?["status"] as? String == "awaiting_approval" }
            let heldCall = (RunAPITests.steps(thinking)["think"]?["attempts"] as? [[String: Any]])?.first
            #expect(((heldCall?["error"] as? [String: Any])?["message"] as? String)?.contains("agents/think-first: A person looks before careful calls its model.") == true, "\(heldCall ?? [:])")
            #expect(llm.requests.isEmpty)
            // Approved, careful's call goes ahead; toolish asks for repeat, and that call is held.
            llm.enqueue(.text("thought"), .toolCalls([.init(name: "repeat", arguments: #"{"name":"Ada"}"#)]))
            try await approve("think")
            let acting = try await RunAPITests.until(cluster, token, project: project.id, run: id) { RunAPITests.steps($0)["act"]?["status"] as? String == "awaiting_approval" }
            #expect(RunAPITests.steps(acting)["think"]?["status"] as? String == "succeeded")
            let heldAttempt = (RunAPITests.steps(acting)["act"]?["attempts"] as? [[String: Any]])?.first
            #expect((heldAttempt?["error"] as? [String: Any])?["message"] as? String ?? "" == "held by policy agents/repeat-needs-a-look: Look at repeat calls first.: a human must approve this call (tool repeat)", "\(heldAttempt ?? [:])")
            #expect(llm.requests.count == 2)

            // Approved, the step runs again under its key with the grant: repeat runs this time.
            llm.enqueue(.toolCalls([.init(name: "repeat", arguments: #"{"name":"Ada"}"#)]), .text("Ada, repeated."))
            try await approve("act")
            let done = try await RunAPITests.finished(cluster, token, project: project.id, run: id)
            #expect(done["status"] as? String == "succeeded", "\(done)")
            let act = RunAPITests.steps(done)["act"] ?? [:]
            #expect((act["output"] as? [String: Any])?["text"] as? String == "Ada, repeated.", "\(act)")
            #expect((act["attempts"] as? [[String: Any]])?.map { $0["status"] as? String ?? "" } == ["succeeded"], "the held attempt went ahead: \(act)")
            let last = llm.requests.last?.body ?? ""
            #expect(last.contains("Ada") && !last.contains("approval_required"), "the model got repeat's output: \(last.suffix(600))")

            // Nobody but the run service passes an approval to the agent service.
            let forged = try await cluster.http.send(.POST, "\(base)/agents/toolish/execute", token: token, json: ["prompt": "Repeat Ada.", "approved": true])
            #expect(forged.status == 403, "\(forged.text)")
            #expect(forged.errorField == "approved")
        }
    }
}
