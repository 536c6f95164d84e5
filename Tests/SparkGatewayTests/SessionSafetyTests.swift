import Foundation
import NIOHTTP1
import SQLKit
import SparkKit
import SparkTesting
import Testing

/// Sign-in throttling, revoked session families, and the audit of refused requests.
@Suite("Session safety")
struct SessionSafetyTests {
    @Test("failed sign-ins pause the email for a delay that grows and ends by itself; a success resets it", arguments: TestBackend.all)
    func throttle(backend: TestBackend) async throws {
        try await TestCluster.run(backend: backend, overrides: ["project.loginFailureLimit": "2", "gateway.rateLimit.authBurst": "100"]) { cluster in
            let wrong = ["email": TestCluster.adminEmail, "password": "wrong-password-1"]
            let right = ["email": TestCluster.adminEmail, "password": TestCluster.adminPassword]
            // The first failure is free.
            #expect(try await cluster.http.send(.POST, "/api/v1/auth/login", json: wrong).status == 401)
            #expect(try await self.pausedUntil(cluster) == 0)
            // The second pauses sign-ins for a second: a retry at once, even with the right password, waits.
            #expect(try await cluster.http.send(.POST, "/api/v1/auth/login", json: wrong).status == 401)
            let pause = try await self.pausedUntil(cluster)
            #expect(pause > 0)
            // The pause is read from the store, so that a slow machine cannot outrun a 1 s window:
            // stretch it to a minute and see the 429 and its Retry-After.
            try await self.setPause(cluster, seconds: 60)
            let refused = try await cluster.http.send(.POST, "/api/v1/auth/login", json: right)
            #expect(refused.status == 429)
            let retryAfter = Int(refused.headers.first(name: "Retry-After") ?? "") ?? 0
            #expect((55 ... 60).contains(retryAfter), "Retry-After \(retryAfter)")
            #expect(refused.errorCode == "RESOURCE_EXHAUSTED")
            // More attempts in the same pause are refused alike, and audited once for the pause.
            #expect(try await cluster.http.send(.POST, "/api/v1/auth/login", json: right).status == 429)
            #expect(try await cluster.http.send(.POST, "/api/v1/auth/login", json: wrong).status == 429)

            // A pause that has ended lets the next failure pause for twice as long (2 s), the one after 4 s.
            // The service sets the pause from its own clock while the request runs, so it ends the
            // delay after some moment between the request's start and its end, however slow.
            try await self.setPause(cluster, seconds: -1)
            let started = ProjectClock.now()
            #expect(try await cluster.http.send(.POST, "/api/v1/auth/login", json: wrong).status == 401)
            let finished = ProjectClock.now()
            let second = try await self.pausedUntil(cluster)
            #expect((started + 2_000_000 - 1000 ... finished + 2_000_000 + 1000).contains(second), "second pause ends \(second - started) µs after the request started, which took \(finished - started) µs")
            try await self.setPause(cluster, seconds: -1)
            let later = ProjectClock.now()
            #expect(try await cluster.http.send(.POST, "/api/v1/auth/login", json: wrong).status == 401)
            let laterFinished = ProjectClock.now()
            let third = try await self.pausedUntil(cluster)
            #expect((later + 4_000_000 - 1000 ... laterFinished + 4_000_000 + 1000).contains(third), "third pause ends \(third - later) µs after the request started, which took \(laterFinished - later) µs")

            // It ends by itself: once the pause has passed, the right password signs in.
            try await Task.sleep(for: .microseconds(max(0, try await self.pausedUntil(cluster) - ProjectClock.now()) + 200_000))
            #expect(try await cluster.http.send(.POST, "/api/v1/auth/login", json: right).status == 200)
            // A success resets the count: one failure is free again.
            #expect(try await cluster.http.send(.POST, "/api/v1/auth/login", json: wrong).status == 401)
            #expect(try await self.pausedUntil(cluster) == 0)

            // Every step is in the audit log, including the pause.
            let details = try await cluster.withProjectStore { store in
                try await store.sql { db in
                    try await db.raw("SELECT outcome, detail FROM audit_log WHERE action = 'auth.login' ORDER BY id").all().map {
                        "\(try $0.decode(column: "outcome", as: String.self)): \(try $0.decode(column: "detail", as: String.self))"
                    }
                }
            }
            #expect(details.contains { $0.hasPrefix("failed: 2 failed sign-ins; sign-in paused for 1 s") }, "\(details)")
            #expect(details.filter { $0.hasPrefix("denied: throttled") }.count == 1, "\(details)")
            #expect(details.contains { $0.hasPrefix("success") })
        }
    }

