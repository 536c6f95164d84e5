import Foundation
import NIOHTTP1
import SparkKit
import SparkTesting
import Testing

/// browser tools: a page loaded by headless Chromium as text, HTML or a screenshot, every
/// connection through the outbound guard; on every backend.
@Suite("Browser tools")
struct BrowserToolTests {
    static func tool(_ name: String, format: String) -> String {
        "tool: \(name)\nkind: browser\ntimeout: 60s\nbrowser:\n  format: \(format)\n  width: 640\n  height: 480\n"
    }

    @Test("text, HTML and a screenshot of a page an allowlist lets through; a subresource at a private address is blocked and named", arguments: TestBackend.all)
    func formats(backend: TestBackend) async throws {
        let server = try await HTTPEchoServer.start()
        defer { Task { try? await server.stop() } }
        try await TestCluster.run(backend: backend, overrides: ["tool.outboundAllow": "127.0.0.1:\(server.port)"]) { cluster in
            let admin = try await cluster.adminToken()
            let project = try await cluster.createProject("browser", token: admin)
            let base = "/api/v1/projects/\(project)/tools"
            for (name, format) in [("page-text", "text"), ("page-html", "html"), ("page-shot", "screenshot")] {
                let applied = try await cluster.http.send(.POST, "\(base)/apply", token: admin, json: ["source": Self.tool(name, format: format)])
                try #require(applied.status == 200, "\(applied.text)")
            }
            let page = "\(server.baseURL)/html?img=http://10.0.0.2/pixel.png"
            let text = try await cluster.http.send(.POST, "\(base)/page-text/invoke", token: admin, json: ["input": ["url": page]])
            let output = try #require(text.json["output"] as? [String: Any], "\(text.text)")
            #expect(output["title"] as? String == "Test page")
            let body = output["text"] as? String ?? ""
            #expect(body.contains("Hello & welcome") && body.contains("Second paragraph"), "\(body)")
            #expect(body.contains("added by script"), "scripts ran: \(body)")
            #expect(!body.contains("color"), "styles are not text")
            let blocked = output["blocked"] as? [String] ?? []
            #expect(blocked.contains { $0.hasPrefix("10.0.0.2:80") }, "\(blocked)")

            let html = try await cluster.http.send(.POST, "\(base)/page-html/invoke", token: admin, json: ["input": ["url": page]])
            #expect(((html.json["output"] as? [String: Any])?["html"] as? String)?.contains("<h1>Hello &amp; welcome</h1>") == true, "\(html.text.prefix(500))")

            let shot = try await cluster.http.send(.POST, "\(base)/page-shot/invoke", token: admin, json: ["input": ["url": "\(server.baseURL)/html"]])
            let png = try #require((shot.json["output"] as? [String: Any])?["png"] as? String, "\(shot.text.prefix(500))")
            let bytes = try #require(Data(base64Encoded: png))
            #expect(Array(bytes.prefix(8)) == [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A])

            // Chromium leaves its helpers to the service (their subreaper): they are reaped, not piled up.
            // Each call reaps what has exited by its end; helpers of a call that ends meanwhile (here,
            // or in another test of this process) wait for the next one. So after any of a few more
            // calls at most a handful are left, where zombies that pile up would only grow.
            for _ in 0 ..< 3 {
                _ = try await cluster.http.send(.POST, "\(base)/page-text/invoke", token: admin, json: ["input": ["url": "\(server.baseURL)/html"]])
            }
            var zombies = Self.chromiumZombies()
            for _ in 0 ..< 5 where zombies > 4 {
                _ = try await cluster.http.send(.POST, "\(base)/page-text/invoke", token: admin, json: ["input": ["url": "\(server.baseURL)/html"]])
                zombies = Self.chromiumZombies()
            }
            #expect(zombies <= 4, "\(zombies) Chromium zombies are left after 8 calls")
        }
    }

    /// Zombie children of this process named like Chromium's.
    static func chromiumZombies() -> Int {
        let me = "\(getpid())"
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.filter { entry in
            guard Int(entry) != nil, let status = try? String(contentsOfFile: "/proc/\(entry)/status", encoding: .utf8) else { return false }
            let lines = status.split(separator: "\n")
            let field = { (name: String) in lines.first { $0.hasPrefix(name) }?.dropFirst(name.count).trimmingCharacters(in: .whitespaces) ?? "" }
            return field("PPid:") == me && field("State:").hasPrefix("Z") && field("Name:").hasPrefix("chrom")
        }.count
    }

    @Test("loopback, private, link-local and metadata pages, names that resolve to loopback and redirects to private addresses are refused before any packet", arguments: TestBackend.all)
    func refusals(backend: TestBackend) async throws {
        let server = try await HTTPEchoServer.start()
        let allowed = try await HTTPEchoServer.start()
        defer { Task { try? await server.stop(); try? await allowed.stop() } }
        try await TestCluster.run(backend: backend, overrides: ["tool.outboundAllow": "127.0.0.1:\(allowed.port)"]) { cluster in
            let admin = try await cluster.adminToken()
            let project = try await cluster.createProject("browser-guard", token: admin)
            let base = "/api/v1/projects/\(project)/tools"
            try #require(try await cluster.http.send(.POST, "\(base)/apply", token: admin, json: ["source": Self.tool("page", format: "text")]).status == 200)
            let targets = [
                "http://127.0.0.1:\(server.port)/html", "http://[::1]:\(server.port)/html", "http://localhost:\(server.port)/html",
                "http://10.0.0.1/", "http://169.254.169.254/latest/meta-data/",
                "\(allowed.baseURL)/redirect?to=http://10.0.0.1/secret", "\(allowed.baseURL)/redirect?to=http://127.0.0.1:\(server.port)/html",
            ]
            for target in targets {
                let refused = try await cluster.http.send(.POST, "\(base)/page/invoke", token: admin, json: ["input": ["url": target]])
                let error = refused.json["error"] as? [String: Any]
                #expect(error?["reason"] as? String == "outbound_refused", "\(target): \(refused.text.prefix(400))")
            }
            #expect(server.requests == 0, "no request reached a server the guard does not allow")
        }
    }

    @Test("a browser definition's format and size are checked", arguments: [TestBackend.sqlite])
    func badDefinitions(backend: TestBackend) async throws {
        try await TestCluster.run(backend: backend) { cluster in
            let admin = try await cluster.adminToken()
            let project = try await cluster.createProject("browser-bad", token: admin)
            for (source, field) in [
                ("tool: a\nkind: browser\nbrowser:\n  format: pdf\n", "browser.format"),
                ("tool: b\nkind: browser\nbrowser:\n  width: 10\n", "browser.width"),
                ("tool: c\nkind: browser\nbrowser:\n  wait: 5m\n", "browser.wait"),
                ("tool: d\nkind: browser\nbrowser:\n  url: \"${{ inputs.url }}\"\n", "browser.url"),
            ] {
                let validated = try await cluster.http.send(.POST, "/api/v1/projects/\(project)/tools/validate", token: admin, json: ["source": source])
                #expect((validated.json["problems"] as? [[String: Any]])?.first?["field"] as? String == field, "\(validated.text)")
            }
        }
    }
}
