import Foundation
import NIOHTTP1
import SQLKit
import SparkKit
import SparkTesting
import Testing

/// The tool service through the gateway, on every backend: definitions and versions, secrets,
/// invoking with idempotency keys, and the echo and http executors.
@Suite("Tool API")
struct ToolAPITests {
    static let echo = """
        tool: repeat
        kind: echo
        description: Returns its input.
        input_schema:
          type: object
          properties:
            name: { type: string, minLength: 1 }
            count: { type: integer, minimum: 0 }
          required: [name]
          additionalProperties: false
        """

    @Test("apply creates version 1, the same definition changes nothing, a change makes version 2; get by name or id; delete", arguments: TestBackend.all)
    func versions(backend: TestBackend) async throws {
        try await TestCluster.run(backend: backend) { cluster in
            let admin = try await cluster.adminToken()
            let project = try await cluster.createProject("tools", token: admin)
            let base = "/api/v1/projects/\(project)/tools"

            let first = try await cluster.http.send(.POST, "\(base)/apply", token: admin, json: ["source": Self.echo])
            try #require(first.status == 200, "\(first.text)")
            #expect(first.json["created"] as? Bool == true)
            let tool = try #require(first.json["tool"] as? [String: Any])
            let id = try #require(tool["id"] as? String)
            #expect(id.hasPrefix("tool_"))
            #expect(tool["kind"] as? String == "echo")
            #expect(tool["sideEffects"] as? String == "none")
            let schema = try #require(tool["inputSchema"] as? [String: Any])
            #expect(schema["required"] as? [String] == ["name"])

            let json = #"{"tool": "repeat", "kind": "echo", "description": "Returns its input.", "input_schema": {"type": "object", "properties": {"name": {"type": "string", "minLength": 1}, "count": {"type": "integer", "minimum": 0}}, "required": ["name"], "additionalProperties": false}, "timeout": "30s"}"#
            let again = try await cluster.http.send(.POST, "\(base)/apply", token: admin, json: ["source": json])
            try #require(again.status == 200, "\(again.text)")
            #expect(again.json["changed"] as? Bool != true)
            let changed = try await cluster.http.send(.POST, "\(base)/apply", token: admin, json: ["source": Self.echo + "\ncost_micros: 250\n"])
            #expect(changed.json["changed"] as? Bool == true)
            let changedTool = try #require(changed.json["tool"] as? [String: Any])
            #expect(changedTool["latestVersion"] as? Int == 2)
            #expect(changedTool["costMicros"] as? String == "250" || changedTool["costMicros"] as? Int == 250)

            for reference in [id, "repeat"] {
                let got = try await cluster.http.send(.GET, "\(base)/\(reference)", token: admin)
                #expect(got.status == 200)
                #expect(got.json["id"] as? String == id)
            }
            let v1 = try await cluster.http.send(.GET, "\(base)/repeat/versions/1", token: admin)
            #expect(v1.json["source"] as? String == Self.echo)
            let versions = try await cluster.http.send(.GET, "\(base)/repeat/versions", token: admin)
            #expect((versions.json["versions"] as? [[String: Any]])?.compactMap { $0["version"] as? Int } == [2, 1])
            let list = try await cluster.http.send(.GET, base, token: admin)
            #expect((list.json["tools"] as? [[String: Any]])?.compactMap { $0["name"] as? String } == ["repeat"])

            let nothing = try await cluster.http.send(.PATCH, "\(base)/repeat", token: admin, json: [:])
            #expect(nothing.status == 200)
            #expect(nothing.json["changed"] as? Bool != true)
            let renamed = try await cluster.http.send(.PATCH, "\(base)/repeat", token: admin, json: ["source": Self.echo.replacingOccurrences(of: "tool: repeat", with: "tool: other")])
            #expect(renamed.errorField == "source")

            #expect(try await cluster.http.send(.DELETE, "\(base)/repeat", token: admin).status == 200)
            #expect(try await cluster.http.send(.GET, "\(base)/\(id)", token: admin).status == 404)
            let audited = try await cluster.http.send(.GET, "/api/v1/projects/\(project)/audit-events", token: admin)
            let actions = (audited.json["events"] as? [[String: Any]] ?? []).compactMap { $0["action"] as? String }.filter { $0.hasPrefix("tool.") }
            #expect(actions == ["tool.delete", "tool.update", "tool.create"])
        }
    }

