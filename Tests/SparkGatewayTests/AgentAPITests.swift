import Foundation
import NIOHTTP1
import SparkKit
import SparkTesting
import Testing

/// The agent service through the gateway, against a fake model provider that speaks the real
/// OpenAI and Anthropic HTTP APIs, on every backend: definitions checked against the catalog and
/// the project's tools, the LLM ↔ tool loop, malformed tool calls, retries, deadlines, the context
/// manager, memory and idempotency.
@Suite("Agent API")
struct AgentAPITests {
    /// What a cluster with a fake provider needs: the catalog pointing at it.
    static func overrides(_ llm: FakeLLMServer) -> [String: String] {
        [
            "agent.catalog": """
                providers:
                  - { name: fake-openai, api: openai, base_url: "\(llm.baseURL)", api_key_secret: FAKE_KEY, max_retries: 3 }
                  - { name: fake-anthropic, api: anthropic, base_url: "\(llm.baseURL)", api_key_secret: FAKE_KEY, max_retries: 3 }
                models:
                  - { provider: fake-openai, name: "*", input_per_million: 2000000, output_per_million: 8000000, context_window: 100000 }
                  - { provider: fake-anthropic, name: "*", input_per_million: 2000000, output_per_million: 8000000, context_window: 100000 }
                  - { provider: fake-openai, name: tiny, input_per_million: 0, output_per_million: 0, context_window: 700 }
                  - { provider: fake-openai, name: penny, input_per_million: 1, output_per_million: 1, context_window: 100000 }
                """,
        ]
    }

    static let echoTool = """
        tool: repeat
        kind: echo
        description: Returns its input.
        cost_micros: 250
        input_schema:
          type: object
          properties: { name: { type: string } }
          required: [name]
          additionalProperties: false
        """

    static func agent(_ name: String = "helper", provider: String = "fake-openai", model: String = "m1", extra: String = "") -> String {
        """
        agent: \(name)
        provider: \(provider)
        model: \(model)
        system_prompt: You help.
        tools: [repeat]
        \(extra.contains("max_iterations") ? "" : "max_iterations: 4")
        \(extra)
        """
    }

    struct Project {
        let token: String
        let id: String
        var base: String { "/api/v1/projects/\(self.id)" }
    }

    /// A project with the echo tool and the provider's API key.
    static func project(_ cluster: TestCluster, _ name: String = "agents") async throws -> Project {
        let token = try await cluster.adminToken()
        let id = try await cluster.createProject(name, token: token)
        let tool = try await cluster.http.send(.POST, "/api/v1/projects/\(id)/tools/apply", token: token, json: ["source": Self.echoTool])
        try #require(tool.status == 200, "\(tool.text)")
        let secret = try await cluster.http.send(.PUT, "/api/v1/projects/\(id)/secrets/FAKE_KEY", token: token, json: ["value": "sk-test-123"])
        try #require(secret.status == 200, "\(secret.text)")
        return Project(token: token, id: id)
    }

    static func apply(_ cluster: TestCluster, _ project: Project, _ source: String) async throws -> HTTPTestClient.Reply {
        try await cluster.http.send(.POST, "\(project.base)/agents/apply", token: project.token, json: ["source": source])
    }

    static func execute(_ cluster: TestCluster, _ project: Project, agent: String = "helper", _ body: [String: Any]) async throws -> HTTPTestClient.Reply {
        try await cluster.http.send(.POST, "\(project.base)/agents/\(agent)/execute", token: project.token, json: body)
    }

    static func int(_ value: Any?) -> Int64? {
        if let number = value as? Int { return Int64(number) }
        if let text = value as? String { return Int64(text) }
        return nil
    }

