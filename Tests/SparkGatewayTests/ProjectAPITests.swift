import Foundation
import NIOHTTP1
import SQLKit
import SparkKit
import SparkTesting
import Testing

/// Projects, members, roles and the audit log through the gateway, on every backend.
@Suite("Project API")
struct ProjectAPITests {
    @Test("projects: create (caller becomes owner), get, list, update, delete; names unique", arguments: TestBackend.all)
    func lifecycle(backend: TestBackend) async throws {
        try await TestCluster.run(backend: backend) { cluster in
            let admin = try await cluster.adminToken()
            let created = try await cluster.http.send(.POST, "/api/v1/projects", token: admin, json: ["name": "alpha", "description": "first"])
            #expect(created.status == 201)
            let id = created.json["id"] as! String
            #expect(id.hasPrefix("prj_"))
            #expect(created.json["description"] as? String == "first")

            let duplicate = try await cluster.http.send(.POST, "/api/v1/projects", token: admin, json: ["name": "alpha"])
            #expect(duplicate.status == 409)
            #expect(duplicate.errorCode == "ALREADY_EXISTS")
            #expect(duplicate.errorField == "name")

            let fetched = try await cluster.http.send(.GET, "/api/v1/projects/\(id)", token: admin)
            #expect(fetched.json["name"] as? String == "alpha")

            for index in 0 ..< 3 {
                _ = try await cluster.createProject("extra-\(index)", token: admin)
            }
            let page1 = try await cluster.http.send(.GET, "/api/v1/projects?page_size=2", token: admin)
            #expect((page1.json["projects"] as? [Any])?.count == 2)
            let token = page1.json["nextPageToken"] as! String
            let page2 = try await cluster.http.send(.GET, "/api/v1/projects?page_size=2&page_token=\(token)", token: admin)
            #expect((page2.json["projects"] as? [Any])?.count == 2)
            let names = ((page1.json["projects"] as! [[String: Any]]) + (page2.json["projects"] as! [[String: Any]])).map { $0["name"] as! String }
            #expect(Set(names) == ["alpha", "extra-0", "extra-1", "extra-2"])

            let renamed = try await cluster.http.send(.PATCH, "/api/v1/projects/\(id)", token: admin, json: ["updateMask": ["name"], "name": "alpha-2"])
            #expect(renamed.status == 200)
            #expect(renamed.json["name"] as? String == "alpha-2")
            #expect(renamed.json["description"] as? String == "first")
            let clash = try await cluster.http.send(.PATCH, "/api/v1/projects/\(id)", token: admin, json: ["updateMask": ["name"], "name": "extra-0"])
            #expect(clash.status == 409)
            let badMask = try await cluster.http.send(.PATCH, "/api/v1/projects/\(id)", token: admin, json: ["updateMask": ["owner"]])
            #expect(badMask.status == 400)
            #expect(badMask.errorField == "updateMask")

            let deleted = try await cluster.http.send(.DELETE, "/api/v1/projects/\(id)", token: admin)
            #expect(deleted.status == 200)
            let gone = try await cluster.http.send(.GET, "/api/v1/projects/\(id)", token: admin)
            #expect(gone.status == 404)
            // A deleted project's name can be used again.
            let reused = try await cluster.http.send(.POST, "/api/v1/projects", token: admin, json: ["name": "alpha-2"])
            #expect(reused.status == 201)
        }
    }

