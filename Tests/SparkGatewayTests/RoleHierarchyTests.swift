import Foundation
import NIOHTTP1
import SparkKit
import SparkTesting
import Testing

/// Who may manage whom: a caller changes, removes or revokes only members and keys whose role is
/// at most its own; a key never holds more than its creator holds now; names are per tenant.
@Suite("Role hierarchy and key capping")
struct RoleHierarchyTests {
    static let roles = ["viewer", "runner", "approver", "editor", "admin", "owner"]
    static func rank(_ role: String) -> Int { Self.roles.firstIndex(of: role)! }

    /// For every caller role (as a user and as an API key) and every target role: changing the
    /// target member's role, removing the member, and revoking a key of the target's role.
    @Test("every role pair: change, remove and revoke only at or below your own role", arguments: TestBackend.all)
    func everyRolePair(backend: TestBackend) async throws {
        try await TestCluster.run(backend: backend) { cluster in
            let admin = try await cluster.adminToken()
            var users: [String: (id: String, token: String)] = [:]
            for role in Self.roles {
                let email = "caller-\(role)@sparkops.test"
                let id = try await cluster.createUser(email, adminToken: admin)
                users[role] = (id, try await cluster.login(email: email, password: "user-password-123")["accessToken"] as! String)
            }
            for callerKind in ["user", "key"] {
                for callerRole in Self.roles {
                    // A project of the administrator (its owner), with the caller in it.
                    let project = try await cluster.createProject("pairs-\(callerKind)-\(callerRole)", token: admin)
                    let caller = users[callerRole]!
                    let added = try await cluster.http.send(.POST, "/api/v1/projects/\(project)/members", token: admin, json: ["userId": caller.id, "role": "ROLE_\(callerRole.uppercased())"])
                    #expect(added.status == 201)
                    var token = caller.token
                    if callerKind == "key" {
                        let key = try await cluster.http.send(.POST, "/api/v1/projects/\(project)/api-keys", token: caller.token, json: ["name": "caller", "role": "ROLE_\(callerRole.uppercased())"])
                        if callerRole == "admin" || callerRole == "owner" {
                            token = key.json["key"] as! String
                        } else {
                            // Below admin a caller cannot make keys; the administrator makes one of its role.
                            let made = try await cluster.http.send(.POST, "/api/v1/projects/\(project)/api-keys", token: admin, json: ["name": "caller", "role": "ROLE_\(callerRole.uppercased())"])
                            token = made.json["key"] as! String
                        }
                    }
                    let mayManage = Self.rank(callerRole) >= Self.rank("admin")
                    for targetRole in Self.roles {
                        let expected = mayManage && Self.rank(targetRole) <= Self.rank(callerRole)
                        let label = "\(callerRole) \(callerKind) on \(targetRole)"
                        let targetEmail = "target-\(callerKind)-\(callerRole)-\(targetRole)@sparkops.test"
                        let targetID = try await cluster.createUser(targetEmail, adminToken: admin)
                        _ = try await cluster.http.send(.POST, "/api/v1/projects/\(project)/members", token: admin, json: ["userId": targetID, "role": "ROLE_\(targetRole.uppercased())"])
                        let key = try await cluster.http.send(.POST, "/api/v1/projects/\(project)/api-keys", token: admin, json: ["name": "target", "role": "ROLE_\(targetRole.uppercased())"])
                        let keyID = (key.json["apiKey"] as! [String: Any])["id"] as! String

                        let change = try await cluster.http.send(.POST, "/api/v1/projects/\(project)/members", token: token, json: ["userId": targetID, "role": "ROLE_VIEWER"])
                        #expect((change.status == 201) == expected, "change: \(label): \(change.status) \(change.text)")
                        if !expected { #expect(change.status == 403, "change: \(label)") }
                        // Undo a permitted change, so that removal meets the target's own role.
                        _ = try await cluster.http.send(.POST, "/api/v1/projects/\(project)/members", token: admin, json: ["userId": targetID, "role": "ROLE_\(targetRole.uppercased())"])
                        let remove = try await cluster.http.send(.DELETE, "/api/v1/projects/\(project)/members/\(targetID)", token: token)
                        #expect((remove.status == 200) == expected, "remove: \(label): \(remove.status) \(remove.text)")
                        let revoke = try await cluster.http.send(.DELETE, "/api/v1/projects/\(project)/api-keys/\(keyID)", token: token)
                        #expect((revoke.status == 200) == expected, "revoke: \(label): \(revoke.status) \(revoke.text)")
                        if !expected {
                            #expect(remove.status == 403 && revoke.status == 403, "\(label): \(remove.status) \(revoke.status)")
                        }
                    }
                    // The project's creator, its owner, is still there whatever the caller tried.
                    let members = try await cluster.http.send(.GET, "/api/v1/projects/\(project)/members", token: admin)
                    let owners = (members.json["members"] as! [[String: Any]]).filter { $0["role"] as? String == "ROLE_OWNER" }.count
                    #expect(owners >= 1)
                }
            }
        }
    }

    @Test("a key never holds more than its creator: capped when they are demoted, revoked when they leave", arguments: TestBackend.all)
    func keysFollowTheirCreator(backend: TestBackend) async throws {
        try await TestCluster.run(backend: backend) { cluster in
            let admin = try await cluster.adminToken()
            let project = try await cluster.createProject("keys-follow", token: admin)
            let creatorID = try await cluster.createUser("key-maker@sparkops.test", adminToken: admin)
            _ = try await cluster.http.send(.POST, "/api/v1/projects/\(project)/members", token: admin, json: ["userId": creatorID, "role": "ROLE_ADMIN"])
            let creator = try await cluster.login(email: "key-maker@sparkops.test", password: "user-password-123")["accessToken"] as! String
            let made = try await cluster.http.send(.POST, "/api/v1/projects/\(project)/api-keys", token: creator, json: ["name": "adminkey", "role": "ROLE_ADMIN"])
            let key = made.json["key"] as! String
            let keyID = (made.json["apiKey"] as! [String: Any])["id"] as! String
            #expect(try await cluster.http.send(.GET, "/api/v1/projects/\(project)/audit-events", token: key).status == 200)

            // Demoted to viewer: the key reads, but acts as a viewer.
            _ = try await cluster.http.send(.POST, "/api/v1/projects/\(project)/members", token: admin, json: ["userId": creatorID, "role": "ROLE_VIEWER"])
            try await waitFor("the key to be capped at viewer") {
                try await cluster.http.send(.GET, "/api/v1/projects/\(project)/audit-events", token: key).status == 403
            }
            #expect(try await cluster.http.send(.GET, "/api/v1/projects/\(project)", token: key).status == 200)

            // Promoted back: the key's own role is again the limit.
            _ = try await cluster.http.send(.POST, "/api/v1/projects/\(project)/members", token: admin, json: ["userId": creatorID, "role": "ROLE_ADMIN"])
            try await waitFor("the key to be an admin again") {
                try await cluster.http.send(.GET, "/api/v1/projects/\(project)/audit-events", token: key).status == 200
            }

            // Removed: the key is revoked with its creator's membership, and it cannot add them back.
            #expect(try await cluster.http.send(.DELETE, "/api/v1/projects/\(project)/members/\(creatorID)", token: admin).status == 200)
            try await waitFor("the key to stop working") {
                try await cluster.http.send(.GET, "/api/v1/projects/\(project)", token: key).status == 401
            }
            let comeback = try await cluster.http.send(.POST, "/api/v1/projects/\(project)/members", token: key, json: ["userId": creatorID, "role": "ROLE_ADMIN"])
            #expect(comeback.status == 401)
            let keys = try await cluster.http.send(.GET, "/api/v1/projects/\(project)/api-keys", token: admin)
            let listed = (keys.json["apiKeys"] as! [[String: Any]]).first { $0["id"] as? String == keyID }
            #expect(listed?["revokeTime"] != nil)
            // Re-adding the creator does not revive it.
            _ = try await cluster.http.send(.POST, "/api/v1/projects/\(project)/members", token: admin, json: ["userId": creatorID, "role": "ROLE_ADMIN"])
            try await Task.sleep(for: .seconds(3))
            #expect(try await cluster.http.send(.GET, "/api/v1/projects/\(project)", token: key).status == 401)
            let events = try await cluster.http.send(.GET, "/api/v1/projects/\(project)/audit-events?action=member.remove", token: admin)
            #expect(((events.json["events"] as! [[String: Any]]).first?["detail"] as? String)?.contains(keyID) == true)
        }
    }

    @Test("project names are unique per tenant: another tenant's name is free, a visible one is a conflict", arguments: TestBackend.all)
    func namesPerTenant(backend: TestBackend) async throws {
        try await TestCluster.run(backend: backend) { cluster in
            let admin = try await cluster.adminToken()
            _ = try await cluster.createUser("tenant-a@sparkops.test", adminToken: admin)
            _ = try await cluster.createUser("tenant-b@sparkops.test", adminToken: admin)
            let alice = try await cluster.login(email: "tenant-a@sparkops.test", password: "user-password-123")["accessToken"] as! String
            let bob = try await cluster.login(email: "tenant-b@sparkops.test", password: "user-password-123")["accessToken"] as! String

            let first = try await cluster.http.send(.POST, "/api/v1/projects", token: alice, json: ["name": "demo"])
            #expect(first.status == 201)
            // Another tenant may use the same name, and learns nothing of the first.
            let second = try await cluster.http.send(.POST, "/api/v1/projects", token: bob, json: ["name": "demo"])
            #expect(second.status == 201, "\(second.text)")
            // The same tenant may not.
            let again = try await cluster.http.send(.POST, "/api/v1/projects", token: alice, json: ["name": "demo"])
            #expect(again.status == 409)
            #expect(again.errorField == "name")

            // Once Bob sees Alice's "demo", his own name clashes when he renames into it.
            let bobOther = try await cluster.createProject("other", token: bob)
            let aliceDemo = first.json["id"] as! String
            let bobID = ((try await cluster.http.send(.GET, "/api/v1/users/me", token: bob)).json["id"] as! String)
            _ = try await cluster.http.send(.POST, "/api/v1/projects/\(aliceDemo)/members", token: alice, json: ["userId": bobID, "role": "ROLE_VIEWER"])
            let clash = try await cluster.http.send(.PATCH, "/api/v1/projects/\(bobOther)", token: bob, json: ["name": "demo"])
            #expect(clash.status == 409)
            // Alice renames her own freely: Bob's "demo" is not hers to see.
            let aliceOther = try await cluster.createProject("alice-other", token: alice)
            let rename = try await cluster.http.send(.PATCH, "/api/v1/projects/\(aliceOther)", token: alice, json: ["name": "other"])
            #expect(rename.status == 200, "\(rename.text)")
        }
    }
}

/// Polls `condition` until it holds (bounded by 30 s, returning as soon as it does).
func waitFor(_ what: String, within limit: Duration = .seconds(60), _ condition: () async throws -> Bool) async throws {
    let deadline = ContinuousClock.now + limit
    while ContinuousClock.now < deadline {
        if try await condition() { return }
        try await Task.sleep(for: .milliseconds(200))
    }
    Issue.record("waited 30 s for \(what)")
}