    @Test("apply makes versions, checks provider, model price and the project's tools with line and field, get, list, delete, audit", arguments: TestBackend.all)
    func definitions(backend: TestBackend) async throws {
        let llm = try await FakeLLMServer.start()
        defer { Task { try? await llm.stop() } }
        try await TestCluster.run(backend: backend, overrides: Self.overrides(llm)) { cluster in
            let project = try await Self.project(cluster)
            let first = try await Self.apply(cluster, project, Self.agent())
            try #require(first.status == 200, "\(first.text)")
            #expect(first.json["created"] as? Bool == true)
            let agent = try #require(first.json["agent"] as? [String: Any])
            let id = try #require(agent["id"] as? String)
            #expect(id.hasPrefix("agent_"))
            #expect(agent["provider"] as? String == "fake-openai")
            #expect(agent["tools"] as? [String] == ["repeat"])
            let same = try await Self.apply(cluster, project, Self.agent())
            #expect(same.json["changed"] as? Bool != true)
            let changed = try await Self.apply(cluster, project, Self.agent(extra: "temperature: 0.5"))
            #expect((changed.json["agent"] as? [String: Any])?["latestVersion"] as? Int == 2)
            for reference in [id, "helper"] {
                #expect(try await cluster.http.send(.GET, "\(project.base)/agents/\(reference)", token: project.token).json["id"] as? String == id)
            }
            let version = try await cluster.http.send(.GET, "\(project.base)/agents/helper/versions/2", token: project.token)
            #expect((version.json["definition"] as? [String: Any])?["temperature"] as? Double == 0.5)
            let list = try await cluster.http.send(.GET, "\(project.base)/agents", token: project.token)
            #expect((list.json["agents"] as? [[String: Any]])?.compactMap { $0["name"] as? String } == ["helper"])

            // Problems, each at its line and field; nothing stored.
            let cases: [(String, String, Int)] = [
                (Self.agent("a2", provider: "nowhere"), "provider", 2),
                ("agent: a8\nprovider: openai\nmodel: gpt-unpriced\n", "model", 3),
                ("agent: a3\nprovider: fake-anthropic\nmodel: m\ntools: [repeat, search-web]\n", "tools[1]", 4),
                ("agent: a4\nprovider: fake-openai\nmodel: m\nmax_iterations: 0\n", "max_iterations", 4),
                ("agent: a5\nprovider: fake-openai\nmodel: m\ntools: [memory_get]\n", "tools[0]", 4),
                ("agent: a6\nprovider: fake-openai\nmodel: m\noutput_schema: { type: object, $ref: x }\n", "output_schema.$ref", 4),
                ("agent: a7\nprovider: fake-openai\nmodel: m\ntemprature: 1\n", "temprature", 4),
            ]
            for (source, field, line) in cases {
                let validated = try await cluster.http.send(.POST, "\(project.base)/agents/validate", token: project.token, json: ["source": source])
                #expect(validated.json["valid"] as? Bool != true, "\(validated.status) \(validated.text) for \(source)")
                let problem = (validated.json["problems"] as? [[String: Any]])?.first
                #expect(problem?["field"] as? String == field, "\(validated.text)")
                #expect(problem?["line"] as? Int == line, "\(validated.text)")
                let refused = try await Self.apply(cluster, project, source)
                #expect(refused.status == 400)
                #expect(refused.errorField == "source")
            }
            #expect((try await cluster.http.send(.GET, "\(project.base)/agents", token: project.token).json["agents"] as? [[String: Any]])?.count == 1)
            // An unpriced model is reported beside the definition's other problems, at its line.
            let both = try await cluster.http.send(.POST, "\(project.base)/agents/validate", token: project.token, json: ["source": "agent: a9\nprovider: openai\nmodel: gpt-unpriced\ntemprature: 1\n"])
            let fields = (both.json["problems"] as? [[String: Any]] ?? []).map { "\($0["field"] as? String ?? "")@\($0["line"] as? Int ?? 0)" }
            #expect(Set(fields) == ["temprature@4", "model@3"], "\(both.text)")

            // Another project's tool is not this project's; another project's agent is not found.
            let other = try await cluster.createProject("other", token: project.token)
            let foreign = try await cluster.http.send(.POST, "/api/v1/projects/\(other)/agents/apply", token: project.token, json: ["source": Self.agent("theirs")])
            #expect(foreign.status == 400)
            #expect(foreign.errorMessage?.contains("no tool \"repeat\"") == true, "\(foreign.text)")
            #expect(try await cluster.http.send(.GET, "/api/v1/projects/\(other)/agents/helper", token: project.token).status == 404)
            #expect(try await Self.execute(cluster, Project(token: project.token, id: other), ["prompt": "hi"]).status == 404)

            #expect(try await cluster.http.send(.DELETE, "\(project.base)/agents/helper", token: project.token).status == 200)
            #expect(try await cluster.http.send(.GET, "\(project.base)/agents/\(id)", token: project.token).status == 404)
            let audited = try await cluster.http.send(.GET, "\(project.base)/audit-events", token: project.token)
            let actions = (audited.json["events"] as? [[String: Any]] ?? []).compactMap { $0["action"] as? String }.filter { $0.hasPrefix("agent.") }
            #expect(actions == ["agent.delete", "agent.update", "agent.create"])
        }
    }

