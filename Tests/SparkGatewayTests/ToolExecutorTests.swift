import Foundation
import NIOHTTP1
import SparkKit
import SparkTesting
import Testing

/// The http, python and node executors, invoked through the gateway, on every backend. The http
/// tests reach only a loopback server that the cluster's allowlist names, by port; every other
/// target is refused before a packet is sent.
@Suite("Tool executors")
struct ToolExecutorTests {
    /// Applies `source` and returns the tools path of the project.
    static func apply(_ cluster: TestCluster, _ token: String, project: String, _ source: String) async throws {
        let applied = try await cluster.http.send(.POST, "/api/v1/projects/\(project)/tools/apply", token: token, json: ["source": source])
        try #require(applied.status == 200, "\(applied.text)")
    }

    static func invoke(_ cluster: TestCluster, _ token: String, project: String, _ tool: String, _ input: [String: Any] = [:]) async throws -> HTTPTestClient.Reply {
        try await cluster.http.send(.POST, "/api/v1/projects/\(project)/tools/\(tool)/invoke", token: token, json: ["input": input])
    }

    @Test("http: method, URL, query, headers and body from the input, auth from a secret, the response as output", arguments: TestBackend.all)
    func http(backend: TestBackend) async throws {
        let server = try await HTTPEchoServer.start()
        defer { Task { try? await server.stop() } }
        try await TestCluster.run(backend: backend, overrides: ["tool.outboundAllow": "127.0.0.1:\(server.port)"]) { cluster in
            let admin = try await cluster.adminToken()
            let project = try await cluster.createProject("web", token: admin)
            try await Self.apply(cluster, admin, project: project, """
                tool: post-item
                kind: http
                side_effects: non_idempotent
                input_schema: { type: object, properties: { id: { type: string }, q: { type: string } }, required: [id] }
                http:
                  method: POST
                  url: "\(server.baseURL)/items/${{ input.id }}"
                  query: { q: "${{ input.q }}" }
                  headers: { X-Trace: "t-${{ input.id }}" }
                  body: { id: "${{ input.id }}", tags: ["a", "${{ input.q }}"] }
                  auth: { secret: api-token, scheme: bearer }
                """)
            let missing = try await Self.invoke(cluster, admin, project: project, "post-item", ["id": "1", "q": "x"])
            #expect(missing.status == 200)
            #expect((missing.json["error"] as? [String: Any])?["reason"] as? String == "secret_missing")
            #expect(server.requests == 0)

            try #require(try await cluster.http.send(.PUT, "/api/v1/projects/\(project)/secrets/api-token", token: admin, json: ["value": "s3cret"]).status == 200)
            let reply = try await Self.invoke(cluster, admin, project: project, "post-item", ["id": "a/../b c", "q": "x&y=1+2"])
            try #require(reply.status == 200, "\(reply.text)")
            #expect(reply.json["error"] == nil, "\(reply.text)")
            let output = try #require(reply.json["output"] as? [String: Any])
            #expect(output["status"] as? Int == 200)
            let echoed = try #require(output["body"] as? [String: Any])
            #expect(echoed["method"] as? String == "POST")
            // The interpolated id is one path segment, encoded; the query value is encoded whole.
            #expect(echoed["path"] as? String == "/items/a%2F..%2Fb%20c" || echoed["path"] as? String == "/items/a/../b c", "\(echoed)")
            #expect((echoed["query"] as? [String: Any])?["q"] as? String == "x&y=1+2", "\(echoed)")
            let headers = try #require(echoed["headers"] as? [String: Any])
            // The server got the secret (it echoes what it received); the output does not carry it.
            #expect(headers["authorization"] as? String == "Bearer [secret api-token]")
            #expect(!reply.text.contains("s3cret"), "\(reply.text)")
            #expect(headers["x-trace"] as? String == "t-a/../b c")
            #expect(headers["content-type"] as? String == "application/json")
            let body = try #require((echoed["body"] as? String).flatMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) } as? [String: Any])
            #expect(body["id"] as? String == "a/../b c")
            #expect(body["tags"] as? [String] == ["a", "x&y=1+2"])

            // A 404 is a failure that still carries the response.
            try await Self.apply(cluster, admin, project: project, "tool: missing\nkind: http\nside_effects: none\nhttp: { url: \"\(server.baseURL)/status/404\" }")
            let notFound = try await Self.invoke(cluster, admin, project: project, "missing")
            #expect((notFound.json["error"] as? [String: Any])?["reason"] as? String == "http_status")
            #expect((notFound.json["output"] as? [String: Any])?["status"] as? Int == 404)

            // The response and the time are capped.
            try await Self.apply(cluster, admin, project: project, "tool: big\nkind: http\nside_effects: none\nhttp: { url: \"\(server.baseURL)/bytes?n=5000\", max_response_bytes: 1000 }")
            #expect((try await Self.invoke(cluster, admin, project: project, "big").json["error"] as? [String: Any])?["reason"] as? String == "output_limit")
            try await Self.apply(cluster, admin, project: project, "tool: slow\nkind: http\nside_effects: none\ntimeout: 300ms\nhttp: { url: \"\(server.baseURL)/slow?ms=3000\" }")
            #expect((try await Self.invoke(cluster, admin, project: project, "slow").json["error"] as? [String: Any])?["reason"] as? String == "timeout")
        }
    }

