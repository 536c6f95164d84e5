import Foundation
import NIOHTTP1
import SQLKit
import SparkKit
import SparkTesting
import Testing

/// The `sparkops` command-line client against a running SparkOps, as a user types it.
@Suite("sparkops CLI")
struct CLITests {
    /// Runs `sparkops` with a private credentials file and the cluster's URL.
    struct CLI {
        let url: String
        let credentials: String

        func callAsFunction(_ arguments: String...) async throws -> (status: Int32, output: String) {
            try await ServiceProcess.run("sparkops", arguments, environment: ["SPARKOPS_URL": self.url, "SPARKOPS_CREDENTIALS": self.credentials])
        }

        /// Runs a command that reads `input` on stdin.
        func withInput(_ input: String, _ arguments: String...) async throws -> (status: Int32, output: String) {
            try await ServiceProcess.run("sparkops", arguments, environment: ["SPARKOPS_URL": self.url, "SPARKOPS_CREDENTIALS": self.credentials], input: input)
        }

        /// Runs a command with `--output json` and decodes what it printed.
        func json(_ arguments: String...) async throws -> [String: Any] {
            let result = try await ServiceProcess.run("sparkops", arguments + ["--output", "json"], environment: ["SPARKOPS_URL": self.url, "SPARKOPS_CREDENTIALS": self.credentials])
            let object = HTTPTestClient.Reply.object(result.output)
            guard result.status == 0, !object.isEmpty || result.output.trimmingCharacters(in: .whitespacesAndNewlines) == "{}" else {
                throw TestSetupError(description: "sparkops \(arguments.joined(separator: " ")) failed (\(result.status)): \(result.output)")
            }
            return object
        }
    }

    @Test("the session follows HOME and XDG_CONFIG_HOME; --project takes a name, SPARKOPS_PROJECT and `project use` set a default")
    func homesAndProjects() async throws {
        try await TestCluster.run(backend: .sqlite) { cluster in
            let home = "\(cluster.home)/home-\(UUID().uuidString.prefix(6))"
            let xdg = "\(cluster.home)/xdg-\(UUID().uuidString.prefix(6))"
            try FileManager.default.createDirectory(atPath: home, withIntermediateDirectories: true)
            func run(_ environment: [String: String], _ arguments: String...) async throws -> (status: Int32, output: String) {
                try await ServiceProcess.run("sparkops", arguments, environment: ["SPARKOPS_URL": cluster.baseURL, "HOME": home].merging(environment) { $1 })
            }
            // HOME, not the password database's home, holds the session.
            let login = try await run([:], "login", "--email", TestCluster.adminEmail, "--password", TestCluster.adminPassword)
            #expect(login.status == 0, "\(login.output)")
            #expect(FileManager.default.fileExists(atPath: "\(home)/.sparkops/credentials.json"))
            // XDG_CONFIG_HOME, when set, instead.
            let xdgLogin = try await run(["XDG_CONFIG_HOME": xdg], "login", "--email", TestCluster.adminEmail, "--password", TestCluster.adminPassword)
            #expect(xdgLogin.status == 0, "\(xdgLogin.output)")
            #expect(FileManager.default.fileExists(atPath: "\(xdg)/sparkops/credentials.json"))

            let created = try await run([:], "project", "create", "named-one", "--output", "json")
            let projectID = try #require((try JSONSerialization.jsonObject(with: Data(created.output.utf8)) as? [String: Any])?["id"] as? String, "\(created.output)")
            _ = try await run([:], "project", "create", "other-one")
            // Without any project: the command says how to give one.
            let none = try await run([:], "workflow", "list")
            #expect(none.status != 0)
            #expect(none.output.contains("sparkops project use"), "\(none.output)")
            // By name, and by id.
            #expect(try await run([:], "workflow", "list", "--project", "named-one").status == 0)
            #expect(try await run([:], "workflow", "list", "--project", projectID).status == 0)
            let unknown = try await run([:], "workflow", "list", "--project", "no-such-project")
            #expect(unknown.status != 0)
            #expect(unknown.output.contains("no project named \"no-such-project\""), "\(unknown.output)")
            // SPARKOPS_PROJECT.
            #expect(try await run(["SPARKOPS_PROJECT": "named-one"], "workflow", "list").status == 0)
            // `project use`: saved, then the default of later commands; --project still wins.
            let use = try await run([:], "project", "use", "named-one")
            #expect(use.status == 0, "\(use.output)")
            #expect(FileManager.default.fileExists(atPath: "\(home)/.sparkops/config.json"))
            let keys = try await run([:], "apikey", "create", "--name", "from-default", "--role", "viewer", "--output", "json")
            #expect(keys.status == 0, "\(keys.output)")
            #expect(keys.output.contains(projectID), "\(keys.output)")
            let elsewhere = try await run([:], "apikey", "list", "--project", "other-one", "--output", "json")
            #expect(elsewhere.status == 0 && !elsewhere.output.contains("from-default"), "\(elsewhere.output)")
        }
    }

