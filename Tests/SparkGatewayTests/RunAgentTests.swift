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

    @Test("a hold is bound to the call it holds: the approver sees it, a grant lets that call run and no other, and the policy sees the step and workflow version", arguments: TestBackend.all)
    func grantsCoverOneCall(backend: TestBackend) async throws {
        let llm = try await FakeLLMServer.start()
        defer { Task { try? await llm.stop() } }
        try await TestCluster.run(backend: backend, overrides: AgentAPITests.overrides(llm)) { cluster in
            let project = try await AgentAPITests.project(cluster, "holds")
            let (token, base) = (project.token, project.base)
            for source in ["tool: lookup\nkind: echo\ninput_schema: { type: object, properties: { q: { type: string } }, required: [q] }\n"] {
                try #require(try await cluster.http.send(.POST, "\(base)/tools/apply", token: token, json: ["source": source]).status == 200)
            }
            try #require(try await AgentAPITests.apply(cluster, project, AgentAPITests.agent("looker").replacingOccurrences(of: "tools: [repeat]", with: "tools: [lookup]")).status == 200)
            let policy = try await cluster.http.send(.POST, "\(base)/policies/apply", token: token, json: ["source": """
                policy: lookups
                points: [tool.invoke]
                rules:
                  - name: look-first
                    effect: require_approval
                    when: tool.name == "lookup"
                    message: A person looks at each lookup.
                """])
            try #require(policy.status == 200, "\(policy.text)")
            let workflow = """
                name: looking
                steps:
                  - id: look
                    agent: looker
                    with: { prompt: "Look it up." }
                  - id: direct
                    tool: lookup
                    needs: [look]
                    with: { q: "direct-1" }
                """
            try #require(try await cluster.http.send(.POST, "\(base)/workflows/apply", token: token, json: ["source": workflow]).status == 200)
            llm.enqueue(.toolCalls([.init(name: "lookup", arguments: #"{"q":"attempt-1"}"#)]))
            let created = try await cluster.http.send(.POST, "\(base)/runs", token: token, json: ["workflow": "looking"])
            let id = try #require((created.json["run"] as? [String: Any])?["id"] as? String, "\(created.text)")
            let workflowID = try #require((created.json["run"] as? [String: Any])?["workflowId"] as? String)

            func pending(_ step: String) async throws -> [String: Any] {
                _ = try await RunAPITests.until(cluster, token, project: project.id, run: id) { RunAPITests.steps($0)[step]?["status"] as? String == "awaiting_approval" }
                let approvals = try await cluster.http.send(.GET, "\(base)/approvals?runId=\(id)&status=pending", token: token).json["approvals"] as? [[String: Any]] ?? []
                return try #require(approvals.first { $0["stepId"] as? String == step }, "\(approvals)")
            }
            func approve(_ approval: [String: Any]) async throws {
                let decided = try await cluster.http.send(.POST, "\(base)/approvals/\(approval["id"] as? String ?? "")/decide", token: token, json: ["decision": "approve"])
                #expect(decided.status == 200, "\(decided.text)")
            }
            /// The lookups the agent's calls ran (those with an output and no error).
            func lookups() async throws -> [String] {
                let page = try await cluster.http.send(.GET, "\(base)/agent-executions?pageSize=100", token: token)
                var calls: [[String: Any]] = []
                for execution in page.json["executions"] as? [[String: Any]] ?? [] {
                    let full = try await cluster.http.send(.GET, "\(base)/agent-executions/\(execution["id"] as? String ?? "")", token: token)
                    calls += full.json["toolCalls"] as? [[String: Any]] ?? []
                }
                return calls.filter { $0["error"] == nil }.compactMap { ($0["output"] as? [String: Any])?["q"] as? String }
            }

            // The approver sees the exact call: the tool, its arguments and their digest, the rule.
            let first = try await pending("look")
            let held = try #require(first["heldCall"] as? [String: Any], "\(first)")
            #expect(held["kind"] as? String == "tool")
            #expect(held["target"] as? String == "lookup")
            #expect((held["arguments"] as? [String: Any])?["q"] as? String == "attempt-1", "\(held)")
            #expect((held["digest"] as? String)?.hasPrefix("sha256:") == true)
            #expect(held["rule"] as? String == "lookups/look-first")
            // The policy was told which step, attempt and workflow version the call belongs to.
            let violation = try await cluster.http.send(.GET, "\(base)/violations/\(held["violationId"] as? String ?? "")", token: token)
            let context = violation.json["context"] as? [String: Any] ?? [:]
            #expect((context["step"] as? [String: Any])?["kind"] as? String == "agent", "\(violation.text)")
            #expect((context["step"] as? [String: Any])?["attempt"] as? Int == 1, "\(violation.text)")
            #expect((context["workflow"] as? [String: Any])?["id"] as? String == workflowID, "\(violation.text)")
            #expect((context["workflow"] as? [String: Any])?["version"] as? Int == 1, "\(violation.text)")

            // Approved, the step resumes with the held call itself: it runs, the model is not
            // asked for it again, and is then given its result. It asks for another call: that one
            // is held in turn, and does not run.
            #expect(llm.requests.count == 1)
            llm.enqueue(.toolCalls([.init(name: "lookup", arguments: #"{"q":"attempt-2"}"#)]))
            try await approve(first)
            let second = try await pending("look")
            #expect(second["id"] as? String != first["id"] as? String)
            #expect(((second["heldCall"] as? [String: Any])?["arguments"] as? [String: Any])?["q"] as? String == "attempt-2", "\(second)")
            #expect(try await lookups() == ["attempt-1"], "the held call ran, and only it")
            #expect(llm.requests.count == 2)
            #expect(llm.requests.last?.body.contains("attempt-1") == true)

            // Approved in turn, that call runs; the model answers; the step ends.
            llm.enqueue(.text("Found it."))
            try await approve(second)
            // The tool step's own call is held, shown and approved the same way.
            let direct = try await pending("direct")
            #expect(((direct["heldCall"] as? [String: Any])?["arguments"] as? [String: Any])?["q"] as? String == "direct-1", "\(direct)")
            try await approve(direct)
            let done = try await RunAPITests.finished(cluster, token, project: project.id, run: id)
            #expect(done["status"] as? String == "succeeded", "\(done)")
            let ran = try await lookups()
            let executions = try await cluster.http.send(.GET, "\(base)/agent-executions?pageSize=100", token: token).text
            #expect(ran == ["attempt-1", "attempt-2"], "\(executions)")
            // Every model call once: three made, three in the record (two carried from the holds),
            // and the run's cost is theirs, counted once.
            #expect(llm.requests.count == 3)
            let executionID = try #require((try await cluster.http.send(.GET, "\(base)/agent-executions?pageSize=1", token: token).json["executions"] as? [[String: Any]])?.first?["id"] as? String)
            let record = try await cluster.http.send(.GET, "\(base)/agent-executions/\(executionID)", token: token).json
            let llmCalls = record["llmCalls"] as? [[String: Any]] ?? []
            #expect(llmCalls.count == 3, "\(record)")
            #expect(llmCalls.map { $0["carried"] as? Bool == true } == [true, true, false], "\(record)")
            let modelCost = llmCalls.compactMap { AgentAPITests.int($0["costMicros"]) }.reduce(0, +)
            #expect(modelCost > 0 && AgentAPITests.int(done["costMicros"]) == modelCost, "run cost \(done["costMicros"] ?? "") against calls \(modelCost)")
            #expect((RunAPITests.steps(done)["direct"]?["output"] as? [String: Any])?["q"] as? String == "direct-1", "\(done)")
        }
    }
}