    @Test("http: loopback, private, link-local and metadata targets, a name for loopback, another port and a redirect to a private address are refused before connecting", arguments: TestBackend.all)
    func ssrf(backend: TestBackend) async throws {
        let server = try await HTTPEchoServer.start()
        defer { Task { try? await server.stop() } }
        try await TestCluster.run(backend: backend, overrides: ["tool.outboundAllow": "127.0.0.1:\(server.port)"]) { cluster in
            let admin = try await cluster.adminToken()
            let project = try await cluster.createProject("guarded", token: admin)
            let targets = [
                "http://127.0.0.1/", "http://127.0.0.1:\(server.port + 1)/", "http://[::1]:\(server.port)/", "http://10.0.0.1/",
                "http://169.254.169.254/latest/meta-data/", "http://localhost/", "http://[::ffff:127.0.0.1]/", "http://0.0.0.0:\(server.port)/",
            ]
            for (index, target) in targets.enumerated() {
                try await Self.apply(cluster, admin, project: project, "tool: t\(index)\nkind: http\nside_effects: none\nhttp: { url: \"\(target)\" }")
                let reply = try await Self.invoke(cluster, admin, project: project, "t\(index)")
                let error = try #require(reply.json["error"] as? [String: Any], "\(target): \(reply.text)")
                #expect(error["reason"] as? String == "outbound_refused", "\(target): \(reply.text)")
            }
            #expect(server.requests == 0)

            // The allowed server redirects to a private address: the redirect is checked again.
            let redirect = "\(server.baseURL)/redirect?to=http://10.0.0.1/admin"
            try await Self.apply(cluster, admin, project: project, "tool: hop\nkind: http\nside_effects: none\nhttp: { url: \"\(redirect)\" }")
            let hop = try await Self.invoke(cluster, admin, project: project, "hop")
            #expect((hop.json["error"] as? [String: Any])?["reason"] as? String == "outbound_refused", "\(hop.text)")
            #expect((hop.json["error"] as? [String: Any])?["message"] as? String == "10.0.0.1 is 10.0.0.1, a private address; only public addresses, or those the allowlist names, may be reached")
            #expect(server.requests == 1)

            // A tool's own allow list narrows where it may go.
            try await Self.apply(cluster, admin, project: project, "tool: narrow\nkind: http\nside_effects: none\nhttp: { url: \"\(server.baseURL)/\", allow: [api.example.com] }")
            #expect((try await Self.invoke(cluster, admin, project: project, "narrow").json["error"] as? [String: Any])?["reason"] as? String == "outbound_refused")
            #expect(server.requests == 1)
        }
    }

    static let bubblewrap = FileManager.default.isExecutableFile(atPath: "/usr/bin/bwrap")

    @Test("python and node: JSON in, JSON out; a missing package, bad output and a failing program each have their own reason", arguments: TestBackend.all)
    func programs(backend: TestBackend) async throws {
        try await TestCluster.run(backend: backend) { cluster in
            let admin = try await cluster.adminToken()
            let project = try await cluster.createProject("code", token: admin)
            try await Self.apply(cluster, admin, project: project, """
                tool: greet
                kind: python
                side_effects: none
                python:
                  code: |
                    import json, sys
                    data = json.load(sys.stdin)
                    print("working", file=sys.stderr)
                    print(json.dumps({"greeting": "hello " + data["name"], "n": len(data["name"])}))
                """)
            let greeting = try await Self.invoke(cluster, admin, project: project, "greet", ["name": "Ada"])
            try #require(greeting.json["error"] == nil, "\(greeting.text)")
            #expect((greeting.json["output"] as? [String: Any])?["greeting"] as? String == "hello Ada")
            #expect((greeting.json["output"] as? [String: Any])?["n"] as? Int == 3)
            #expect(greeting.json["logs"] as? String == "working\n")

            try await Self.apply(cluster, admin, project: project, """
                tool: shout
                kind: node
                side_effects: none
                node:
                  code: |
                    let text = ""
                    process.stdin.on("data", (chunk) => { text += chunk })
                    process.stdin.on("end", () => { const input = JSON.parse(text); console.log(JSON.stringify({ upper: input.word.toUpperCase() })) })
                """)
            let shout = try await Self.invoke(cluster, admin, project: project, "shout", ["word": "spark"])
            #expect((shout.json["output"] as? [String: Any])?["upper"] as? String == "SPARK", "\(shout.text)")

            let failing: [(String, String, String)] = [
                ("python", "import sys\nsys.exit(3)", "exit_status"),
                ("python", "print('not json')", "invalid_output"),
                ("python", "pass", "invalid_output"),
                ("node", "process.exit(4)", "exit_status"),
            ]
            for (index, (kind, code, reason)) in failing.enumerated() {
                try await Self.apply(cluster, admin, project: project, "tool: f\(index)\nkind: \(kind)\nside_effects: none\n\(kind):\n  code: \(Self.quoted(code))")
                let reply = try await Self.invoke(cluster, admin, project: project, "f\(index)")
                #expect((reply.json["error"] as? [String: Any])?["reason"] as? String == reason, "\(code): \(reply.text)")
            }
            try await Self.apply(cluster, admin, project: project, "tool: needs\nkind: python\nside_effects: none\npython:\n  code: print(1)\n  packages: [sparkops-no-such-package]")
            let needs = try await Self.invoke(cluster, admin, project: project, "needs")
            #expect((needs.json["error"] as? [String: Any])?["reason"] as? String == "package_missing", "\(needs.text)")
            #expect(((needs.json["error"] as? [String: Any])?["message"] as? String)?.contains("sparkops-no-such-package") == true)
        }
    }