    @Test("log in, create a project, add a member, create, list and revoke API keys")
    func projectLifecycle() async throws {
        try await TestCluster.run(backend: .sqlite) { cluster in
            let credentials = "\(cluster.home)/cli/credentials.json"
            let cli = CLI(url: cluster.baseURL, credentials: credentials)

            let notLoggedIn = try await cli("project", "list")
            #expect(notLoggedIn.status != 0)
            #expect(notLoggedIn.output.contains("not logged in"))

            let wrong = try await cli("login", "--email", TestCluster.adminEmail, "--password", "not-the-password")
            #expect(wrong.status != 0)
            #expect(wrong.output.contains("UNAUTHENTICATED"))
            #expect(!FileManager.default.fileExists(atPath: credentials))

            let login = try await cli("login", "--email", TestCluster.adminEmail, "--password", TestCluster.adminPassword)
            #expect(login.status == 0, "\(login.output)")
            let mode = try FileManager.default.attributesOfItem(atPath: credentials)[.posixPermissions] as? NSNumber
            #expect(mode?.intValue == 0o600)

            let project = try await cli.json("project", "create", "from-the-cli", "--description", "made by sparkops")
            let projectID = try #require(project["id"] as? String)
            #expect(project["description"] as? String == "made by sparkops")
            let listed = try await cli.json("project", "list")
            #expect((listed["projects"] as? [[String: Any]])?.contains { $0["id"] as? String == projectID } == true)
            let table = try await cli("project", "get", projectID)
            #expect(table.output.contains("from-the-cli"))
            #expect(table.output.hasPrefix("ID"))

            let admin = try await cluster.adminToken()
            let userID = try await cluster.createUser("member@sparkops.test", adminToken: admin)
            let member = try await cli.json("member", "add", "--project", projectID, "--email", "member@sparkops.test", "--role", "runner")
            #expect(member["userId"] as? String == userID)
            #expect(member["role"] as? String == "ROLE_RUNNER")

            let created = try await cli.json("apikey", "create", "--project", projectID, "--name", "ci", "--role", "viewer")
            let key = try #require(created["key"] as? String)
            let keyID = try #require((created["apiKey"] as? [String: Any])?["id"] as? String)
            let keys = try await cli.json("apikey", "list", "--project", projectID)
            #expect((keys["apiKeys"] as? [[String: Any]])?.map { $0["id"] as? String } == [keyID])
            #expect(!(String(describing: keys).contains(key)))

            // The key works on its own, then stops working once revoked.
            let withKey = try await cli("project", "get", projectID, "--api-key", key)
            #expect(withKey.status == 0, "\(withKey.output)")
            let revoked = try await cli.json("apikey", "revoke", "--project", projectID, keyID)
            #expect(revoked["revokeTime"] != nil)
            let afterRevoke = try await cli("project", "get", projectID, "--api-key", key)
            #expect(afterRevoke.status != 0)
            #expect(afterRevoke.output.contains("UNAUTHENTICATED"))

            let logout = try await cli("logout")
            #expect(logout.status == 0)
            #expect(!FileManager.default.fileExists(atPath: credentials))
        }
    }