    @Test("validation names the line, column and field of each problem, and nothing invalid is stored", arguments: TestBackend.all)
    func validation(backend: TestBackend) async throws {
        try await TestCluster.run(backend: backend) { cluster in
            let admin = try await cluster.adminToken()
            let project = try await cluster.createProject("checked", token: admin)
            let base = "/api/v1/projects/\(project)/tools"
            let broken = """
                tool: fetch
                kind: http
                side_effects: sometimes
                input_schema: { type: objekt, $ref: "#/x" }
                http:
                  url: "https://example.com/${{ inputs.path }}"
                  methd: GET
                """
            let report = try await cluster.http.send(.POST, "\(base)/validate", token: admin, json: ["source": broken])
            #expect(report.status == 200)
            #expect(report.json["valid"] as? Bool != true)
            let problems = report.json["problems"] as? [[String: Any]] ?? []
            let fields = problems.map { "\($0["line"] ?? ""):\($0["field"] ?? "")" }
            #expect(fields.contains("3:side_effects"), "\(fields)")
            #expect(fields.contains("4:input_schema.$ref"), "\(fields)")
            #expect(fields.contains("4:input_schema.type"), "\(fields)")
            #expect(fields.contains("6:http.url"), "\(fields)")
            #expect(fields.contains("7:http.methd"), "\(fields)")
            let messages = problems.compactMap { $0["message"] as? String }.joined(separator: "\n")
            #expect(messages.contains("unknown name \"inputs\""), "\(messages)")
            #expect(messages.contains("did you mean \"method\""), "\(messages)")

            let cases: [String] = [
                broken,
                "",
                "tool: x\nkind: sql\nside_effects: none",
                "tool: x\nkind: python\nside_effects: none",
                "tool: x\nkind: python\nside_effects: none\npython: { code: 'print(1)', limits: { memory_mb: 1 } }",
                "tool: x\nkind: http\nside_effects: none\nhttp: { url: 'ftp://x' }",
                "tool: x\nkind: echo\nhttp: { url: 'https://x' }",
                "tool: 'bad name'\nkind: echo",
                "a: &a [1,1,1,1,1,1,1,1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d]\nf: [*e,*e,*e,*e,*e,*e,*e,*e]",
            ]
            for source in cases {
                let refused = try await cluster.http.send(.POST, "\(base)/apply", token: admin, json: ["source": source])
                #expect(refused.status == 400, "\(source): \(refused.text)")
                #expect(refused.errorField == "source", "\(source): \(refused.text)")
            }
            #expect(try await TestStores.count(cluster, service: "tool", table: "tools") == 0)
        }
    }