    @Test("python that loops, sleeps, allocates 10 GB, fork-bombs, floods stdout or tries the network is stopped with its own reason, and the service stays healthy", arguments: TestBackend.all)
    func limits(backend: TestBackend) async throws {
        try await TestCluster.run(backend: backend) { cluster in
            let admin = try await cluster.adminToken()
            let project = try await cluster.createProject("hostile", token: admin)
            var cases: [(name: String, code: String, extra: String, reason: String)] = [
                ("spin", "while True:\n      pass", "timeout: 60s\n", "cpu_limit"),
                ("sleep", "import time\n    time.sleep(600)", "timeout: 1s\n", "timeout"),
                ("hog", "x = bytearray(10 * 1024 ** 3)\n    print(len(x))", "timeout: 60s\n", "memory_limit"),
                ("bomb", "import os\n    while True:\n      os.fork()", "timeout: 60s\n", "process_limit"),
                ("flood", "import sys\n    chunk = 'x' * 65536\n    for _ in range(16384):\n      sys.stdout.write(chunk)", "timeout: 60s\nmax_output_bytes: 1048576\n", "output_limit"),
            ]
            if Self.bubblewrap {
                cases.append(("net", "import socket\n    socket.create_connection(('192.0.2.1', 80), timeout=2)", "timeout: 60s\n", "network"))
            }
            for test in cases {
                try await Self.apply(cluster, admin, project: project, """
                    tool: \(test.name)
                    kind: python
                    side_effects: none
                    \(test.extra)python:
                      limits: { cpu_seconds: 1, memory_mb: 128, processes: \(test.name == "bomb" ? 8 : 64) }
                      code: |
                        \(test.code)
                    """)
                let reply = try await Self.invoke(cluster, admin, project: project, test.name)
                #expect(reply.status == 200, "\(test.name): \(reply.text)")
                #expect((reply.json["error"] as? [String: Any])?["reason"] as? String == test.reason, "\(test.name): \(reply.text)")
            }
            // Still serving.
            try await Self.apply(cluster, admin, project: project, "tool: ok\nkind: python\nside_effects: none\npython: { code: 'print(42)' }")
            #expect(try await Self.invoke(cluster, admin, project: project, "ok").json["output"] as? Int == 42)
            let health = try await HTTPTestClient(baseURL: "http://127.0.0.1:\(cluster.serviceAdminPorts[.tool]!)").send(.GET, "/readyz")
            #expect(health.status == 200)
        }
    }

    @Test("calls one after another leave no zombie behind to eat the process limit")
    func noZombies() async throws {
        try #require(Self.bubblewrap, "bubblewrap is installed by .ci/run and make deps")
        try await TestCluster.run(backend: .sqlite) { cluster in
            let admin = try await cluster.adminToken()
            let project = try await cluster.createProject("reaped", token: admin)
            // Three processes at most while it runs (bubblewrap, its init, python): a zombie
            // left by each call would stop the second or third.
            try await Self.apply(cluster, admin, project: project, "tool: tight\nkind: python\nside_effects: none\npython:\n  code: 'print(7)'\n  limits: { processes: 4 }")
            for call in 0 ..< 12 {
                let reply = try await Self.invoke(cluster, admin, project: project, "tight")
                #expect(reply.json["output"] as? Int == 7, "call \(call): \(reply.text)")
            }
        }
    }