    @Test("bad input: the CLI and the gateway name the option or field at fault")
    func badInput() async throws {
        try await TestCluster.run(backend: .sqlite) { cluster in
            let cli = CLI(url: cluster.baseURL, credentials: "\(cluster.home)/cli/credentials.json")
            #expect(try await cli("login", "--email", TestCluster.adminEmail, "--password", TestCluster.adminPassword).status == 0)
            let projectID = try await cli.json("project", "create", "bad-input")["id"] as! String

            let role = try await cli("apikey", "create", "--project", projectID, "--name", "x", "--role", "wizard")
            #expect(role.status != 0)
            #expect(role.output.contains("--role must be one of"))

            let ttl = try await cli("apikey", "create", "--project", projectID, "--name", "x", "--ttl-days", "5000")
            #expect(ttl.status != 0)
            #expect(ttl.output.contains("INVALID_ARGUMENT"))
            #expect(ttl.output.contains("ttl"))
            // The field once, not `ttlDays: ttlDays: …`.
            #expect(!ttl.output.contains("ttlDays: ttlDays:"), "\(ttl.output)")

            // An option is named as the user typed it, not as the API calls it.
            let since = try await cli("run", "list", "--project", projectID, "--since", "yesterday")
            #expect(since.status != 0)
            #expect(since.output.contains("--since"), "\(since.output)")
            #expect(!since.output.contains("createdAfter"), "\(since.output)")

            let both = try await cli("member", "add", "--project", projectID, "--email", "a@b.c", "--user-id", "usr_x", "--role", "viewer")
            #expect(both.status != 0)
            #expect(both.output.contains("--email or --user-id"))

            let badID = try await cli("project", "get", "not-an-id")
            #expect(badID.status != 0)
            #expect(badID.output.contains("INVALID_ARGUMENT") || badID.output.contains("NOT_FOUND"))

            let duplicate = try await cli("project", "create", "bad-input")
            #expect(duplicate.status != 0)
            #expect(duplicate.output.contains("ALREADY_EXISTS"))

            let unreachable = try await ServiceProcess.run(
                "sparkops", ["project", "list", "--url", "http://127.0.0.1:9"],
                environment: ["SPARKOPS_CREDENTIALS": "\(cluster.home)/cli/credentials.json"]
            )
            #expect(unreachable.status != 0)
            #expect(unreachable.output.contains("cannot reach http://127.0.0.1:9"))
        }
    }

    @Test("sparkops user unthrottle lets a throttled email sign in again at once")
    func unthrottle() async throws {
        try await TestCluster.run(backend: .sqlite, overrides: ["project.loginFailureLimit": "1"]) { cluster in
            let cli = CLI(url: cluster.baseURL, credentials: "\(cluster.home)/cli/credentials.json")
            #expect(try await cli("login", "--email", TestCluster.adminEmail, "--password", TestCluster.adminPassword).status == 0)
            _ = try await cluster.createUser("paused@sparkops.test", adminToken: try await cluster.adminToken())
            let notThrottled = try await cli("user", "unthrottle", "--email", "paused@sparkops.test")
            #expect(notThrottled.status == 0)
            #expect(notThrottled.output.contains("was not throttled"))

            #expect(try await cluster.http.send(.POST, "/api/v1/auth/login", json: ["email": "paused@sparkops.test", "password": "wrong-password-x"]).status == 401)
            // Stretch the pause to ten minutes, so that only the command can end it within the test.
            try await cluster.withProjectStore { store in
                try await store.sql { db in
                    try await db.raw("UPDATE login_failures SET blocked_until = \(bind: Int64(Date().timeIntervalSince1970 * 1_000_000) + 600_000_000) WHERE email = 'paused@sparkops.test'").run()
                }
            }
            let paused = try await cluster.http.send(.POST, "/api/v1/auth/login", json: ["email": "paused@sparkops.test", "password": "user-password-123"])
            #expect(paused.status == 429)
            #expect(Int(paused.headers.first(name: "Retry-After") ?? "") ?? 0 > 500)

            let cleared = try await cli("user", "unthrottle", "--email", "paused@sparkops.test")
            #expect(cleared.status == 0, "\(cleared.output)")
            #expect(cleared.output.contains("cleared 1 failed sign-ins"))
            #expect(try await cluster.http.send(.POST, "/api/v1/auth/login", json: ["email": "paused@sparkops.test", "password": "user-password-123"]).status == 200)

            let badEmail = try await cli("user", "unthrottle", "--email", "nobody")
            #expect(badEmail.status != 0)
            #expect(badEmail.output.contains("email"))
        }
    }

