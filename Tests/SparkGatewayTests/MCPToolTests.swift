import Foundation
import NIOHTTP1
import SparkKit
import SparkTesting
import Testing

/// mcp tools: a Model Context Protocol server over stdio (run in the sandbox) or streamable HTTP
/// (through the outbound guard), its tools listed and called, and offered to agents, on every backend.
@Suite("MCP tools")
struct MCPToolTests {
    static func stdioTool(_ name: String = "calc", tools: String = "") -> String {
        let indented = MCPTestServer.python.split(separator: "\n", omittingEmptySubsequences: false).map { "    \($0)" }.joined(separator: "\n")
        return """
            tool: \(name)
            kind: mcp
            description: A calculator.
            side_effects: none
            timeout: 20s
            mcp:
              \(tools.isEmpty ? "" : "tools: \(tools)")
              python: |
            \(indented)
            """
    }

    static func int(_ value: Any?) -> Int? { (value as? Int) ?? (value as? String).flatMap(Int.init) }

    @Test("a stdio server's tools are listed and called; a tool error, a filtered tool and a missing tool name are refused", arguments: TestBackend.all)
    func stdio(backend: TestBackend) async throws {
        try await TestCluster.run(backend: backend) { cluster in
            let admin = try await cluster.adminToken()
            let project = try await cluster.createProject("mcp", token: admin)
            let base = "/api/v1/projects/\(project)/tools"
            let applied = try await cluster.http.send(.POST, "\(base)/apply", token: admin, json: ["source": Self.stdioTool()])
            try #require(applied.status == 200, "\(applied.text)")
            #expect((applied.json["tool"] as? [String: Any])?["kind"] as? String == "mcp")

            let functions = try await cluster.http.send(.GET, "\(base)/calc/functions", token: admin)
            try #require(functions.status == 200, "\(functions.text)")
            let listed = functions.json["functions"] as? [[String: Any]] ?? []
            #expect(listed.compactMap { $0["name"] as? String } == ["add", "shout", "fail"])
            #expect(((listed.first?["inputSchema"] as? [String: Any])?["required"] as? [String]) == ["a", "b"])
            #expect(functions.json["fetched"] as? Bool == true)
            let again = try await cluster.http.send(.GET, "\(base)/calc/functions", token: admin)
            #expect(again.json["fetched"] as? Bool != true, "the list is kept for a while")

            let added = try await cluster.http.send(.POST, "\(base)/calc/invoke", token: admin, json: ["input": ["tool": "add", "arguments": ["a": 2, "b": 3]]])
            try #require(added.status == 200, "\(added.text)")
            #expect((added.json["output"] as? [String: Any])?["text"] as? String == "5", "\(added.text)")
            let failed = try await cluster.http.send(.POST, "\(base)/calc/invoke", token: admin, json: ["input": ["tool": "fail"]])
            #expect((failed.json["error"] as? [String: Any])?["reason"] as? String == "tool_error", "\(failed.text)")
            #expect(((failed.json["error"] as? [String: Any])?["message"] as? String)?.contains("always fails") == true)
            let nameless = try await cluster.http.send(.POST, "\(base)/calc/invoke", token: admin, json: ["input": ["arguments": [:]]])
            #expect(nameless.status == 400)
            #expect(nameless.errorField == "input.tool", "\(nameless.text)")

            let narrowed = try await cluster.http.send(.POST, "\(base)/apply", token: admin, json: ["source": Self.stdioTool("loud", tools: "[shout]")])
            try #require(narrowed.status == 200, "\(narrowed.text)")
            let only = try await cluster.http.send(.GET, "\(base)/loud/functions", token: admin)
            #expect((only.json["functions"] as? [[String: Any]])?.compactMap { $0["name"] as? String } == ["shout"])
            let hidden = try await cluster.http.send(.POST, "\(base)/loud/invoke", token: admin, json: ["input": ["tool": "add", "arguments": ["a": 1, "b": 1]]])
            #expect((hidden.json["error"] as? [String: Any])?["reason"] as? String == "unknown_tool", "\(hidden.text)")
        }
    }