    @Test("invoke: the input is checked against the schema; the same idempotency key returns the stored result; another input under it is refused", arguments: TestBackend.all)
    func invokeEcho(backend: TestBackend) async throws {
        try await TestCluster.run(backend: backend) { cluster in
            let admin = try await cluster.adminToken()
            let project = try await cluster.createProject("calls", token: admin)
            let base = "/api/v1/projects/\(project)/tools"
            try #require(try await cluster.http.send(.POST, "\(base)/apply", token: admin, json: ["source": Self.echo]).status == 200)

            let call = try await cluster.http.send(.POST, "\(base)/repeat/invoke", token: admin, json: ["input": ["name": "Ada", "count": 2], "idempotencyKey": "run-1/step/1"])
            try #require(call.status == 200, "\(call.text)")
            #expect((call.json["output"] as? [String: Any])?["name"] as? String == "Ada")
            #expect((call.json["output"] as? [String: Any])?["count"] as? Int == 2)
            #expect(call.json["replayed"] as? Bool != true)
            let invocation = try #require(call.json["invocationId"] as? String)

            let replay = try await cluster.http.send(.POST, "\(base)/repeat/invoke", token: admin, json: ["input": ["count": 2, "name": "Ada"], "idempotencyKey": "run-1/step/1"])
            #expect(replay.status == 200)
            #expect(replay.json["replayed"] as? Bool == true)
            #expect(replay.json["invocationId"] as? String == invocation)

            let conflict = try await cluster.http.send(.POST, "\(base)/repeat/invoke", token: admin, json: ["input": ["name": "Bob"], "idempotencyKey": "run-1/step/1"])
            #expect(conflict.status == 409)
            #expect(conflict.errorField == "idempotencyKey")

            // Without a key every call runs.
            let one = try await cluster.http.send(.POST, "\(base)/repeat/invoke", token: admin, json: ["input": ["name": "Ada"]])
            let two = try await cluster.http.send(.POST, "\(base)/repeat/invoke", token: admin, json: ["input": ["name": "Ada"]])
            #expect(one.json["invocationId"] as? String != two.json["invocationId"] as? String)
            #expect(try await TestStores.count(cluster, service: "tool", table: "invocations") == 3)

            // Sent at once under one new key: one call runs, and the others answer with its
            // result or, while it still runs, 409 ABORTED to ask again; none fails otherwise.
            let answers = try await withThrowingTaskGroup(of: (Int, String?, Bool).self) { group in
                for _ in 0 ..< 8 {
                    group.addTask {
                        let sent = try await cluster.http.send(.POST, "\(base)/repeat/invoke", token: admin, json: ["input": ["name": "Eve"], "idempotencyKey": "run-2/step/1"])
                        return (sent.status, sent.json["invocationId"] as? String, sent.json["replayed"] as? Bool == true)
                    }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            #expect(answers.allSatisfy { $0.0 == 200 || $0.0 == 409 }, "\(answers)")
            let ran = answers.filter { $0.0 == 200 && !$0.2 }
            #expect(ran.count == 1, "the key ran once: \(answers)")
            #expect(Set(answers.compactMap(\.1)).count == 1, "every answer names the same call: \(answers)")
            #expect(try await TestStores.count(cluster, service: "tool", table: "invocations") == 4)
            let settled = try await cluster.http.send(.POST, "\(base)/repeat/invoke", token: admin, json: ["input": ["name": "Eve"], "idempotencyKey": "run-2/step/1"])
            #expect(settled.status == 200 && settled.json["replayed"] as? Bool == true, "\(settled.text)")
            #expect(settled.json["invocationId"] as? String == ran.first?.1)

            let bad: [([String: Any], String)] = [
                (["input": ["count": 1]], "input.name"),
                (["input": ["name": ""]], "input.name"),
                (["input": ["name": "x", "count": -1]], "input.count"),
                (["input": ["name": "x", "colour": "red"]], "input.colour"),
                (["input": "text"], "input"),
                (["input": ["name": "x"], "idempotencyKey": "has space"], "idempotencyKey"),
                (["input": ["name": "x"], "timeoutMs": -5], "timeoutMs"),
            ]
            for (body, field) in bad {
                let refused = try await cluster.http.send(.POST, "\(base)/repeat/invoke", token: admin, json: body)
                #expect(refused.status == 400, "\(body): \(refused.text)")
                #expect(refused.errorField == field, "\(body): \(refused.text)")
            }
            #expect(try await cluster.http.send(.POST, "\(base)/nothing/invoke", token: admin, json: ["input": [:]]).status == 404)
            // A tool of another project is not found through this one.
            let other = try await cluster.createProject("elsewhere", token: admin)
            #expect(try await cluster.http.send(.POST, "/api/v1/projects/\(other)/tools/repeat/invoke", token: admin, json: ["input": ["name": "x"]]).status == 404)
            #expect(try await TestStores.count(cluster, service: "tool", table: "invocations") == 4)
        }
    }

    @Test("a secret bound to hosts goes to those hosts only: a tool sending it elsewhere is refused when written and when run, nothing sent", arguments: TestBackend.all)
    func secretHosts(backend: TestBackend) async throws {
        let server = try await HTTPEchoServer.start()
        defer { Task { try? await server.stop() } }
        try await TestCluster.run(backend: backend, overrides: ["tool.outboundAllow": "127.0.0.1:\(server.port),localhost:\(server.port)"]) { cluster in
            let admin = try await cluster.adminToken()
            let project = try await cluster.createProject("bound", token: admin)
            let base = "/api/v1/projects/\(project)"
            let put = try await cluster.http.send(.PUT, "\(base)/secrets/api-token", token: admin, json: ["value": "tok-123456", "hosts": ["127.0.0.1", "*.example.com"]])
            #expect(put.status == 200, "\(put.text)")
            #expect(put.json["hosts"] as? [String] == ["127.0.0.1", "*.example.com"], "\(put.text)")
            for (hosts, field) in [(["bad host"], "hosts[0]"), (["ok.example.com", "a..b"], "hosts[1]"), (Array(repeating: "h.example.com", count: 51), "hosts")] {
                let refused = try await cluster.http.send(.PUT, "\(base)/secrets/other", token: admin, json: ["value": "v-123456", "hosts": hosts])
                #expect(refused.status == 400 && refused.errorField == field, "\(hosts): \(refused.text)")
            }
            func tool(_ name: String, _ url: String) -> String {
                "tool: \(name)\nkind: http\nside_effects: none\nhttp: { url: \"\(url)\", auth: { secret: api-token, scheme: header, header: X-Token } }\n"
            }
            // Written to the allowed host: taken, and the value is sent there.
            try #require(try await cluster.http.send(.POST, "\(base)/tools/apply", token: admin, json: ["source": tool("good", "http://127.0.0.1:\(server.port)/ok")]).status == 200)
            let good = try await cluster.http.send(.POST, "\(base)/tools/good/invoke", token: admin, json: ["input": [:]])
            #expect(good.status == 200 && good.json["error"] == nil, "\(good.text)")
            // Written to another host: refused, naming the secret and its hosts.
            let elsewhere = try await cluster.http.send(.POST, "\(base)/tools/apply", token: admin, json: ["source": tool("leak", "http://localhost:\(server.port)/steal")])
            #expect(elsewhere.status == 400 && elsewhere.errorField == "source", "\(elsewhere.text)")
            #expect(elsewhere.errorMessage?.contains("the secret api-token may be sent to 127.0.0.1, *.example.com only, not localhost") == true, "\(elsewhere.text)")
            // A host chosen when run: refused then, before anything is sent.
            try #require(try await cluster.http.send(.POST, "\(base)/tools/apply", token: admin, json: ["source": tool("chosen", "http://${{ input.host }}:\(server.port)/steal") + "input_schema: { type: object, properties: { host: { type: string } }, required: [host] }\n"]).status == 200)
            let before = server.requests
            let stolen = try await cluster.http.send(.POST, "\(base)/tools/chosen/invoke", token: admin, json: ["input": ["host": "localhost"]])
            #expect((stolen.json["error"] as? [String: Any])?["reason"] as? String == "secret_refused", "\(stolen.text)")
            #expect(server.requests == before, "a request was sent")
            #expect(!stolen.text.contains("tok-123456"))
            // Listed with its hosts; a secret without hosts goes anywhere, as before.
            let listed = try await cluster.http.send(.GET, "\(base)/secrets", token: admin)
            #expect((listed.json["secrets"] as? [[String: Any]])?.first?["hosts"] as? [String] == ["127.0.0.1", "*.example.com"], "\(listed.text)")
        }
    }

    @Test("a tool's output, logs and error never carry a secret value of the project: each becomes [secret NAME]", arguments: TestBackend.all)
    func outputsScrubbed(backend: TestBackend) async throws {
        try await TestCluster.run(backend: backend) { cluster in
            let admin = try await cluster.adminToken()
            let project = try await cluster.createProject("scrubbed", token: admin)
            let base = "/api/v1/projects/\(project)"
            let value = "sk-live-0123456789abcdef"
            try #require(try await cluster.http.send(.PUT, "\(base)/secrets/api-token", token: admin, json: ["value": value]).status == 200)
            try #require(try await cluster.http.send(.PUT, "\(base)/secrets/pin", token: admin, json: ["value": "1234"]).status == 200)
            let applied = try await cluster.http.send(.POST, "\(base)/tools/apply", token: admin, json: ["source": """
                tool: leaky
                kind: python
                side_effects: none
                python:
                  code: |
                    import json, sys
                    text = json.load(sys.stdin)["text"]
                    sys.stderr.write("log: " + text + "\\n")
                    print(json.dumps({"echo": text, "nested": [{"again": text}], text: 1, "pin": "1234"}))
                """])
            try #require(applied.status == 200, "\(applied.text)")
            let reply = try await cluster.http.send(.POST, "\(base)/tools/leaky/invoke", token: admin, json: ["input": ["text": "token=\(value)!"]])
            #expect(reply.status == 200, "\(reply.text)")
            #expect(!reply.text.contains(value), "\(reply.text)")
            let output = try #require(reply.json["output"] as? [String: Any], "\(reply.text)")
            #expect(output["echo"] as? String == "token=[secret api-token]!")
            #expect(((output["nested"] as? [[String: Any]])?.first?["again"]) as? String == "token=[secret api-token]!")
            #expect(output["token=[secret api-token]!"] != nil)
            // Values shorter than six characters are left alone: they would blank out ordinary text.
            #expect(output["pin"] as? String == "1234")
            #expect((reply.json["logs"] as? String)?.contains("[secret api-token]") == true, "\(reply.text)")

            // A secret set (or changed) now is scrubbed from the next call at once.
            let fresh = "rotated-value-98765"
            try #require(try await cluster.http.send(.PUT, "\(base)/secrets/api-token", token: admin, json: ["value": fresh]).status == 200)
            let again = try await cluster.http.send(.POST, "\(base)/tools/leaky/invoke", token: admin, json: ["input": ["text": fresh]])
            #expect(!again.text.contains(fresh), "\(again.text)")
        }
    }

    @Test("secrets are write-only: no route reads one back, the database holds ciphertext, and only admins write them", arguments: TestBackend.all)
    func secrets(backend: TestBackend) async throws {
        try await TestCluster.run(backend: backend) { cluster in
            let admin = try await cluster.adminToken()
            let project = try await cluster.createProject("vault", token: admin)
            let base = "/api/v1/projects/\(project)/secrets"
            let value = "sk-live-0123456789abcdef"
            let put = try await cluster.http.send(.PUT, "\(base)/api-token", token: admin, json: ["value": value])
            try #require(put.status == 200, "\(put.text)")
            #expect(put.json["name"] as? String == "api-token")
            #expect(!put.text.contains(value))
            let list = try await cluster.http.send(.GET, base, token: admin)
            #expect((list.json["secrets"] as? [[String: Any]])?.compactMap { $0["name"] as? String } == ["api-token"])
            #expect(!list.text.contains(value))

            // No way to read a value: GET on a secret is not a route.
            let read = try await cluster.http.send(.GET, "\(base)/api-token", token: admin)
            #expect(read.status == 405)
            #expect(read.headers["Allow"].first?.contains("GET") == false)
            #expect(!read.text.contains(value))

            let sealed = try await TestStores.strings(cluster, service: "tool", query: "SELECT sealed FROM secrets", column: "sealed")
            #expect(sealed.count == 1)
            #expect(sealed.allSatisfy { !$0.contains(value) && !$0.contains("sk-live") })

            for (body, field) in [(["value": ""], "value"), (["value": String(repeating: "x", count: 40_000)], "value")] as [([String: Any], String)] {
                let refused = try await cluster.http.send(.PUT, "\(base)/api-token", token: admin, json: body)
                #expect(refused.errorField == field, "\(refused.text)")
            }
            #expect(try await cluster.http.send(.PUT, "\(base)/bad%20name", token: admin, json: ["value": "x"]).errorField == "name")

            let userID = try await cluster.createUser("editor@sparkops.test", adminToken: admin)
            _ = try await cluster.http.send(.POST, "/api/v1/projects/\(project)/members", token: admin, json: ["userId": userID, "role": "ROLE_EDITOR"])
            let editor = try #require(try await cluster.login(email: "editor@sparkops.test", password: "user-password-123")["accessToken"] as? String)
            #expect(try await cluster.http.send(.PUT, "\(base)/api-token", token: editor, json: ["value": "stolen"]).status == 403)
            #expect(try await cluster.http.send(.DELETE, "\(base)/api-token", token: editor).status == 403)
            #expect(try await cluster.http.send(.GET, base, token: editor).status == 200)

            #expect(try await cluster.http.send(.DELETE, "\(base)/api-token", token: admin).status == 200)
            #expect(try await cluster.http.send(.DELETE, "\(base)/api-token", token: admin).status == 404)
        }
    }

    @Test("roles: viewers read tools, runners invoke them, editors write them; outsiders see nothing")
    func roles() async throws {
        try await TestCluster.run(backend: .sqlite) { cluster in
            let admin = try await cluster.adminToken()
            let project = try await cluster.createProject("guarded", token: admin)
            let base = "/api/v1/projects/\(project)/tools"
            try #require(try await cluster.http.send(.POST, "\(base)/apply", token: admin, json: ["source": Self.echo]).status == 200)
            var tokens: [String: String] = [:]
            for role in ["viewer", "runner", "editor"] {
                let userID = try await cluster.createUser("\(role)@sparkops.test", adminToken: admin)
                _ = try await cluster.http.send(.POST, "/api/v1/projects/\(project)/members", token: admin, json: ["userId": userID, "role": "ROLE_\(role.uppercased())"])
                tokens[role] = try await cluster.login(email: "\(role)@sparkops.test", password: "user-password-123")["accessToken"] as? String
            }
            _ = try await cluster.createUser("outsider@sparkops.test", adminToken: admin)
            let outsider = try await cluster.login(email: "outsider@sparkops.test", password: "user-password-123")["accessToken"] as? String
            let invoke: [String: Any] = ["input": ["name": "x"]]
            #expect(try await cluster.http.send(.GET, "\(base)/repeat", token: tokens["viewer"]).status == 200)
            #expect(try await cluster.http.send(.POST, "\(base)/repeat/invoke", token: tokens["viewer"], json: invoke).status == 403)
            #expect(try await cluster.http.send(.POST, "\(base)/apply", token: tokens["viewer"], json: ["source": Self.echo]).status == 403)
            #expect(try await cluster.http.send(.POST, "\(base)/repeat/invoke", token: tokens["runner"], json: invoke).status == 200)
            #expect(try await cluster.http.send(.POST, "\(base)/apply", token: tokens["runner"], json: ["source": Self.echo]).status == 403)
            #expect(try await cluster.http.send(.POST, "\(base)/apply", token: tokens["editor"], json: ["source": Self.echo]).status == 200)
            #expect(try await cluster.http.send(.GET, "\(base)/repeat", token: outsider).status == 404)
            #expect(try await cluster.http.send(.POST, "\(base)/repeat/invoke", token: outsider, json: invoke).status == 404)
        }
    }
}

extension TestStores {
    /// One text column of every row a query returns, from a service's own database.
    static func strings(_ cluster: TestCluster, service: String, query: String, column: String) async throws -> [String] {
        let store = try SparkStore(service: service, location: cluster.hostConfig.storeLocation())
        return try await withThrowingTaskGroup(of: [String]?.self) { group in
            group.addTask {
                try await store.run()
                return nil
            }
            defer { group.cancelAll() }
            return try await store.sql { db in
                try await db.raw("\(unsafeRaw: query)").all().map { try $0.decode(column: column, as: String.self) }
            }
        }
    }
}