    @Test("sparkops apply, workflow validate, list and get")
    func workflows() async throws {
        try await TestCluster.run(backend: .sqlite, overrides: ["agent.allowUnpricedModels": "true"]) { cluster in
            let cli = CLI(url: cluster.baseURL, credentials: "\(cluster.home)/cli/credentials.json")
            #expect(try await cli("login", "--email", TestCluster.adminEmail, "--password", TestCluster.adminPassword).status == 0)
            let project = try await cli.json("project", "create", "with-workflows")["id"] as! String
            let tool = try await cluster.http.send(.POST, "/api/v1/projects/\(project)/tools/apply", token: try await cluster.adminToken(), json: ["source": "tool: http-get\nkind: echo"])
            #expect(tool.status == 200, "\(tool.text)")
            let agent = try await cluster.http.send(.POST, "/api/v1/projects/\(project)/agents/apply", token: try await cluster.adminToken(), json: ["source": "agent: summarizer\nprovider: openai\nmodel: gpt-4o-mini"])
            #expect(agent.status == 200, "\(agent.text)")
            let directory = "\(cluster.home)/flows"
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            let good = "name: nightly\nsteps:\n  - id: fetch\n    tool: http-get\n  - id: sum\n    agent: summarizer\n    needs: [fetch]\n    with: { prompt: \"Sum up ${{ steps.fetch.output }}\" }\n"
            try good.write(toFile: "\(directory)/nightly.yaml", atomically: true, encoding: .utf8)
            let bad = "\(cluster.home)/bad.yaml"
            try "name: bad\nsteps:\n  - id: a\n    tool: t\n    neds: [b]\n".write(toFile: bad, atomically: true, encoding: .utf8)

            let invalid = try await cli("workflow", "validate", "-f", bad, "--project", project)
            #expect(invalid.status != 0)
            #expect(invalid.output.contains("bad.yaml:5:5: steps[0].neds: unknown field \"neds\"; did you mean \"needs\"?"), "\(invalid.output)")
            let valid = try await cli("workflow", "validate", "-f", directory, "--project", project)
            #expect(valid.status == 0, "\(valid.output)")
            #expect(valid.output.contains("nightly.yaml: valid workflow (sha256:"), "\(valid.output)")

            let applied = try await cli("apply", "-f", directory, "--project", project)
            #expect(applied.status == 0, "\(applied.output)")
            #expect(applied.output.contains("created"))
            let again = try await cli("apply", "-f", directory, "--project", project)
            #expect(again.output.contains("unchanged"), "\(again.output)")
            let refused = try await cli("apply", "-f", bad, "--project", project)
            #expect(refused.status != 0)
            #expect(refused.output.contains("INVALID_ARGUMENT"))

            let listed = try await cli.json("workflow", "list", "--project", project)
            let workflows = listed["workflows"] as? [[String: Any]] ?? []
            #expect(workflows.map { $0["name"] as? String } == ["nightly"])
            let id = try #require(workflows.first?["id"] as? String)
            let source = try await cli("workflow", "get", id, "--project", project, "--version", "1")
            #expect(source.output.contains("# version 1, sha256:"))
            #expect(source.output.contains("agent: summarizer"))
            let missing = try await cli("apply", "-f", "\(cluster.home)/nowhere", "--project", project)
            #expect(missing.status != 0)
            #expect(missing.output.contains("does not exist"))

            // A file's documents are one set: its workflow may use the tool defined above it,
            // on a project that does not have that tool yet.
            let combined = "\(cluster.home)/combined.yaml"
            try "tool: fresh-tool\nkind: echo\n---\nname: uses-fresh\nsteps:\n  - id: a\n    tool: fresh-tool\n".write(toFile: combined, atomically: true, encoding: .utf8)
            let together = try await cli("workflow", "validate", "-f", combined, "--project", project)
            #expect(together.status == 0, "\(together.output)")
            #expect(together.output.contains("valid workflow"), "\(together.output)")
            let alone = "\(cluster.home)/alone.yaml"
            try "name: uses-fresh\nsteps:\n  - id: a\n    tool: fresh-tool\n".write(toFile: alone, atomically: true, encoding: .utf8)
            let unknown = try await cli("workflow", "validate", "-f", alone, "--project", project)
            #expect(unknown.status != 0)
            #expect(unknown.output.contains("the project has no tool named \"fresh-tool\""), "\(unknown.output)")

            // An agent step's arguments are checked when written: a typo is refused with a hint.
            let typo = "\(cluster.home)/typo.yaml"
            try "name: typo\nsteps:\n  - id: sum\n    agent: summarizer\n    with: { promt: \"Sum up\" }\n".write(toFile: typo, atomically: true, encoding: .utf8)
            let refusedTypo = try await cli("workflow", "validate", "-f", typo, "--project", project)
            #expect(refusedTypo.status != 0)
            #expect(refusedTypo.output.contains("steps[0].with.promt: an agent step takes prompt and input, not \"promt\"; did you mean \"prompt\"?"), "\(refusedTypo.output)")
            #expect(refusedTypo.output.contains("an agent step needs with.prompt"), "\(refusedTypo.output)")
        }
    }