    @Test("roles: each route needs its permission; non-members see 404, members without it 403", arguments: TestBackend.all)
    func roles(backend: TestBackend) async throws {
        try await TestCluster.run(backend: backend) { cluster in
            let admin = try await cluster.adminToken()
            let project = try await cluster.createProject("roles", token: admin)
            let viewerID = try await cluster.createUser("viewer@sparkops.test", adminToken: admin)
            _ = try await cluster.createUser("outsider@sparkops.test", adminToken: admin)
            let added = try await cluster.http.send(.POST, "/api/v1/projects/\(project)/members", token: admin, json: ["email": "viewer@sparkops.test", "role": "ROLE_VIEWER"])
            #expect(added.status == 201)
            #expect(added.json["userId"] as? String == viewerID)

            let viewer = try await cluster.login(email: "viewer@sparkops.test", password: "user-password-123")["accessToken"] as! String
            let outsider = try await cluster.login(email: "outsider@sparkops.test", password: "user-password-123")["accessToken"] as! String

            #expect(try await cluster.http.send(.GET, "/api/v1/projects/\(project)", token: viewer).status == 200)
            #expect(try await cluster.http.send(.GET, "/api/v1/projects/\(project)/members", token: viewer).status == 200)
            #expect(try await cluster.http.send(.GET, "/api/v1/projects/\(project)/api-keys", token: viewer).status == 403)
            #expect(try await cluster.http.send(.PATCH, "/api/v1/projects/\(project)", token: viewer, json: ["description": "x"]).status == 403)
            #expect(try await cluster.http.send(.GET, "/api/v1/projects/\(project)/audit-events", token: viewer).status == 403)
            #expect(try await cluster.http.send(.DELETE, "/api/v1/projects/\(project)", token: viewer).status == 403)

            for path in ["", "/members", "/api-keys", "/audit-events"] {
                let reply = try await cluster.http.send(.GET, "/api/v1/projects/\(project)\(path)", token: outsider)
                #expect(reply.status == 404, "\(path): \(reply.status)")
                #expect(reply.errorMessage == "project not found")
            }
            // A project that does not exist looks the same as one the caller cannot see.
            let missing = try await cluster.http.send(.GET, "/api/v1/projects/\(SparkID.make("prj"))", token: outsider)
            let hidden = try await cluster.http.send(.GET, "/api/v1/projects/\(project)", token: outsider)
            #expect(missing.status == 404)
            #expect(missing.text == hidden.text)

            // Only administrators create users.
            #expect(try await cluster.http.send(.POST, "/api/v1/users", token: viewer, json: ["email": "x@sparkops.test", "password": "long-enough-password"]).status == 403)

            // An admin cannot grant a role above their own; the last owner cannot be demoted.
            let editorID = try await cluster.createUser("editor@sparkops.test", adminToken: admin)
            _ = try await cluster.http.send(.POST, "/api/v1/projects/\(project)/members", token: admin, json: ["userId": editorID, "role": "ROLE_ADMIN"])
            let projectAdmin = try await cluster.login(email: "editor@sparkops.test", password: "user-password-123")["accessToken"] as! String
            let escalate = try await cluster.http.send(.POST, "/api/v1/projects/\(project)/members", token: projectAdmin, json: ["userId": editorID, "role": "ROLE_OWNER"])
            #expect(escalate.status == 403)
            let owners = try await cluster.http.send(.GET, "/api/v1/projects/\(project)/members", token: admin)
            let ownerID = (owners.json["members"] as! [[String: Any]]).first { $0["role"] as? String == "ROLE_OWNER" }!["userId"] as! String
            let demote = try await cluster.http.send(.POST, "/api/v1/projects/\(project)/members", token: admin, json: ["userId": ownerID, "role": "ROLE_VIEWER"])
            #expect(demote.status == 409)

            // Removing a member takes effect at once.
            #expect(try await cluster.http.send(.DELETE, "/api/v1/projects/\(project)/members/\(viewerID)", token: admin).status == 200)
            #expect(try await cluster.http.send(.GET, "/api/v1/projects/\(project)", token: viewer).status == 404)
        }
    }

    @Test("every mutation and every login is in the audit log", arguments: TestBackend.all)
    func auditLog(backend: TestBackend) async throws {
        try await TestCluster.run(backend: backend) { cluster in
            let admin = try await cluster.adminToken()
            let project = try await cluster.createProject("audited", token: admin)
            _ = try await cluster.http.send(.PATCH, "/api/v1/projects/\(project)", token: admin, json: ["description": "changed"])
            let key = try await cluster.http.send(.POST, "/api/v1/projects/\(project)/api-keys", token: admin, json: ["name": "k", "role": "ROLE_VIEWER"])
            let keyID = (key.json["apiKey"] as! [String: Any])["id"] as! String
            _ = try await cluster.http.send(.DELETE, "/api/v1/projects/\(project)/api-keys/\(keyID)", token: admin)
            _ = try await cluster.http.send(.POST, "/api/v1/auth/login", json: ["email": TestCluster.adminEmail, "password": "wrong-password-x"])

            let events = try await cluster.http.send(.GET, "/api/v1/projects/\(project)/audit-events", token: admin)
            let actions = (events.json["events"] as! [[String: Any]]).map { $0["action"] as! String }
            #expect(actions == ["apikey.revoke", "apikey.create", "project.update", "project.create"])
            let filtered = try await cluster.http.send(.GET, "/api/v1/projects/\(project)/audit-events?action=apikey.create", token: admin)
            #expect((filtered.json["events"] as! [[String: Any]]).count == 1)

            let logins = try await cluster.withProjectStore { store in
                try await store.sql { db in
                    try await db.raw("SELECT outcome, ip FROM audit_log WHERE action = 'auth.login' ORDER BY id").all().map {
                        "\(try $0.decode(column: "outcome", as: String.self))@\(try $0.decode(column: "ip", as: String.self))"
                    }
                }
            }
            #expect(logins == ["success@127.0.0.1", "failed@127.0.0.1"])

            // Append-only: the database refuses to change history.
            await #expect(throws: (any Error).self) {
                try await cluster.withProjectStore { store in
                    try await store.sql { try await $0.raw("UPDATE audit_log SET outcome = 'success'").run() }
                }
            }
            await #expect(throws: (any Error).self) {
                try await cluster.withProjectStore { store in
                    try await store.sql { try await $0.raw("DELETE FROM audit_log").run() }
                }
            }
        }
    }
}
