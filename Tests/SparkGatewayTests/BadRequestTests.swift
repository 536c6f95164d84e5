import Foundation
import NIOHTTP1
import SparkKit
import SQLKit
import SparkTesting
import Testing

/// Bad input gets a status, a code and a message naming the field, and stores nothing.
@Suite("Gateway bad input")
struct BadRequestTests {
    @Test("malformed JSON, wrong types, unknown fields, a body that is not an object")
    func malformedBodies() async throws {
        try await TestCluster.run(backend: .sqlite) { cluster in
            let admin = try await cluster.adminToken()
            let cases: [(String, String, Int, String?)] = [
                ("malformed JSON", #"{"name": "x""#, 400, "body"),
                ("an array", #"["x"]"#, 400, "body"),
                ("a string", #""x""#, 400, "body"),
                ("a number for a string", #"{"name": 42}"#, 400, "name"),
                ("an object for a string", #"{"name": {"a": 1}}"#, 400, "name"),
                ("an unknown field", #"{"name": "ok", "colour": "blue"}"#, 400, "colour"),
                ("a misspelt field", #"{"nmae": "ok"}"#, 400, "nmae"),
                ("an empty name", #"{"name": ""}"#, 400, "name"),
                ("a control character", #"{"name": "a\u0007b"}"#, 400, "name"),
                ("a name too long", #"{"name": "\#(String(repeating: "n", count: 101))"}"#, 400, "name"),
                ("a key written twice", #"{"name": "a", "name": "b"}"#, 400, "name"),
                ("a key written twice, once escaped", #"{"name": "a", "n\u0061me": "b"}"#, 400, "name"),
                ("a nested key written twice", #"{"name": "a", "extra": {"x": "1", "x": "2"}}"#, 400, "extra.x"),
            ]
            for (name, body, status, field) in cases {
                let reply = try await cluster.http.send(.POST, "/api/v1/projects", token: admin, body: body)
                #expect(reply.status == status, "\(name): \(reply.status) \(reply.text)")
                #expect(reply.errorCode == "INVALID_ARGUMENT", "\(name)")
                #expect(reply.errorField == field, "\(name): \(reply.text)")
            }
            // Enum values by name; a wrong name is refused.
            let project = try await cluster.createProject("enums", token: admin)
            let badRole = try await cluster.http.send(.POST, "/api/v1/projects/\(project)/api-keys", token: admin, body: #"{"name": "k", "role": "ROLE_KING"}"#)
            #expect(badRole.status == 400)
            #expect(badRole.errorField == "role")
            // proto3 JSON accepts snake_case input names too.
            let snake = try await cluster.http.send(.POST, "/api/v1/projects/\(project)/api-keys", token: admin, body: #"{"name": "k", "role": "ROLE_VIEWER", "ttl_days": 3}"#)
            #expect(snake.status == 201)
            let list = try await cluster.http.send(.GET, "/api/v1/projects", token: admin)
            #expect((list.json["projects"] as! [[String: Any]]).map { $0["name"] as! String } == ["enums"])
        }
    }

    @Test("names in the shape of their kind's ids (prj_, bud_, wf_, agt_) are refused, naming the field")
    func idLikeNames() async throws {
        try await TestCluster.run(backend: .sqlite) { cluster in
            let admin = try await cluster.adminToken()
            let project = try await cluster.createProject("names", token: admin)
            let base = "/api/v1/projects/\(project)"
            let projectName = try await cluster.http.send(.POST, "/api/v1/projects", token: admin, json: ["name": "prj_01a252c4cea270d888f9865704ab7d6c"])
            #expect(projectName.status == 400)
            #expect(projectName.errorField == "name")
            let renamed = try await cluster.http.send(.PATCH, base, token: admin, json: ["name": "PRJ_x"])
            #expect(renamed.status == 400, "\(renamed.text)")
            let budget = try await cluster.http.send(.PUT, "\(base)/budgets/bud_x", token: admin, json: ["limitMicros": "1000", "kind": "hard"])
            #expect(budget.status == 400, "\(budget.text)")
            #expect(budget.errorField == "budget")
            let workflow = try await cluster.http.send(.POST, "\(base)/workflows/apply", token: admin, json: ["source": "name: wf_x\nsteps:\n  - id: a\n    approval: {}\n"])
            #expect(workflow.status == 400, "\(workflow.text)")
            #expect(workflow.errorMessage?.contains("reserved") == true, "\(workflow.text)")
            let agent = try await cluster.http.send(.POST, "\(base)/agents/validate", token: admin, json: ["source": "agent: agt_x\nprovider: openai\nmodel: m\n"])
            #expect((agent.json["problems"] as? [[String: Any]] ?? []).contains { ($0["message"] as? String)?.contains("reserved") == true }, "\(agent.text)")
            // Nothing was stored.
            let projects = try await cluster.http.send(.GET, "/api/v1/projects", token: admin)
            #expect((projects.json["projects"] as? [[String: Any]])?.map { $0["name"] as? String } == ["names"])
        }
    }

    @Test("a body within the limit whose message is over what a service takes gets 413 naming the body, not 429; a tool input over 64 KiB is 400 naming the input")
    func encodedTooLarge() async throws {
        try await TestCluster.run(backend: .sqlite) { cluster in
            let admin = try await cluster.adminToken()
            let project = try await cluster.createProject("large", token: admin)
            let applied = try await cluster.http.send(.POST, "/api/v1/projects/\(project)/tools/apply", token: admin, json: ["source": "tool: echo\nkind: echo\nside_effects: none\n"])
            try #require(applied.status == 200, "\(applied.text)")
            // A body at the agent route's 4 MiB limit: with the project and agent from the path,
            // more than a SparkWire message may be once encoded.
            let head = #"{"prompt":"x","input":""#
            let body = head + String(repeating: "a", count: (4 << 20) - head.utf8.count - 2) + #""}"#
            try #require(body.utf8.count == 4 << 20)
            let reply = try await cluster.http.send(.POST, "/api/v1/projects/\(project)/agents/helper/execute", token: admin, body: body)
            #expect(reply.status == 413, "\(reply.status) \(reply.text.prefix(300))")
            #expect(reply.errorField == "body")
            #expect(reply.headers.first(name: "Retry-After") == nil)

            // A tool's input over 64 KiB (what a policy is shown of a call) is refused naming the input.
            let large = #"{"input":{"n":["# + Array(repeating: "1", count: 500_000).joined(separator: ",") + "]}}"
            let refused = try await cluster.http.send(.POST, "/api/v1/projects/\(project)/tools/echo/invoke", token: admin, body: large)
            #expect(refused.status == 400, "\(refused.status) \(refused.text.prefix(300))")
            #expect(refused.errorField == "input", "\(refused.text.prefix(300))")
            #expect(refused.errorMessage?.contains("at most 65536 bytes") == true, "\(refused.text.prefix(300))")
        }
    }

    @Test("a body over the limit gets 413 before it is read")
    func bodyLimit() async throws {
        try await TestCluster.run(backend: .sqlite, overrides: ["gateway.maxBodyBytes": "1024"]) { cluster in
            let admin = try await cluster.adminToken()
            let big = #"{"name": "big", "description": "\#(String(repeating: "d", count: 4000))"}"#
            let reply = try await cluster.http.send(.POST, "/api/v1/projects", token: admin, body: big)
            #expect(reply.status == 413)
            #expect(reply.errorField == "body")
            let small = try await cluster.http.send(.POST, "/api/v1/projects", token: admin, json: ["name": "small"])
            #expect(small.status == 201)
        }
    }

    @Test("SQL metacharacters in every text field are stored and returned as written", arguments: TestBackend.all)
    func sqlMetacharacters(backend: TestBackend) async throws {
        try await TestCluster.run(backend: backend) { cluster in
            let admin = try await cluster.adminToken()
            let nasty = #"Robert'); DROP TABLE projects;-- "%_\ ü"#
            let created = try await cluster.http.send(.POST, "/api/v1/projects", token: admin, json: ["name": nasty, "description": nasty + " OR 1=1"])
            #expect(created.status == 201)
            let id = created.json["id"] as! String
            let fetched = try await cluster.http.send(.GET, "/api/v1/projects/\(id)", token: admin)
            #expect(fetched.json["name"] as? String == nasty)
            #expect(fetched.json["description"] as? String == nasty + " OR 1=1")

            let user = try await cluster.http.send(.POST, "/api/v1/users", token: admin, json: ["email": "o'brien+x@sparkops.test", "displayName": nasty, "password": "password'; --  x"])
            #expect(user.status == 201)
            #expect(user.json["displayName"] as? String == nasty)
            let login = try await cluster.http.send(.POST, "/api/v1/auth/login", json: ["email": "o'brien+x@sparkops.test", "password": "password'; --  x"])
            #expect(login.status == 200)

            let key = try await cluster.http.send(.POST, "/api/v1/projects/\(id)/api-keys", token: admin, json: ["name": nasty, "role": "ROLE_VIEWER"])
            #expect((key.json["apiKey"] as? [String: Any])?["name"] as? String == nasty)
            let injectedID = try await cluster.http.send(.GET, "/api/v1/projects/prj_x'%20OR%20'1'='1", token: admin)
            #expect(injectedID.status == 400)
            #expect(injectedID.errorField == "projectId")
            let filter = try await cluster.http.send(.GET, "/api/v1/projects/\(id)/audit-events?action=x'%20OR%20'1'='1", token: admin)
            #expect(filter.status == 200)
            #expect((filter.json["events"] as? [Any])?.isEmpty ?? true)
            let all = try await cluster.http.send(.GET, "/api/v1/projects", token: admin)
            #expect((all.json["projects"] as? [Any])?.count == 1)
        }
    }

    @Test("query parameters, page tokens and ids are checked")
    func queries() async throws {
        try await TestCluster.run(backend: .sqlite) { cluster in
            let admin = try await cluster.adminToken()
            let cases: [(String, String?)] = [
                ("/api/v1/projects?page_size=abc", "pageSize"),
                ("/api/v1/projects?page_size=100000", "pageSize"),
                ("/api/v1/projects?page_size=-1", "pageSize"),
                ("/api/v1/projects?page_token=%25%25%25", "pageToken"),
                // Quotes, backslashes, control characters and non-ASCII reach the service intact
                // (the field is named, not the request's JSON).
                ("/api/v1/projects?page_token=%22%7D%2C%22x%22%3A%22", "pageToken"),
                ("/api/v1/projects?page_token=a%5C%5Cb%5C%22", "pageToken"),
                ("/api/v1/projects?page_token=line%0Abreak%01%1F", "pageToken"),
                ("/api/v1/projects?page_token=caf%C3%A9%E2%9C%93", "pageToken"),
                ("/api/v1/projects?colour=blue", "colour"),
                ("/api/v1/projects/not-an-id", "projectId"),
            ]
            for (path, field) in cases {
                let reply = try await cluster.http.send(.GET, path, token: admin)
                #expect(reply.status == 400, "\(path): \(reply.text)")
                #expect(reply.errorField == field, "\(path): \(reply.text)")
                // One spelling: the JSON name, in the field and in the message.
                if let field { #expect(reply.errorMessage?.hasPrefix(field) == true || field == "colour", "\(path): \(reply.text)") }
            }
            let unknown = try await cluster.http.send(.GET, "/api/v1/nothing-here", token: admin)
            #expect(unknown.status == 404)
            #expect(unknown.errorCode == "NOT_FOUND")
            let openapi = try await cluster.http.send(.GET, "/api/v1/openapi.json")
            #expect(openapi.status == 200)
            #expect(openapi.json["openapi"] as? String == "3.1.0")
            #expect((openapi.json["paths"] as? [String: Any])?["/api/v1/projects/{project_id}"] != nil)
        }
    }

    @Test("1,000 bad logins are rate limited and audited, with no way to tell users apart", arguments: TestBackend.all)
    func badLogins(backend: TestBackend) async throws {
        try await TestCluster.run(backend: backend, overrides: ["gateway.rateLimit.authPerMinute": "600", "gateway.rateLimit.authBurst": "50"]) { cluster in
            let admin = try await cluster.adminToken()
            _ = try await cluster.createUser("victim@sparkops.test", adminToken: admin)
            var statuses: [Int: Int] = [:]
            var messages: Set<String> = []
            var retryAfter: String?
            for batch in 0 ..< 20 {
                let replies = try await withThrowingTaskGroup(of: HTTPTestClient.Reply.self) { group in
                    for offset in 0 ..< 50 {
                        let index = batch * 50 + offset
                        group.addTask {
                            let email = index % 2 == 0 ? "victim@sparkops.test" : "ghost\(index % 7)@sparkops.test"
                            return try await cluster.http.send(.POST, "/api/v1/auth/login", json: ["email": email, "password": "guess-\(index)-xxxxxxx"])
                        }
                    }
                    var replies: [HTTPTestClient.Reply] = []
                    for try await reply in group { replies.append(reply) }
                    return replies
                }
                for reply in replies {
                    statuses[reply.status, default: 0] += 1
                    messages.insert("\(reply.status):\(reply.errorMessage ?? "")")
                    retryAfter = retryAfter ?? reply.headers.first(name: "Retry-After")
                }
            }
            #expect(statuses.values.reduce(0, +) == 1000)
            #expect(statuses[200] == nil)
            #expect((statuses[429] ?? 0) >= 900, "\(statuses)")
            #expect(Int(retryAfter ?? "") ?? 0 >= 1)
            // The same answer whether or not the email has a user.
            #expect(messages.filter { $0.hasPrefix("401:") } == ["401:invalid email or password"], "\(messages)")

            let (failed, limited) = try await cluster.withProjectStore { store in
                try await store.sql { db in
                    let failed = try await db.raw("SELECT COUNT(*) AS n FROM audit_log WHERE action = 'auth.login' AND outcome = 'failed'").first()?.decode(column: "n", as: Int.self) ?? 0
                    let limited = try await db.raw("SELECT COUNT(*) AS n FROM audit_log WHERE action = 'auth.login' AND outcome = 'denied' AND detail LIKE '%rate limit%'").first()?.decode(column: "n", as: Int.self) ?? 0
                    return (failed, limited)
                }
            }
            // Every attempt that reached a password check is audited as failed; the flood the
            // gateway turned away is audited too, once per address and minute.
            #expect(failed == statuses[401] ?? 0)
            #expect(limited >= 1)
        }
    }

    @Test("a failed login takes as long for an unknown email as for a known one")
    func loginTiming() async throws {
        // No sign-in throttle here: it pauses a known and an unknown email alike, but this measures
        // the password check itself.
        try await TestCluster.run(backend: .sqlite, overrides: ["project.bcryptCost": "10", "gateway.rateLimit.authBurst": "1000", "project.loginFailureLimit": "1000"]) { cluster in
            let admin = try await cluster.adminToken()
            _ = try await cluster.createUser("timing@sparkops.test", adminToken: admin)
            var known: [Double] = []
            var unknown: [Double] = []
            for index in 0 ..< 16 {
                for (email, bucket) in [("timing@sparkops.test", 0), ("nobody-\(index)@sparkops.test", 1)] {
                    let started = ContinuousClock.now
                    _ = try await cluster.http.send(.POST, "/api/v1/auth/login", json: ["email": email, "password": "wrong-password-\(index)"])
                    let elapsed = (ContinuousClock.now - started).components
                    let seconds = Double(elapsed.seconds) + Double(elapsed.attoseconds) / 1e18
                    if bucket == 0 { known.append(seconds) } else { unknown.append(seconds) }
                }
            }
            let medianKnown = known.sorted()[known.count / 2]
            let medianUnknown = unknown.sorted()[unknown.count / 2]
            // Both pay one bcrypt at cost 10 (tens of milliseconds); without the dummy hash the
            // unknown email would answer in well under a millisecond.
            #expect(medianUnknown > medianKnown * 0.5, "known \(medianKnown) s, unknown \(medianUnknown) s")
            #expect(medianUnknown < medianKnown * 2, "known \(medianKnown) s, unknown \(medianUnknown) s")
        }
    }

    @Test("CORS: allowed origins get headers and preflights; others get neither")
    func cors() async throws {
        try await TestCluster.run(backend: .sqlite, overrides: ["gateway.corsOrigins": "https://app.sparkops.test"]) { cluster in
            let preflight = try await cluster.http.send(.OPTIONS, "/api/v1/projects", headers: [("Origin", "https://app.sparkops.test"), ("Access-Control-Request-Method", "POST")])
            #expect(preflight.status == 204)
            #expect(preflight.headers.first(name: "Access-Control-Allow-Origin") == "https://app.sparkops.test")
            let evilPreflight = try await cluster.http.send(.OPTIONS, "/api/v1/projects", headers: [("Origin", "https://evil.test"), ("Access-Control-Request-Method", "POST")])
            #expect(evilPreflight.status == 403)
            #expect(evilPreflight.headers.first(name: "Access-Control-Allow-Origin") == nil)
            let allowed = try await cluster.http.send(.GET, "/api/v1/openapi.json", headers: [("Origin", "https://app.sparkops.test")])
            #expect(allowed.headers.first(name: "Access-Control-Allow-Origin") == "https://app.sparkops.test")
            let evil = try await cluster.http.send(.GET, "/api/v1/openapi.json", headers: [("Origin", "https://evil.test")])
            #expect(evil.headers.first(name: "Access-Control-Allow-Origin") == nil)
        }
    }

    @Test("a principal over its rate limit gets 429 with Retry-After")
    func principalRateLimit() async throws {
        try await TestCluster.run(backend: .sqlite, overrides: ["gateway.rateLimit.principalPerMinute": "1", "gateway.rateLimit.principalBurst": "5"]) { cluster in
            let admin = try await cluster.adminToken()
            var statuses: [Int] = []
            var retryAfter: String?
            for _ in 0 ..< 8 {
                let reply = try await cluster.http.send(.GET, "/api/v1/projects", token: admin)
                statuses.append(reply.status)
                retryAfter = reply.headers.first(name: "Retry-After")
            }
            #expect(statuses.prefix(5).allSatisfy { $0 == 200 }, "\(statuses)")
            #expect(statuses.suffix(3).allSatisfy { $0 == 429 }, "\(statuses)")
            // One token a minute: the wait is tens of seconds, and says so.
            #expect((Int(retryAfter ?? "") ?? 0) > 1)
        }
    }
}