    @Test("sparkops apply with tools and workflows in one file, tool list and invoke, secret set and list")
    func tools() async throws {
        let server = try await HTTPEchoServer.start()
        defer { Task { try? await server.stop() } }
        try await TestCluster.run(backend: .sqlite, overrides: ["tool.outboundAllow": "127.0.0.1:\(server.port)"]) { cluster in
            let cli = CLI(url: cluster.baseURL, credentials: "\(cluster.home)/cli/credentials.json")
            #expect(try await cli("login", "--email", TestCluster.adminEmail, "--password", TestCluster.adminPassword).status == 0)
            let project = try #require(try await cli.json("project", "create", "with-tools")["id"] as? String)
            let file = "\(cluster.home)/stack.yaml"
            try """
                tool: greet
                kind: python
                side_effects: none
                input_schema: { type: object, properties: { name: { type: string } }, required: [name] }
                python:
                  code: |
                    import json, sys
                    print(json.dumps({"greeting": "hello " + json.load(sys.stdin)["name"]}))
                ---
                tool: whoami
                kind: http
                side_effects: none
                http:
                  url: "\(server.baseURL)/me"
                  auth: { secret: api-token, scheme: header, header: X-Api-Key }
                ---
                name: hello
                steps:
                  - id: greet
                    tool: greet
                    with: { name: "${{ inputs.who }}" }
                inputs: { who: string }
                """.write(toFile: file, atomically: true, encoding: .utf8)

            // Before the tools exist the file validates as one set: its workflow uses the tool it
            // defines above it, as `apply` will create them, in file order.
            let early = try await cli("tool", "validate", "-f", file, "--project", project)
            #expect(early.status == 0, "\(early.output)")
            #expect(early.output.contains("stack.yaml (document at line 10): valid tool"), "\(early.output)")
            #expect(!early.output.contains("the project has no tool named"), "\(early.output)")
            // Applied in file order, the tools come first and the workflow then finds them.
            let applied = try await cli.json("apply", "-f", file, "--project", project)
            let rows = applied["applied"] as? [[String: Any]] ?? []
            #expect(rows.map { "\($0["kind"] ?? "") \($0["name"] ?? "") \($0["outcome"] ?? "")" } == ["tool greet created", "tool whoami created", "workflow hello created"], "\(applied)")
            let validated = try await cli("workflow", "validate", "-f", file, "--project", project)
            #expect(validated.status == 0, "\(validated.output)")

            let listed = try await cli("tool", "list", "--project", project)
            #expect(listed.output.contains("greet") && listed.output.contains("python"), "\(listed.output)")
            let greeted = try await cli("tool", "invoke", "greet", "--project", project, "--input", #"{"name": "Ada"}"#)
            #expect(greeted.status == 0, "\(greeted.output)")
            #expect(greeted.output.contains(#""greeting": "hello Ada""#), "\(greeted.output)")
            let refused = try await cli("tool", "invoke", "greet", "--project", project, "--input", #"{"nom": "Ada"}"#)
            #expect(refused.status != 0)
            #expect(refused.output.contains("input.name: is required"), "\(refused.output)")

            // The secret goes in on stdin and comes back out only in the request the tool sends.
            let failed = try await cli("tool", "invoke", "whoami", "--project", project)
            #expect(failed.status == 1)
            #expect(failed.output.contains("tool failed (secret_missing)"), "\(failed.output)")
            let set = try await cli.withInput("k-123\n", "secret", "set", "api-token", "--project", project)
            #expect(set.status == 0, "\(set.output)")
            #expect(!set.output.contains("k-123"))
            let secrets = try await cli("secret", "list", "--project", project)
            #expect(secrets.output.contains("api-token") && !secrets.output.contains("k-123"))
            let whoami = try await cli.json("tool", "invoke", "whoami", "--project", project)
            let headers = ((whoami["output"] as? [String: Any])?["body"] as? [String: Any])?["headers"] as? [String: Any]
            #expect(headers?["x-api-key"] as? String == "k-123", "\(whoami)")
            let key = try await cli("secret", "new-master-key")
            #expect(key.output.range(of: #"^k\d+:[A-Za-z0-9+/]{43}=\n$"#, options: .regularExpression) != nil, "\(key.output)")
        }
    }

    @Test("sparkops apply routes agents to the agent service; agent list, validate and run print the answer and exit 1 when the step failed")
    func agents() async throws {
        let llm = try await FakeLLMServer.start()
        defer { Task { try? await llm.stop() } }
        let catalog = """
            providers: [{ name: local, api: openai, base_url: "\(llm.baseURL)" }]
            models: [{ provider: local, name: "*", input_per_million: 1000000, output_per_million: 1000000 }]
            """
        try await TestCluster.run(backend: .sqlite, overrides: ["agent.catalog": catalog]) { cluster in
            let cli = CLI(url: cluster.baseURL, credentials: "\(cluster.home)/cli/credentials.json")
            #expect(try await cli("login", "--email", TestCluster.adminEmail, "--password", TestCluster.adminPassword).status == 0)
            let project = try #require(try await cli.json("project", "create", "with-agents")["id"] as? String)
            let file = "\(cluster.home)/agents.yaml"
            try """
                tool: shout
                kind: echo
                ---
                agent: crier
                provider: local
                model: tiny-1
                tools: [shout]
                ---
                name: cry
                steps:
                  - id: cry
                    agent: crier
                    with: { prompt: hello }
                """.write(toFile: file, atomically: true, encoding: .utf8)
            let applied = try await cli.json("apply", "-f", file, "--project", project)
            let rows = applied["applied"] as? [[String: Any]] ?? []
            #expect(rows.map { "\($0["kind"] ?? "") \($0["name"] ?? "") \($0["outcome"] ?? "")" } == ["tool shout created", "agent crier created", "workflow cry created"], "\(applied)")
            let listed = try await cli("agent", "list", "--project", project)
            #expect(listed.output.contains("crier") && listed.output.contains("tiny-1"), "\(listed.output)")
            let badFile = "\(cluster.home)/bad-agent.yaml"
            try "agent: loud\nprovider: local\nmodel: m\ntools: [whisper]\n".write(toFile: badFile, atomically: true, encoding: .utf8)
            let invalid = try await cli("agent", "validate", "-f", badFile, "--project", project)
            #expect(invalid.status == 1)
            #expect(invalid.output.contains("bad-agent.yaml:4:9: tools[0]: the project has no tool \"whisper\""), "\(invalid.output)")

            llm.enqueue(.toolCalls([.init(name: "shout", arguments: #"{"word":"hey"}"#)]), .text("HEY!"))
            let ran = try await cli("agent", "run", "crier", "--project", project, "--prompt", "Shout hey.", "--verbose")
            #expect(ran.status == 0, "\(ran.output)")
            #expect(ran.output.contains("HEY!"), "\(ran.output)")
            #expect(ran.output.contains("tool 1: shout"), "\(ran.output)")
            #expect(ran.output.contains("2 LLM calls, 1 tool calls, 200 tokens in, 40 out, $0.000240"), "\(ran.output)")
            llm.enqueue(.status(400, message: "model tiny-1 not found"))
            let failed = try await cli("agent", "run", "crier", "--project", project, "--prompt", "Again.", "--verbose")
            #expect(failed.status == 1)
            #expect(failed.output.contains("agent step failed (llm_error)") && failed.output.contains("model tiny-1 not found"), "\(failed.output)")
            // A call that got no answer shows zero tokens and why, not blanks.
            #expect(failed.output.contains("llm 1: tiny-1 0+0 tokens") && failed.output.contains("not sent or failed:"), "\(failed.output)")
        }
    }

    @Test("sparkops policy apply, list, get and test (--expect), a tool call held and one denied, violation list and get")
    func policies() async throws {
        try await TestCluster.run(backend: .sqlite) { cluster in
            let cli = CLI(url: cluster.baseURL, credentials: "\(cluster.home)/cli/credentials.json")
            #expect(try await cli("login", "--email", TestCluster.adminEmail, "--password", TestCluster.adminPassword).status == 0)
            let project = try #require(try await cli.json("project", "create", "governed")["id"] as? String)
            let file = "\(cluster.home)/governed.yaml"
            try """
                tool: pay
                kind: echo
                side_effects: non_idempotent
                ---
                policy: payments
                points: [tool.invoke]
                rules:
                  - name: large-payment
                    effect: require_approval
                    when: tool.name == "pay" && tool.arguments.amount > 100
                    message: Payments above 100 need an approver.
                  - name: no-refunds
                    effect: deny
                    when: '"refund" in tool.arguments && tool.arguments.refund == true'
                    message: Refunds go through support.
                """.write(toFile: file, atomically: true, encoding: .utf8)
            let applied = try await cli.json("apply", "-f", file, "--project", project)
            let rows = applied["applied"] as? [[String: Any]] ?? []
            #expect(rows.map { "\($0["kind"] ?? "") \($0["name"] ?? "") \($0["outcome"] ?? "")" } == ["tool pay created", "policy payments created"], "\(applied)")
            let listed = try await cli("policy", "list", "--project", project)
            #expect(listed.output.contains("payments") && listed.output.contains("tool.invoke"), "\(listed.output)")
            let shown = try await cli("policy", "get", "payments", "--project", project)
            #expect(shown.output.contains("large-payment") && shown.output.contains("require_approval"), "\(shown.output)")
            let neither = try await cli("policy", "list", "--project", project, "--global")
            #expect(neither.status != 0)

            let held = try await cli("policy", "test", "--project", project, "--point", "tool.invoke", "--context", #"{"tool": {"name": "pay", "arguments": {"amount": 250}}}"#, "--expect", "require_approval")
            #expect(held.status == 0, "\(held.output)")
            #expect(held.output.contains("require_approval: payments/large-payment: Payments above 100 need an approver."), "\(held.output)")
            let wrong = try await cli("policy", "test", "--project", project, "--point", "tool.invoke", "--context", #"{"tool": {"name": "pay", "arguments": {"amount": 5}}}"#, "--expect", "deny")
            #expect(wrong.status == 1, "\(wrong.output)")
            #expect(wrong.output.contains("allow:"), "\(wrong.output)")
            let unsaved = "\(cluster.home)/unsaved.yaml"
            try "policy: night\nrules:\n  - { name: no-nights, effect: deny, when: 'time.hour < 6' }\n".write(toFile: unsaved, atomically: true, encoding: .utf8)
            let night = try await cli("policy", "test", "--project", project, "--point", "llm.call", "-f", unsaved, "--at", "2026-12-02T03:00:00Z", "--expect", "deny")
            #expect(night.status == 0, "\(night.output)")

            let invoked = try await cli("tool", "invoke", "pay", "--project", project, "--input", #"{"amount": 250}"#)
            #expect(invoked.status == 1)
            #expect(invoked.output.contains("held for approval by payments/large-payment: Payments above 100 need an approver. (violation viol_"), "\(invoked.output)")
            let refused = try await cli("tool", "invoke", "pay", "--project", project, "--input", #"{"amount": 5, "refund": true}"#)
            #expect(refused.status != 0)
            #expect(refused.output.contains("payments/no-refunds: Refunds go through support."), "\(refused.output)")

            let violations = try await cli("violation", "list", "--project", project)
            #expect(violations.output.contains("deny") && violations.output.contains("payments/no-refunds"), "\(violations.output)")
            #expect(violations.output.contains("require_approval"), "\(violations.output)")
            let page = try await cli.json("violation", "list", "--project", project, "--effect", "deny")
            let id = try #require((page["violations"] as? [[String: Any]])?.first?["id"] as? String)
            let one = try await cli("violation", "get", id, "--project", project)
            #expect(one.output.contains("\"refund\": true"), "\(one.output)")
        }
    }
    @Test("sparkops budget set, list, get, usage --by, ledger and alerts; a tool call refused once the budget is spent; bad amounts")
    func budgets() async throws {
        try await TestCluster.run(backend: .sqlite) { cluster in
            let cli = CLI(url: cluster.baseURL, credentials: "\(cluster.home)/cli/credentials.json")
            #expect(try await cli("login", "--email", TestCluster.adminEmail, "--password", TestCluster.adminPassword).status == 0)
            let project = try #require(try await cli.json("project", "create", "thrifty")["id"] as? String)
            let file = "\(cluster.home)/paid.yaml"
            try "tool: paid\nkind: echo\ncost_micros: 300000\n".write(toFile: file, atomically: true, encoding: .utf8)
            #expect(try await cli("apply", "-f", file, "--project", project).status == 0)

            let created = try await cli("budget", "set", "tools", "--project", project, "--limit", "0.5", "--period", "total")
            #expect(created.status == 0, "\(created.output)")
            #expect(created.output.contains("created budget tools (bud_") && created.output.contains("$0.5"), "\(created.output)")
            let set = try await cli.json("budget", "set", "tools", "--project", project, "--limit", "0.75")
            #expect(set["created"] as? Bool != true)
            #expect((set["budget"] as? [String: Any])?["limitMicros"] as? String == "750000", "\(set)")

            #expect(try await cli("tool", "invoke", "paid", "--project", project, "--input", "{}").status == 0)
            #expect(try await cli("tool", "invoke", "paid", "--project", project, "--input", "{}").status == 0)
            let refused = try await cli("tool", "invoke", "paid", "--project", project, "--input", "{}")
            #expect(refused.status != 0)
            #expect(refused.output.contains("budget tools (total) has 150000 of its 750000 micro-USD left"), "\(refused.output)")

            let listed = try await cli("budget", "list", "--project", project)
            let row = try #require(listed.output.split(separator: "\n").first { $0.hasPrefix("tools") }, "\(listed.output)")
            #expect(row.contains("project") && row.contains("total") && row.contains("$0.75") && row.contains("$0.6") && row.contains("$0.15") && row.contains("80.0%"), "\(listed.output)")
            let usage = try await cli("budget", "usage", "tools", "--project", project, "--by", "tool")
            #expect(usage.output.contains("tools total: spent $0.6 + reserved $0 of $0.75 (80.0 %), $0.15 left"), "\(usage.output)")
            #expect(usage.output.contains("paid") && usage.output.contains("2"), "\(usage.output)")
            let ledger = try await cli.json("budget", "ledger", "tools", "--project", project)
            #expect((ledger["entries"] as? [[String: Any]])?.compactMap { $0["kind"] as? String } == ["settle", "reserve", "settle", "reserve"], "\(ledger)")
            let alerts = try await cli("budget", "alerts", "--project", project)
            #expect(alerts.output.contains("tools") && alerts.output.contains("80") && alerts.output.contains("50"), "\(alerts.output)")

            for bad in ["-1", "1.0000001", "five", "", "12345678901"] {
                let result = try await cli("budget", "set", "x", "--project", project, "--limit", bad)
                #expect(result.status != 0 && result.output.contains("--limit"), "\(bad): \(result.output)")
            }
            let badPeriod = try await cli("budget", "set", "y", "--project", project, "--limit", "1", "--period", "week")
            #expect(badPeriod.status != 0 && badPeriod.output.contains("period"), "\(badPeriod.output)")
            #expect(try await cli("budget", "delete", "tools", "--project", project).status == 0)
            #expect(try await cli("budget", "get", "tools", "--project", project).status != 0)
        }
    }
}