    @Test("an administrator clears a throttle, by API and by CLI; others may not")
    func clearThrottle() async throws {
        try await TestCluster.run(backend: .sqlite, overrides: ["project.loginFailureLimit": "1", "gateway.rateLimit.authBurst": "100"]) { cluster in
            let admin = try await cluster.adminToken()
            _ = try await cluster.createUser("throttled@sparkops.test", adminToken: admin)
            let user = try await cluster.login(email: "throttled@sparkops.test", password: "user-password-123")["accessToken"] as! String
            #expect(try await cluster.http.send(.POST, "/api/v1/auth/login", json: ["email": "throttled@sparkops.test", "password": "nope-nope-nope"]).status == 401)
            try await self.setPause(cluster, seconds: 600, email: "throttled@sparkops.test")
            #expect(try await cluster.http.send(.POST, "/api/v1/auth/login", json: ["email": "throttled@sparkops.test", "password": "user-password-123"]).status == 429)

            let notAdmin = try await cluster.http.send(.POST, "/api/v1/auth/throttles/clear", token: user, json: ["email": "throttled@sparkops.test"])
            #expect(notAdmin.status == 403)
            let badEmail = try await cluster.http.send(.POST, "/api/v1/auth/throttles/clear", token: admin, json: ["email": "not an email"])
            #expect(badEmail.status == 400)
            #expect(badEmail.errorField == "email")
            let cleared = try await cluster.http.send(.POST, "/api/v1/auth/throttles/clear", token: admin, json: ["email": "Throttled@sparkops.test"])
            #expect(cleared.status == 200, "\(cleared.text)")
            #expect(cleared.json["clearedFailures"] as? Int == 1)
            #expect(try await cluster.http.send(.POST, "/api/v1/auth/login", json: ["email": "throttled@sparkops.test", "password": "user-password-123"]).status == 200)
            let audited = try await cluster.withProjectStore { store in
                try await store.sql { try await $0.raw("SELECT COUNT(*) AS n FROM audit_log WHERE action = 'auth.throttle_clear'").first()?.decode(column: "n", as: Int.self) ?? 0 }
            }
            #expect(audited == 1)
        }
    }

    @Test("a refresh token presented twice ends its family's access tokens within seconds", arguments: TestBackend.all)
    func revokedFamily(backend: TestBackend) async throws {
        try await TestCluster.run(backend: backend) { cluster in
            let session = try await cluster.login()
            let access = session["accessToken"] as! String
            let refresh = session["refreshToken"] as! String
            let other = try await cluster.login()["accessToken"] as! String
            #expect(try await cluster.http.send(.GET, "/api/v1/projects", token: access).status == 200)
            let renewed = try await cluster.http.send(.POST, "/api/v1/auth/refresh", json: ["refreshToken": refresh])
            #expect(renewed.status == 200)
            let renewedAccess = renewed.json["accessToken"] as! String
            // The old refresh token again: a replay, so the whole family ends.
            #expect(try await cluster.http.send(.POST, "/api/v1/auth/refresh", json: ["refreshToken": refresh]).status == 401)
            let started = ContinuousClock.now
            try await waitFor("the family's access tokens to be refused") {
                let old = try await cluster.http.send(.GET, "/api/v1/projects", token: access).status
                let new = try await cluster.http.send(.GET, "/api/v1/projects", token: renewedAccess).status
                return old == 401 && new == 401
            }
            let took = ContinuousClock.now - started
            #expect(took < .seconds(10), "took \(took)")
            // Another session of the same user is untouched.
            #expect(try await cluster.http.send(.GET, "/api/v1/projects", token: other).status == 200)

            // Logging out ends the family's other access tokens too, not only the calling one.
            let next = try await cluster.login()
            let first = next["accessToken"] as! String
            let second = try await cluster.http.send(.POST, "/api/v1/auth/refresh", json: ["refreshToken": next["refreshToken"] as! String]).json
            #expect(try await cluster.http.send(.POST, "/api/v1/auth/logout", token: second["accessToken"] as! String, json: ["refreshToken": second["refreshToken"] as! String]).status == 200)
            try await waitFor("the logged-out family's older access token to be refused") {
                try await cluster.http.send(.GET, "/api/v1/projects", token: first).status == 401
            }
        }
    }