    @Test("every model call is decided by policy first: a deny or a hold ends the step with the rule, and the model is not called", arguments: TestBackend.all)
    func policyOnModelCalls(backend: TestBackend) async throws {
        let llm = try await FakeLLMServer.start()
        defer { Task { try? await llm.stop() } }
        try await TestCluster.run(backend: backend, overrides: Self.overrides(llm)) { cluster in
            let project = try await Self.project(cluster)
            try #require(try await Self.apply(cluster, project, Self.agent()).status == 200)
            try #require(try await Self.apply(cluster, project, Self.agent("careful", provider: "fake-anthropic")).status == 200)
            try #require(try await Self.apply(cluster, project, Self.agent("big", extra: "max_tokens: 4000")).status == 200)
            let policy = try await cluster.http.send(.POST, "\(project.base)/policies/apply", token: project.token, json: ["source": """
                policy: models
                points: [llm.call]
                rules:
                  - name: cost-cap
                    effect: deny
                    when: cost.estimated_micros > 20000 && model.max_tokens == 4000
                    message: One call may not cost more than 2 cents.
                  - name: anthropic-needs-approval
                    effect: require_approval
                    when: model.provider == "fake-anthropic" && agent.name == "careful" && model.input_tokens > 0
                """])
            try #require(policy.status == 200, "\(policy.text)")

            // 4000 tokens out at 8 $/M is 32,000 micro-dollars at worst: denied before the call.
            let denied = try await Self.execute(cluster, project, agent: "big", ["prompt": "Write a lot."])
            #expect(denied.json["status"] as? String == "failed", "\(denied.text)")
            #expect((denied.json["error"] as? [String: Any])?["reason"] as? String == "policy_denied")
            #expect(((denied.json["error"] as? [String: Any])?["message"] as? String)?.contains("models/cost-cap: One call may not cost more than 2 cents.") == true, "\(denied.text)")
            let held = try await Self.execute(cluster, project, agent: "careful", ["prompt": "Think."])
            #expect((held.json["error"] as? [String: Any])?["reason"] as? String == "approval_required", "\(held.text)")
            #expect(((held.json["error"] as? [String: Any])?["message"] as? String)?.contains("models/anthropic-needs-approval") == true)
            #expect(llm.requests.isEmpty, "no model was called")

            // 1024 tokens out is 8,192 at worst: allowed.
            llm.enqueue(.text("fine"))
            let allowed = try await Self.execute(cluster, project, ["prompt": "Say fine."])
            #expect(allowed.json["status"] as? String == "succeeded", "\(allowed.text)")
            #expect(llm.requests.count == 1)
            let violations = try await cluster.http.send(.GET, "\(project.base)/violations?point=llm.call", token: project.token)
            let listed = try #require(violations.json["violations"] as? [[String: Any]])
            #expect(listed.compactMap { $0["effect"] as? String } == ["require_approval", "deny"])
        }
    }