    @Test("the sandbox: no network, the user nobody, a read-only root without SparkOps's home, a private /tmp")
    func sandbox() async throws {
        try #require(Self.bubblewrap, "bubblewrap is installed by .ci/run and make deps")
        try await TestCluster.run(backend: .sqlite) { cluster in
            let admin = try await cluster.adminToken()
            let project = try await cluster.createProject("jail", token: admin)
            try await Self.apply(cluster, admin, project: project, """
                tool: probe
                kind: python
                side_effects: none
                input_schema: { type: object, properties: { home: { type: string } } }
                python:
                  code: |
                    import json, os, sys
                    home = json.load(sys.stdin)["home"]
                    def attempt(f):
                        try:
                            f()
                            return "ok"
                        except Exception as e:
                            return type(e).__name__
                    open("/tmp/scratch", "w").write("x")
                    import ctypes
                    libc = ctypes.CDLL(None, use_errno=True)
                    print(json.dumps({
                        # unshare(CLONE_NEWUSER): a user namespace inside the sandbox's own.
                        "userns": "ok" if libc.unshare(0x10000000) == 0 else "refused",
                        "uid": os.getuid(),
                        "write_usr": attempt(lambda: open("/usr/sparkops-probe", "w")),
                        "home_visible": os.path.exists(home),
                        "tmp": os.listdir("/tmp"),
                    }))
                """)
            let reply = try await Self.invoke(cluster, admin, project: project, "probe", ["home": cluster.home])
            let output = try #require(reply.json["output"] as? [String: Any], "\(reply.text)")
            #expect(output["userns"] as? String == "refused", "\(output)")
            #expect(output["uid"] as? Int == 65534)
            #expect(output["write_usr"] as? String != "ok")
            #expect(output["home_visible"] as? Bool == false)
            #expect(Set(output["tmp"] as? [String] ?? []) == ["main.py", "scratch"])
        }
    }

    @Test(
        "without bubblewrap: each call has a private 0700 folder, removed after, and what the program left running ends with the call",
        .enabled(if: getuid() == 0, "each program slot gets a user of its own only when the tool service runs as root")
    )
    func unsandboxedCallsAreSealed() async throws {
        try await TestCluster.run(backend: .sqlite, overrides: ["tool.sandbox": "none"]) { cluster in
            let admin = try await cluster.adminToken()
            let project = try await cluster.createProject("sealed", token: admin)
            try await Self.apply(cluster, admin, project: project, """
                tool: daemon
                kind: python
                side_effects: none
                python:
                  code: |
                    import json, os, stat, time
                    here = os.path.dirname(os.path.abspath(__file__))
                    read, write = os.pipe()
                    child = os.fork()
                    if child == 0:
                        os.setsid()
                        grandchild = os.fork()
                        if grandchild == 0:
                            null = os.open(os.devnull, os.O_RDWR)
                            for fd in (0, 1, 2):
                                os.dup2(null, fd)
                            time.sleep(120)
                            os._exit(0)
                        os.write(write, str(grandchild).encode())
                        os._exit(0)
                    os.waitpid(child, 0)
                    daemon = int(os.read(read, 32))
                    print(json.dumps({
                        "folder": here,
                        "folder_mode": stat.S_IMODE(os.stat(here).st_mode),
                        "file_mode": stat.S_IMODE(os.stat(os.path.abspath(__file__)).st_mode),
                        "owner": os.stat(here).st_uid,
                        "uid": os.getuid(),
                        "daemon": daemon,
                    }))
                  limits: { processes: 8 }
                """)
            let reply = try await Self.invoke(cluster, admin, project: project, "daemon")
            let output = try #require(reply.json["output"] as? [String: Any], "\(reply.text)")
            #expect(output["folder_mode"] as? Int == 0o700, "\(output)")
            #expect((output["file_mode"] as? Int ?? 0o777) & 0o077 == 0, "\(output)")
            #expect(output["owner"] as? Int == output["uid"] as? Int)
            #expect(output["uid"] as? Int != 0)
            let folder = try #require(output["folder"] as? String)
            #expect(!FileManager.default.fileExists(atPath: folder), "\(folder) is still there")
            let daemon = try #require(output["daemon"] as? Int)
            // Killed with the call; reaped (it was the service's orphan) within a moment.
            let deadline = ContinuousClock.now + .seconds(10)
            while FileManager.default.fileExists(atPath: "/proc/\(daemon)"), ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(50))
            }
            #expect(!FileManager.default.fileExists(atPath: "/proc/\(daemon)"), "the program's daemon \(daemon) outlived the call")
        }
    }

    static func quoted(_ code: String) -> String {
        "\"" + code.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"").replacingOccurrences(of: "\n", with: "\\n") + "\""
    }
}