    @Test("refusals are audited, one event per caller, route and interval, then a count", arguments: TestBackend.all)
    func deniedRequestsAudited(backend: TestBackend) async throws {
        // An interval long enough for each burst below to fall inside one, however loaded the machine.
        try await TestCluster.run(backend: backend, overrides: ["gateway.denialAuditSeconds": "20"]) { cluster in
            let admin = try await cluster.adminToken()
            let project = try await cluster.createProject("watched", token: admin)
            let outsiderID = try await cluster.createUser("outsider@sparkops.test", adminToken: admin)
            let viewerID = try await cluster.createUser("viewer@sparkops.test", adminToken: admin)
            _ = try await cluster.http.send(.POST, "/api/v1/projects/\(project)/members", token: admin, json: ["userId": viewerID, "role": "ROLE_VIEWER"])
            let outsider = try await cluster.login(email: "outsider@sparkops.test", password: "user-password-123")["accessToken"] as! String
            let viewer = try await cluster.login(email: "viewer@sparkops.test", password: "user-password-123")["accessToken"] as! String

            for _ in 0 ..< 5 {
                #expect(try await cluster.http.send(.GET, "/api/v1/projects/\(project)", token: outsider).status == 404)
            }
            #expect(try await cluster.http.send(.GET, "/api/v1/projects/\(project)/api-keys", token: viewer).status == 403)
            for _ in 0 ..< 3 {
                #expect(try await cluster.http.send(.GET, "/api/v1/projects/\(project)/members", token: "spk_forged-key").status == 401)
            }

            // The 404s: one event at once, then one count of the other four once the interval ends.
            try await waitFor("the outsider's count", within: .seconds(120)) {
                try await self.denials(cluster, actor: outsiderID).count == 2
            }
            let outsiderEvents = try await self.denials(cluster, actor: outsiderID)
            #expect(outsiderEvents.allSatisfy { $0.project == project && $0.target == "GET /api/v1/projects/{project_id}" })
            #expect(outsiderEvents.contains { $0.detail.hasPrefix("404 NOT_FOUND") && !$0.detail.contains("more times") })
            #expect(outsiderEvents.contains { $0.detail.contains("(4 more times") })
            // The owner reads them in the project's audit log.
            let log = try await cluster.http.send(.GET, "/api/v1/projects/\(project)/audit-events?action=api.denied", token: admin)
            #expect((log.json["events"] as! [[String: Any]]).contains { $0["actor"] as? String == outsiderID })

            let viewerEvents = try await self.denials(cluster, actor: viewerID)
            #expect(viewerEvents.count == 1)
            #expect(viewerEvents.first?.detail.hasPrefix("403 PERMISSION_DENIED") == true)
            try await waitFor("the bad credentials' count", within: .seconds(120)) {
                try await self.denials(cluster, actor: "anonymous").count == 2
            }
            let anonymous = try await self.denials(cluster, actor: "anonymous")
            #expect(anonymous.allSatisfy { $0.detail.hasPrefix("401 UNAUTHENTICATED") && $0.ip == "127.0.0.1" })
            #expect(anonymous.contains { $0.detail.contains("(2 more times") })
        }
    }

    struct Denial: Sendable {
        var project: String
        var target: String
        var detail: String
        var ip: String
    }

    func denials(_ cluster: TestCluster, actor: String) async throws -> [Denial] {
        try await cluster.withProjectStore { store in
            try await store.sql { db in
                try await db.raw("SELECT project_id, target, detail, ip FROM audit_log WHERE action = 'api.denied' AND actor = \(bind: actor) ORDER BY id").all().map {
                    Denial(
                        project: try $0.decode(column: "project_id", as: String.self),
                        target: try $0.decode(column: "target", as: String.self),
                        detail: try $0.decode(column: "detail", as: String.self),
                        ip: try $0.decode(column: "ip", as: String.self)
                    )
                }
            }
        }
    }

    /// Until when the email's sign-ins are paused (µs since 1970; 0 when not paused).
    func pausedUntil(_ cluster: TestCluster, email: String = TestCluster.adminEmail) async throws -> Int64 {
        try await cluster.withProjectStore { store in
            try await store.sql { db in
                try await db.raw("SELECT blocked_until FROM login_failures WHERE email = \(bind: email)").first()?.decode(column: "blocked_until", as: Int64.self) ?? 0
            }
        }
    }

    /// Moves the email's pause to end `seconds` from now (negative: it ended).
    func setPause(_ cluster: TestCluster, seconds: Int64, email: String = TestCluster.adminEmail) async throws {
        try await cluster.withProjectStore { store in
            try await store.sql { db in
                try await db.raw("UPDATE login_failures SET blocked_until = \(bind: ProjectClock.now() + seconds * 1_000_000) WHERE email = \(bind: email)").run()
            }
        }
    }
}

enum ProjectClock {
    /// Microseconds since 1970, as the project service stores times.
    static func now() -> Int64 { Int64(Date().timeIntervalSince1970 * 1_000_000) }
}
