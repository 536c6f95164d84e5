import Foundation
import NIOHTTP1
import SparkExpr
import SparkKit
import SparkTesting
import Testing

/// Free-form JSON keeps its values on every hop: what a user sends is what a tool, a model, a
/// template, an approver and the API see, numbers exactly as written.
@Suite("JSON values, end to end")
struct JSONValueTests {
    /// The numbers a double would change, and text a careless hop would.
    static let inputs = #"""
        {"id": 9007199254740993, "big": 123456789012345678901234567890, "neg": -0, "far": 1e400, "price": 1.50, "count": 4,
         "deep": [[[[[[[[[[[[[[[[[[[[{"n": 18446744073709551617}]]]]]]]]]]]]]]]]]]]], "text": "ünï 😀 \"q\" \u00e9"}
        """#

    static let workflow = """
        name: numbers
        inputs:
          id: { type: integer }
          big: { type: integer }
          neg: { type: integer }
          far: { type: number }
          price: { type: number }
          count: { type: integer }
          deep: { type: array }
          text: { type: string }
        steps:
          - id: echo
            tool: echo
            with:
              id: "${{ inputs.id }}"
              big: "${{ inputs.big }}"
              neg: "${{ inputs.neg }}"
              far: "${{ inputs.far }}"
              price: "${{ inputs.price }}"
              deep: "${{ inputs.deep }}"
              text: "${{ inputs.text }}"
              line: "issue ${{ inputs.id }} of ${{ inputs.big }} at ${{ inputs.price }}, count is ${{ inputs.count }}, half is ${{ inputs.count / 2 }}"
          - id: fetch
            tool: fetch
            needs: [echo]
            with: { id: "${{ steps.echo.output.id }}", big: "${{ steps.echo.output.big }}" }
          - id: py
            tool: count
            needs: [echo]
            with: { n: "${{ inputs.count }}", big: "${{ inputs.big }}", id: "${{ inputs.id }}" }
          - id: ok
            needs: [echo]
            approval: { message: "Shout ${{ inputs.count }} words about ${{ inputs.id }} at ${{ inputs.price }}?" }
          - id: think
            agent: helper
            needs: [ok]
            with: { prompt: "Look.", input: "${{ steps.echo.output }}" }
        outputs:
          echoed: "${{ steps.echo.output }}"
          path: "${{ steps.fetch.output.body.path }}"
          sent: "${{ steps.fetch.output.body.body }}"
          py: "${{ steps.py.output }}"
        """

    /// What the python tool returns: what it read, with Python's own types, and arithmetic on it.
    static let countTool = """
        tool: count
        kind: python
        side_effects: none
        input_schema:
          type: object
          properties: { n: { type: integer }, big: { type: integer }, id: { type: integer } }
          required: [n, big, id]
        python:
          code: |
            import json, sys
            given = json.load(sys.stdin)
            n = given["n"]
            print(json.dumps({"types": [type(given[k]).__name__ for k in ("n", "big", "id")], "range": list(range(n)), "big_plus_one": given["big"] + 1, "id": given["id"]}))
        """

    static func value(_ text: String, _ path: String...) throws -> ExprValue {
        var value = try ExprValue(jsonText: text)
        for key in path {
            switch value {
            case .map(let fields): value = fields[key] ?? .null
            case .list(let items): value = Int(key).flatMap { items.indices.contains($0) ? items[$0] : nil } ?? .null
            default: return .null
            }
        }
        return value
    }

    @Test("integers above 2^53, -0, 1e400, 1.50, deep nesting and unicode reach the tool, the model, templates, the approver, run outputs and the API as sent", arguments: TestBackend.all)
    func numbersKeepTheirText(backend: TestBackend) async throws {
        let llm = try await FakeLLMServer.start()
        defer { Task { try? await llm.stop() } }
        let server = try await HTTPEchoServer.start()
        defer { Task { try? await server.stop() } }
        var overrides = AgentAPITests.overrides(llm)
        overrides["tool.outboundAllow"] = "127.0.0.1:\(server.port)"
        try await TestCluster.run(backend: backend, overrides: overrides) { cluster in
            let project = try await AgentAPITests.project(cluster, "numbers")
            let (token, base) = (project.token, project.base)
            try #require(try await AgentAPITests.apply(cluster, project, AgentAPITests.agent("helper")).status == 200)
            let fetch = "tool: fetch\nkind: http\nside_effects: idempotent\nhttp: { method: POST, url: \"http://127.0.0.1:\(server.port)/issues/${{ input.id }}\" }\n"
            for source in ["tool: echo\nkind: echo", fetch, Self.countTool] {
                let applied = try await cluster.http.send(.POST, "\(base)/tools/apply", token: token, json: ["source": source])
                try #require(applied.status == 200, "\(applied.text)")
            }
            let applied = try await cluster.http.send(.POST, "\(base)/workflows/apply", token: token, json: ["source": Self.workflow])
            try #require(applied.status == 200, "\(applied.text)")

            // A tool called through the API gets and gives back the value as sent.
            let invoked = try await cluster.http.send(.POST, "\(base)/tools/echo/invoke", token: token, body: #"{"input": {"name": "n", "id": 9007199254740993, "x": [1e400, -0, 1.50]}}"#)
            #expect(invoked.status == 200, "\(invoked.text)")
            #expect(invoked.text.contains(#""output":{"id":9007199254740993,"name":"n","x":[1e400,-0,1.50]}"#), "\(invoked.text)")

            let created = try await cluster.http.send(.POST, "\(base)/runs", token: token, body: #"{"workflow": "numbers", "inputs": \#(Self.inputs)}"#)
            try #require(created.status == 201, "\(created.text)")
            let id = try #require((created.json["run"] as? [String: Any])?["id"] as? String, "\(created.text)")
            // The API shows the inputs as sent.
            for (key, literal) in [("id", "9007199254740993"), ("big", "123456789012345678901234567890"), ("neg", "-0"), ("far", "1e400"), ("price", "1.50"), ("count", "4")] {
                #expect(try Self.value(created.text, "run", "inputs", key).jsonText == literal, "\(key): \(created.text)")
            }
            #expect(created.text.contains(#"{"n":18446744073709551617}"#))
            #expect(try Self.value(created.text, "run", "inputs", "text") == .string("ünï 😀 \"q\" é"))

            // The approver reads the numbers as they were given.
            _ = try await RunAPITests.until(cluster, token, project: project.id, run: id) { RunAPITests.steps($0)["ok"]?["status"] as? String == "awaiting_approval" }
            let approvals = try await cluster.http.send(.GET, "\(base)/approvals?runId=\(id)", token: token)
            let approval = try #require((approvals.json["approvals"] as? [[String: Any]])?.first, "\(approvals.text)")
            #expect(approval["message"] as? String == "Shout 4 words about 9007199254740993 at 1.50?")
            llm.enqueue(.text("Seen."))
            let decided = try await cluster.http.send(.POST, "\(base)/approvals/\(approval["id"] as? String ?? "")/decide", token: token, json: ["decision": "approve"])
            #expect(decided.status == 200, "\(decided.text)")

            let done = try await RunAPITests.finished(cluster, token, project: project.id, run: id)
            try #require(done["status"] as? String == "succeeded", "\(done)")
            let run = try await cluster.http.send(.GET, "\(base)/runs/\(id)", token: token)
            // The echo step's output, and the run's outputs, through templates.
            let echoed = try Self.value(run.text, "outputs", "echoed")
            for (key, literal) in [("id", "9007199254740993"), ("big", "123456789012345678901234567890"), ("neg", "-0"), ("far", "1e400"), ("price", "1.50")] {
                #expect(try Self.value(echoed.jsonText, key).jsonText == literal, "\(key): \(echoed.jsonText)")
            }
            #expect(try Self.value(echoed.jsonText, "line") == .string("issue 9007199254740993 of 123456789012345678901234567890 at 1.50, count is 4, half is 2"))
            #expect(echoed.jsonText.contains(#"[[[[[[[[[[[[[[[[[[[[{"n":18446744073709551617}]]]]]]]]]]]]]]]]]]]]"#))
            #expect(try Self.value(echoed.jsonText, "text") == .string("ünï 😀 \"q\" é"))
            // The http tool: the id in its URL, and the body it sent, as given.
            #expect(try Self.value(run.text, "outputs", "path") == .string("/issues/9007199254740993"), "\(run.text)")
            let sent = try Self.value(run.text, "outputs", "sent")
            #expect(sent.templateText.contains(#""big":123456789012345678901234567890"#) && sent.templateText.contains(#""id":9007199254740993"#), "\(sent)")
            // Python reads integers as int, exactly, and computes on them.
            let python = try Self.value(run.text, "outputs", "py")
            #expect(try Self.value(python.jsonText, "types") == .list([.string("int"), .string("int"), .string("int")]), "\(python.jsonText)")
            #expect(try Self.value(python.jsonText, "range").jsonText == "[0,1,2,3]")
            #expect(try Self.value(python.jsonText, "big_plus_one").jsonText == "123456789012345678901234567891")
            #expect(try Self.value(python.jsonText, "id").jsonText == "9007199254740993")
            // The model was sent the numbers as written.
            let asked = llm.requests.last?.body ?? ""
            for literal in ["9007199254740993", "123456789012345678901234567890", "1e400", "1.50", "18446744073709551617"] {
                #expect(asked.contains(literal), "\(literal) not in \(asked.suffix(800))")
            }
            #expect(!asked.contains("9.007199254740992e"))
        }
    }

    @Test("a Json field that is not JSON is refused naming the field; the gateway refuses a body whose JSON value is broken")
    func badJSON() async throws {
        try await TestCluster.run(backend: .sqlite) { cluster in
            let token = try await cluster.adminToken()
            let project = try await cluster.createProject("bad-json", token: token)
            let base = "/api/v1/projects/\(project)"
            try #require(try await cluster.http.send(.POST, "\(base)/tools/apply", token: token, json: ["source": "tool: echo\nkind: echo"]).status == 200)
            for body in [#"{"input": {"a": 01}}"#, #"{"input": [1,]}"#, #"{"input": 1e}"#, #"{"input": "\ud800"}"#, #"{"input": NaN}"#] {
                let reply = try await cluster.http.send(.POST, "\(base)/tools/echo/invoke", token: token, body: body)
                #expect(reply.status == 400, "\(body): \(reply.text)")
                #expect(reply.errorField == "body", "\(body): \(reply.text)")
            }
            // What is taken comes back as sent, white space aside.
            for (body, output) in [(#"{"input": {"v": 12345678901234567890}}"#, #"{"v":12345678901234567890}"#), (#"{"input": {"v": [ -0.0 , 2E-3 ]}}"#, #"{"v":[-0.0,2E-3]}"#)] {
                let reply = try await cluster.http.send(.POST, "\(base)/tools/echo/invoke", token: token, body: body)
                #expect(reply.status == 200, "\(body): \(reply.text)")
                #expect(reply.text.contains(#""output":\#(output)"#), "\(body): \(reply.text)")
            }
        }
    }
}