    @Test("a streamable HTTP server is reached only through the outbound guard; a private address is refused before any packet", arguments: TestBackend.all)
    func http(backend: TestBackend) async throws {
        let server = try await MCPTestServer.start()
        defer { Task { try? await server.stop() } }
        try await TestCluster.run(backend: backend, overrides: ["tool.outboundAllow": "127.0.0.1:\(server.port)"]) { cluster in
            let admin = try await cluster.adminToken()
            let project = try await cluster.createProject("mcp-http", token: admin)
            let base = "/api/v1/projects/\(project)/tools"
            let source = "tool: remote\nkind: mcp\nside_effects: idempotent\nmcp:\n  url: \"\(server.url)\"\n"
            try #require(try await cluster.http.send(.POST, "\(base)/apply", token: admin, json: ["source": source]).status == 200)
            let shouted = try await cluster.http.send(.POST, "\(base)/remote/invoke", token: admin, json: ["input": ["tool": "shout", "arguments": ["text": "hey"]]])
            #expect((shouted.json["output"] as? [String: Any])?["text"] as? String == "HEY", "\(shouted.text)")
            #expect(server.requests >= 3, "initialize, initialized, tools/call")
            let functions = try await cluster.http.send(.GET, "\(base)/remote/functions", token: admin)
            #expect((functions.json["functions"] as? [[String: Any]])?.count == 3, "\(functions.text)")

            let before = server.requests
            for target in ["http://169.254.169.254/mcp", "http://10.0.0.1/mcp", "http://127.0.0.1:\(server.port + 1)/mcp", "http://[::1]:\(server.port)/mcp"] {
                let name = "blocked-\(abs(target.hashValue % 10_000))"
                let applied = try await cluster.http.send(.POST, "\(base)/apply", token: admin, json: ["source": "tool: \(name)\nkind: mcp\nside_effects: none\nmcp:\n  url: \"\(target)\"\n"])
                try #require(applied.status == 200, "\(applied.text)")
                let refused = try await cluster.http.send(.POST, "\(base)/\(name)/invoke", token: admin, json: ["input": ["tool": "shout", "arguments": ["text": "x"]]])
                #expect((refused.json["error"] as? [String: Any])?["reason"] as? String == "outbound_refused", "\(target): \(refused.text)")
            }
            #expect(server.requests == before)
        }
    }

    @Test("an mcp definition takes one server, an absolute command, and no input_schema", arguments: [TestBackend.sqlite])
    func badDefinitions(backend: TestBackend) async throws {
        try await TestCluster.run(backend: backend) { cluster in
            let admin = try await cluster.adminToken()
            let project = try await cluster.createProject("mcp-bad", token: admin)
            let cases: [(String, String)] = [
                ("tool: a\nkind: mcp\nside_effects: none\nmcp:\n  url: \"https://x.example/mcp\"\n  python: print(1)\n", "mcp"),
                ("tool: b\nkind: mcp\nside_effects: none\nmcp:\n  command: [mcp-server-git]\n", "mcp.command"),
                ("tool: c\nkind: mcp\nside_effects: none\ninput_schema: { type: object }\nmcp:\n  url: \"https://x.example/mcp\"\n", "input_schema"),
                ("tool: d\nkind: mcp\nmcp:\n  url: \"https://x.example/mcp\"\n", "side_effects"),
                ("tool: e\nkind: mcp\nside_effects: none\nmcp:\n  url: \"ftp://x.example\"\n", "mcp.url"),
            ]
            for (source, field) in cases {
                let validated = try await cluster.http.send(.POST, "/api/v1/projects/\(project)/tools/validate", token: admin, json: ["source": source])
                #expect((validated.json["problems"] as? [[String: Any]])?.first?["field"] as? String == field, "\(validated.text)")
            }
        }
    }

    @Test("an agent is offered an mcp tool's server tools as <tool>__<name> and calls them through the tool service", arguments: TestBackend.all)
    func agent(backend: TestBackend) async throws {
        let llm = try await FakeLLMServer.start()
        defer { Task { try? await llm.stop() } }
        try await TestCluster.run(backend: backend, overrides: AgentAPITests.overrides(llm)) { cluster in
            let admin = try await cluster.adminToken()
            let project = try await cluster.createProject("mcp-agent", token: admin)
            let base = "/api/v1/projects/\(project)"
            try #require(try await cluster.http.send(.POST, "\(base)/tools/apply", token: admin, json: ["source": Self.stdioTool()]).status == 200)
            try #require(try await cluster.http.send(.PUT, "\(base)/secrets/FAKE_KEY", token: admin, json: ["value": "sk-1"]).status == 200)
            let agent = "agent: mathematician\nprovider: fake-openai\nmodel: m1\ntools: [calc]\n"
            let applied = try await cluster.http.send(.POST, "\(base)/agents/apply", token: admin, json: ["source": agent])
            try #require(applied.status == 200, "\(applied.text)")
            llm.enqueue(.toolCalls([.init(name: "calc__add", arguments: #"{"a": 20, "b": 22}"#)]), .text("42"))
            let reply = try await cluster.http.send(.POST, "\(base)/agents/mathematician/execute", token: admin, json: ["prompt": "Add 20 and 22."])
            #expect(reply.json["status"] as? String == "succeeded", "\(reply.text)")
            let requests = llm.requests
            try #require(requests.count == 2)
            let offered = (requests[0].json["tools"] as? [[String: Any]] ?? []).compactMap { ($0["function"] as? [String: Any])?["name"] as? String }
            #expect(offered == ["calc__add", "calc__shout", "calc__fail"])
            let messages = requests[1].json["messages"] as? [[String: Any]] ?? []
            #expect((messages.last?["content"] as? String)?.contains(#""text":"42""#) == true, "\(messages.last ?? [:])")
            let call = (reply.json["toolCalls"] as? [[String: Any]])?.first
            #expect(call?["tool"] as? String == "calc__add")
            #expect(call?["error"] == nil)
        }
    }
}