    @Test("a tool call a policy denies or holds does not run; the model is told, with the rule, and the record says why", arguments: TestBackend.all)
    func policyOnToolCalls(backend: TestBackend) async throws {
        let llm = try await FakeLLMServer.start()
        defer { Task { try? await llm.stop() } }
        try await TestCluster.run(backend: backend, overrides: Self.overrides(llm)) { cluster in
            let project = try await Self.project(cluster)
            try #require(try await Self.apply(cluster, project, Self.agent()).status == 200)
            let policy = try await cluster.http.send(.POST, "\(project.base)/policies/apply", token: project.token, json: ["source": """
                policy: names
                points: [tool.invoke]
                rules:
                  - name: no-eve
                    effect: deny
                    when: tool.arguments.name == "Eve" && agent.name == "helper"
                    message: Eve is not to be repeated.
                  - name: ask-for-bob
                    effect: require_approval
                    when: tool.arguments.name == "Bob"
                """])
            try #require(policy.status == 200, "\(policy.text)")
            llm.enqueue(
                .toolCalls([.init(name: "repeat", arguments: #"{"name":"Eve"}"#), .init(name: "repeat", arguments: #"{"name":"Bob"}"#)]),
                .text("Neither could be repeated.")
            )
            let reply = try await Self.execute(cluster, project, ["prompt": "Repeat Eve and Bob."])
            try #require(reply.status == 200, "\(reply.text)")
            #expect(reply.json["status"] as? String == "succeeded", "\(reply.text)")
            let toolCalls = try #require(reply.json["toolCalls"] as? [[String: Any]])
            #expect(toolCalls.compactMap { ($0["error"] as? [String: Any])?["reason"] as? String } == ["policy_denied", "approval_required"])
            #expect(((toolCalls.first?["error"] as? [String: Any])?["message"] as? String)?.contains("names/no-eve: Eve is not to be repeated.") == true)
            #expect(toolCalls.allSatisfy { $0["output"] == nil })
            // The model saw both refusals.
            let second = try #require(llm.requests.last)
            #expect(second.text(containing: "names/no-eve"))
            #expect(second.text(containing: "names/ask-for-bob"))
            let violations = try await cluster.http.send(.GET, "\(project.base)/violations", token: project.token)
            #expect((violations.json["violations"] as? [[String: Any]])?.count == 2)
        }
    }

    @Test("a provider's API key bound to other hosts is not sent to the model: the step fails secret_refused and the model is not called")
    func boundAPIKey() async throws {
        let llm = try await FakeLLMServer.start()
        defer { Task { try? await llm.stop() } }
        try await TestCluster.run(backend: .sqlite, overrides: Self.overrides(llm)) { cluster in
            let project = try await Self.project(cluster)
            try #require(try await Self.apply(cluster, project, Self.agent()).status == 200)
            let bound = try await cluster.http.send(.PUT, "\(project.base)/secrets/FAKE_KEY", token: project.token, json: ["value": "sk-test-123", "hosts": ["api.example.com"]])
            try #require(bound.status == 200, "\(bound.text)")
            let reply = try await Self.execute(cluster, project, ["prompt": "Hello."])
            #expect(reply.json["status"] as? String == "failed", "\(reply.text)")
            #expect((reply.json["error"] as? [String: Any])?["reason"] as? String == "secret_refused", "\(reply.text)")
            #expect(llm.requests.isEmpty)
            // Bound to the provider's host, it is sent.
            let host = URLComponents(string: llm.baseURL)?.host ?? ""
            try #require(try await cluster.http.send(.PUT, "\(project.base)/secrets/FAKE_KEY", token: project.token, json: ["value": "sk-test-123", "hosts": [host]]).status == 200)
            llm.enqueue(.text("Hi."))
            let sent = try await Self.execute(cluster, project, ["prompt": "Hello."])
            #expect(sent.json["status"] as? String == "succeeded", "\(sent.text)")
        }
    }

    @Test("a step calls the tool the model asks for and gives the result back, on both provider APIs", arguments: TestBackend.all, ["fake-openai", "fake-anthropic"])
    func loop(backend: TestBackend, provider: String) async throws {
        let llm = try await FakeLLMServer.start()
        defer { Task { try? await llm.stop() } }
        try await TestCluster.run(backend: backend, overrides: Self.overrides(llm)) { cluster in
            let project = try await Self.project(cluster)
            try #require(try await Self.apply(cluster, project, Self.agent(provider: provider)).status == 200)
            llm.enqueue(.toolCalls([.init(name: "repeat", arguments: #"{"name":"Ada"}"#)]), .text("Ada it is."))
            let reply = try await Self.execute(cluster, project, ["prompt": "Repeat the name.", "input": ["name": "Ada"]])
            try #require(reply.status == 200, "\(reply.text)")
            #expect(reply.json["status"] as? String == "succeeded", "\(reply.text)")
            #expect(reply.json["text"] as? String == "Ada it is.")
            #expect((reply.json["output"] as? [String: Any])?["text"] as? String == "Ada it is.")
            let llmCalls = try #require(reply.json["llmCalls"] as? [[String: Any]])
            #expect(llmCalls.count == 2)
            #expect(llmCalls.map { Self.int($0["inputTokens"]) } == [100, 100])
            // 100 tokens in at 2 $/M and 20 out at 8 $/M: 200 + 160 micro-dollars a call.
            #expect(llmCalls.map { Self.int($0["costMicros"]) } == [360, 360])
            let toolCalls = try #require(reply.json["toolCalls"] as? [[String: Any]])
            #expect(toolCalls.count == 1)
            #expect(toolCalls.first?["tool"] as? String == "repeat")
            #expect((toolCalls.first?["output"] as? [String: Any])?["name"] as? String == "Ada")
            #expect(Self.int(reply.json["costMicros"]) == Int64(720 + 250))
            #expect(Self.int(reply.json["inputTokens"]) == 200)


            let requests = llm.requests
            try #require(requests.count == 2)
            let second = try #require(requests.last)
            if provider == "fake-openai" {
                #expect(second.path == "/v1/chat/completions")
                #expect(second.headers["authorization"] == "Bearer sk-test-123")
                let messages = try #require(second.json["messages"] as? [[String: Any]])
                #expect(messages.map { $0["role"] as? String } == ["system", "user", "assistant", "tool"])
                #expect(messages.last?["tool_call_id"] as? String == "call_1")
                #expect((messages.last?["content"] as? String)?.contains("Ada") == true)
                let tools = try #require(second.json["tools"] as? [[String: Any]])
                #expect((tools.first?["function"] as? [String: Any])?["name"] as? String == "repeat")
            } else {
                #expect(second.path == "/v1/messages")
                #expect(second.headers["x-api-key"] == "sk-test-123")
                #expect(second.headers["anthropic-version"] == "2023-06-01")
                #expect(second.json["system"] as? String == "You help.")
                let messages = try #require(second.json["messages"] as? [[String: Any]])
                #expect(messages.map { $0["role"] as? String } == ["user", "assistant", "user"])
                let result = try #require((messages.last?["content"] as? [[String: Any]])?.first)
                #expect(result["type"] as? String == "tool_result")
                #expect(result["tool_use_id"] as? String == "toolu_1")
                #expect((result["content"] as? String)?.contains("Ada") == true)
            }
            let first = try #require(requests.first)
            #expect(first.text(containing: "Repeat the name."))
            #expect(first.text(containing: #"{\"name\":\"Ada\"}"#))

            // The record is kept, with its calls.
            let id = try #require(reply.json["id"] as? String)
            let stored = try await cluster.http.send(.GET, "\(project.base)/agent-executions/\(id)", token: project.token)
            #expect((stored.json["toolCalls"] as? [[String: Any]])?.count == 1)
            let listed = try await cluster.http.send(.GET, "\(project.base)/agent-executions?agent=helper", token: project.token)
            #expect((listed.json["executions"] as? [[String: Any]])?.compactMap { $0["id"] as? String } == [id])
            // Cost is rounded up once per call, not per direction: 100 + 20 tokens at 1 µ$ per
            // million each is 1 µ$, not 2.
            if provider == "fake-openai" {
                try #require(try await Self.apply(cluster, project, Self.agent("penny", provider: provider, model: "penny")).status == 200)
                llm.enqueue(.text("Cheap."))
                let cheap = try await Self.execute(cluster, project, agent: "penny", ["prompt": "Say something."])
                #expect(((cheap.json["llmCalls"] as? [[String: Any]])?.first).map { Self.int($0["costMicros"]) } == 1, "\(cheap.text)")
            }
        }
    }

    @Test("unknown tools, arguments that are not JSON or break the schema, and answers that break the output schema go back to the model", arguments: TestBackend.all)
    func malformed(backend: TestBackend) async throws {
        let llm = try await FakeLLMServer.start()
        defer { Task { try? await llm.stop() } }
        try await TestCluster.run(backend: backend, overrides: Self.overrides(llm)) { cluster in
            let project = try await Self.project(cluster)
            let schema = "max_iterations: 6\noutput_schema: { type: object, properties: { n: { type: integer } }, required: [n] }"
            let applied = try await Self.apply(cluster, project, Self.agent(extra: schema))
            try #require(applied.status == 200, "\(applied.text)")
            llm.enqueue(
                .toolCalls([.init(name: "delete_everything", arguments: "{}")]),
                .toolCalls([.init(name: "repeat", arguments: #"{"name": "unterminated"#)]),
                .toolCalls([.init(name: "repeat", arguments: #"{"name": 7}"#)]),
                .text("seven"),
                .text("```json\n{\"n\": 7}\n```")
            )
            let reply = try await Self.execute(cluster, project, ["prompt": "Count."])
            try #require(reply.status == 200, "\(reply.text)")
            #expect(reply.json["status"] as? String == "succeeded", "\(reply.text)")
            #expect(Self.int((reply.json["output"] as? [String: Any])?["n"]) == 7)
            let errors = (reply.json["toolCalls"] as? [[String: Any]] ?? []).map { ($0["error"] as? [String: Any])?["reason"] as? String }
            #expect(errors == ["unknown_tool", "invalid_arguments", "invalid_arguments"])
            let requests = llm.requests
            try #require(requests.count == 5)
            #expect(requests[1].text(containing: "there is no tool \\\"delete_everything\\\""))
            #expect(requests[2].text(containing: "not JSON"))
            #expect(requests[3].text(containing: "input schema"))
            #expect(requests[4].text(containing: "does not fit the output schema"))

            // The iteration limit holds, whatever the model does.
            try #require(try await Self.apply(cluster, project, Self.agent("looper", extra: "max_iterations: 2")).status == 200)
            llm.enqueue(.toolCalls([.init(name: "repeat", arguments: #"{"name":"a"}"#)]), .toolCalls([.init(name: "repeat", arguments: #"{"name":"b"}"#)]))
            let looped = try await Self.execute(cluster, project, agent: "looper", ["prompt": "Loop."])
            #expect(looped.json["status"] as? String == "failed")
            #expect((looped.json["error"] as? [String: Any])?["reason"] as? String == "max_iterations")
            #expect((looped.json["llmCalls"] as? [[String: Any]])?.count == 2)
        }
    }

    @Test("429 with Retry-After and 5xx are retried, other errors are not, a slow model meets the step's deadline", arguments: TestBackend.all)
    func retries(backend: TestBackend) async throws {
        let llm = try await FakeLLMServer.start()
        defer { Task { try? await llm.stop() } }
        // A step outlasts the gateway's usual call deadline: the route has its own.
        try await TestCluster.run(backend: backend, overrides: Self.overrides(llm).merging(["gateway.callTimeoutSeconds": "15"]) { $1 }) { cluster in
            let project = try await Self.project(cluster)
            try #require(try await Self.apply(cluster, project, Self.agent(provider: "fake-anthropic")).status == 200)
            llm.enqueue(.status(429, retryAfter: "1"), .status(529), .text("finally"))
            let started = ContinuousClock.now
            let reply = try await Self.execute(cluster, project, ["prompt": "Try."])
            #expect(reply.json["status"] as? String == "succeeded", "\(reply.text)")
            #expect(ContinuousClock.now - started >= .seconds(1), "Retry-After: 1 was honoured")
            let call = try #require((reply.json["llmCalls"] as? [[String: Any]])?.first)
            #expect(call["attempts"] as? Int == 3)
            #expect(llm.requests.count == 3)

            llm.enqueue(.status(401, message: "invalid x-api-key"))
            let refused = try await Self.execute(cluster, project, ["prompt": "Try."])
            #expect(refused.json["status"] as? String == "failed")
            let error = try #require(refused.json["error"] as? [String: Any])
            #expect(error["reason"] as? String == "llm_error")
            #expect((error["message"] as? String)?.contains("invalid x-api-key") == true, "\(refused.text)")
            #expect(llm.requests.count == 4)
            #expect((refused.json["llmCalls"] as? [[String: Any]])?.first?["attempts"] as? Int == 1)

            // Retries run out (max_retries 3: four tries): the failed call records all four, not one.
            llm.enqueue(.status(503), .status(503), .status(503), .status(503))
            let exhausted = try await Self.execute(cluster, project, ["prompt": "Try."])
            #expect(exhausted.json["status"] as? String == "failed", "\(exhausted.text)")
            #expect(llm.requests.count == 8)
            #expect((exhausted.json["llmCalls"] as? [[String: Any]])?.first?["attempts"] as? Int == 4, "\(exhausted.text)")

            // A wait longer than the step has left is not waited.
            llm.enqueue(.status(429, retryAfter: "600"))
            let limited = try await Self.execute(cluster, project, ["prompt": "Try.", "timeoutMs": 20_000])
            #expect((limited.json["error"] as? [String: Any])?["reason"] as? String == "llm_error")
            #expect(((limited.json["error"] as? [String: Any])?["message"] as? String)?.contains("deadline") == true, "\(limited.text)")

            llm.enqueue(.slow(milliseconds: 16_500, .text("worth the wait")))
            let patient = try await Self.execute(cluster, project, ["prompt": "Take your time."])
            #expect(patient.json["text"] as? String == "worth the wait", "\(patient.text)")

            llm.enqueue(.slow(milliseconds: 20_000, .text("too late")))
            let slow = try await Self.execute(cluster, project, ["prompt": "Try.", "timeoutMs": 1500])
            #expect((slow.json["error"] as? [String: Any])?["reason"] as? String == "timeout", "\(slow.text)")
        }
    }

    @Test("the context manager keeps the task and the latest exchanges, drops the oldest and says so; a context-length refusal trims more", arguments: TestBackend.all)
    func context(backend: TestBackend) async throws {
        let llm = try await FakeLLMServer.start()
        defer { Task { try? await llm.stop() } }
        try await TestCluster.run(backend: backend, overrides: Self.overrides(llm)) { cluster in
            let project = try await Self.project(cluster)
            let applied = try await Self.apply(cluster, project, Self.agent(model: "tiny", extra: "max_iterations: 6\nmax_tokens: 100"))
            try #require(applied.status == 200, "\(applied.text)")
            let long = String(repeating: "x", count: 400)
            llm.enqueue(
                .toolCalls([.init(name: "repeat", arguments: #"{"name":"first-\#(long)"}"#)]),
                .toolCalls([.init(name: "repeat", arguments: #"{"name":"second-\#(long)"}"#)]),
                .toolCalls([.init(name: "repeat", arguments: #"{"name":"third-\#(long)"}"#)]),
                .contextLength,
                .text("done")
            )
            let reply = try await Self.execute(cluster, project, ["prompt": "Keep going."])
            #expect(reply.json["status"] as? String == "succeeded", "\(reply.text)")
            let calls = try #require(reply.json["llmCalls"] as? [[String: Any]])
            #expect(calls.count == 4)
            #expect(calls.first?["dropped"] == nil)
            let last = try #require(calls.last)
            #expect(last["attempts"] as? Int == 2)
            let dropped = try #require(last["dropped"] as? [String])
            #expect(dropped.first == "assistant")
            let requests = llm.requests
            let final = try #require(requests.last)
            #expect(final.text(containing: "Keep going."))
            #expect(final.text(containing: "left out to fit the context window"))
            #expect(!final.text(containing: "first-"))
            #expect(final.text(containing: "third-"))
        }
    }

    @Test("memory: the model writes a fact in one step and finds it in the next; the API lists, writes and deletes facts", arguments: TestBackend.all)
    func memory(backend: TestBackend) async throws {
        let llm = try await FakeLLMServer.start()
        defer { Task { try? await llm.stop() } }
        try await TestCluster.run(backend: backend, overrides: Self.overrides(llm)) { cluster in
            let project = try await Self.project(cluster)
            try #require(try await Self.apply(cluster, project, Self.agent(extra: "memory: true")).status == 200)
            llm.enqueue(
                .toolCalls([.init(name: "memory_set", arguments: #"{"key":"city","value":"Lyon"}"#), .init(name: "memory_save_summary", arguments: #"{"text":"Asked about Lyon."}"#)]),
                .text("Saved.")
            )
            let first = try await Self.execute(cluster, project, ["prompt": "Remember Lyon."])
            #expect(first.json["status"] as? String == "succeeded", "\(first.text)")
            #expect(llm.requests.first?.text(containing: "memory_set") == true)

            llm.enqueue(.toolCalls([.init(name: "memory_get", arguments: #"{"key":"city"}"#)]), .text("Lyon."))
            let second = try await Self.execute(cluster, project, ["prompt": "Which city?"])
            #expect(second.json["text"] as? String == "Lyon.", "\(second.text)")
            let requests = llm.requests
            try #require(requests.count == 4)
            #expect(requests[2].text(containing: "keys \\\"city\\\""), "the system prompt names the keys remembered")
            #expect(requests[3].text(containing: "Lyon"))

            let memory = try await cluster.http.send(.GET, "\(project.base)/agents/helper/memory", token: project.token)
            let facts = try #require(memory.json["facts"] as? [[String: Any]])
            #expect(facts.map { $0["key"] as? String } == ["city"])
            #expect(facts.first?["value"] as? String == "Lyon")
            #expect((memory.json["summaries"] as? [[String: Any]])?.first?["text"] as? String == "Asked about Lyon.")
            let put = try await cluster.http.send(.PUT, "\(project.base)/agents/helper/memory/team", token: project.token, json: ["value": ["size": 3]])
            #expect(put.status == 200, "\(put.text)")
            #expect(try await cluster.http.send(.DELETE, "\(project.base)/agents/helper/memory/city", token: project.token).status == 200)
            #expect(try await cluster.http.send(.DELETE, "\(project.base)/agents/helper/memory/city", token: project.token).status == 404)
            let after = try await cluster.http.send(.GET, "\(project.base)/agents/helper/memory", token: project.token)
            #expect((after.json["facts"] as? [[String: Any]])?.map { $0["key"] as? String } == ["team"])
            let noValue = try await cluster.http.send(.PUT, "\(project.base)/agents/helper/memory/x", token: project.token, json: [:])
            #expect(noValue.status == 400)
            #expect(noValue.errorField == "value")
        }
    }

    @Test("the same idempotency key returns the stored step without calling the model; bad input names its field", arguments: TestBackend.all)
    func idempotencyAndBadInput(backend: TestBackend) async throws {
        let llm = try await FakeLLMServer.start()
        defer { Task { try? await llm.stop() } }
        try await TestCluster.run(backend: backend, overrides: Self.overrides(llm)) { cluster in
            let project = try await Self.project(cluster)
            try #require(try await Self.apply(cluster, project, Self.agent()).status == 200)
            llm.enqueue(.toolCalls([.init(name: "repeat", arguments: #"{"name":"k"}"#)]), .text("once"))
            let first = try await Self.execute(cluster, project, ["prompt": "Once.", "idempotencyKey": "run-1/step/1"])
            #expect(first.json["status"] as? String == "succeeded", "\(first.text)")
            #expect(llm.requests.count == 2)
            let again = try await Self.execute(cluster, project, ["prompt": "Once.", "idempotencyKey": "run-1/step/1"])
            #expect(again.json["replayed"] as? Bool == true)
            #expect(again.json["id"] as? String == first.json["id"] as? String)
            #expect(again.json["text"] as? String == "once")
            #expect(llm.requests.count == 2)
            let reused = try await Self.execute(cluster, project, ["prompt": "Twice.", "idempotencyKey": "run-1/step/1"])
            #expect(reused.status == 409)
            #expect(reused.errorField == "idempotencyKey", "\(reused.text)")

            // Sent at once under one new key: the model is called for one of them; the others
            // answer with its step or, while it still runs, 409 to ask again.
            llm.enqueue(.text("one of many"))
            let answers = try await withThrowingTaskGroup(of: (Int, String?, Bool).self) { group in
                for _ in 0 ..< 6 {
                    group.addTask {
                        let sent = try await Self.execute(cluster, project, ["prompt": "At once.", "idempotencyKey": "run-2/step/1"])
                        return (sent.status, sent.json["id"] as? String, sent.json["replayed"] as? Bool == true)
                    }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            #expect(answers.allSatisfy { $0.0 == 200 || $0.0 == 409 }, "\(answers)")
            #expect(answers.filter { $0.0 == 200 && !$0.2 }.count == 1, "the step ran once: \(answers)")
            #expect(Set(answers.compactMap(\.1)).count == 1, "every answer names the same step: \(answers)")
            #expect(llm.requests.count == 3)

            let bad: [([String: Any], String)] = [
                ([:], "prompt"),
                (["prompt": "  "], "prompt"),
                (["prompt": "x", "idempotencyKey": "has space"], "idempotencyKey"),
                (["prompt": "x", "timeoutMs": -1], "timeoutMs"),
                (["prompt": "x", "runId": String(repeating: "r", count: 201)], "runId"),
            ]
            for (body, field) in bad {
                let refused = try await Self.execute(cluster, project, body)
                #expect(refused.status == 400, "\(body)")
                #expect(refused.errorField == field, "\(refused.text)")
            }
            #expect(try await Self.execute(cluster, project, agent: "nobody", ["prompt": "x"]).status == 404)
            #expect(try await cluster.http.send(.GET, "\(project.base)/agent-executions/nope", token: project.token).errorField == "executionId")
            #expect(llm.requests.count == 3, "no bad request reached the model")

            // A missing API key fails the step with its own reason, before any call.
            #expect(try await cluster.http.send(.DELETE, "\(project.base)/secrets/FAKE_KEY", token: project.token).status == 200)
            let keyless = try await Self.execute(cluster, project, ["prompt": "x"])
            #expect((keyless.json["error"] as? [String: Any])?["reason"] as? String == "secret_missing", "\(keyless.text)")
            // No route reads a secret back.
            #expect(try await cluster.http.send(.GET, "\(project.base)/secrets/FAKE_KEY", token: project.token).status != 200)
            #expect(llm.requests.count == 3)
        }
    }

    @Test("a workflow's agent steps are checked against the project's agents", arguments: TestBackend.all)
    func workflowReferences(backend: TestBackend) async throws {
        let llm = try await FakeLLMServer.start()
        defer { Task { try? await llm.stop() } }
        try await TestCluster.run(backend: backend, overrides: Self.overrides(llm)) { cluster in
            let project = try await Self.project(cluster)
            try #require(try await Self.apply(cluster, project, Self.agent("writer")).status == 200)
            let workflow = { (agent: String) in "name: brief\nsteps:\n  - id: draft\n    agent: \(agent)\n    with: { prompt: hi }\n" }
            let unknown = try await cluster.http.send(.POST, "\(project.base)/workflows/validate", token: project.token, json: ["source": workflow("writr")])
            let problem = (unknown.json["problems"] as? [[String: Any]])?.first
            #expect(problem?["field"] as? String == "steps[0].agent", "\(unknown.text)")
            #expect(problem?["line"] as? Int == 4)
            #expect((problem?["message"] as? String)?.contains("did you mean \"writer\"") == true)
            let known = try await cluster.http.send(.POST, "\(project.base)/workflows/apply", token: project.token, json: ["source": workflow("writer")])
            #expect(known.status == 200, "\(known.text)")
        }
    }
}

extension FakeLLMServer.Received {
    func text(containing fragment: String) -> Bool { self.body.contains(fragment) }
}
