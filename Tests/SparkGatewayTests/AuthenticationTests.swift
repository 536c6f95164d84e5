import Crypto
import Foundation
import JWTKit
import NIOHTTP1
import SQLKit
import SparkKit
import SparkTesting
import Testing

/// Logins, sessions, access tokens and API keys through the gateway, on every backend.
@Suite("Gateway authentication")
struct AuthenticationTests {
    @Test("login returns a session; a wrong password and an unknown email get the same 401", arguments: TestBackend.all)
    func login(backend: TestBackend) async throws {
        try await TestCluster.run(backend: backend) { cluster in
            let session = try await cluster.login()
            #expect((session["accessToken"] as? String)?.split(separator: ".").count == 3)
            #expect((session["refreshToken"] as? String)?.hasPrefix("rtk_") == true)
            #expect((session["user"] as? [String: Any])?["email"] as? String == TestCluster.adminEmail)

            let wrong = try await cluster.http.send(.POST, "/api/v1/auth/login", json: ["email": TestCluster.adminEmail, "password": "not-the-password"])
            let unknown = try await cluster.http.send(.POST, "/api/v1/auth/login", json: ["email": "nobody@sparkops.test", "password": "not-the-password"])
            #expect(wrong.status == 401)
            #expect(unknown.status == 401)
            #expect(wrong.errorMessage == unknown.errorMessage)
            #expect(wrong.errorMessage == "invalid email or password")

            let missing = try await cluster.http.send(.POST, "/api/v1/auth/login", json: ["email": TestCluster.adminEmail])
            #expect(missing.status == 400)
            #expect(missing.errorField == "password")
        }
    }

    @Test("a refresh token works once; presenting it again revokes its whole family", arguments: TestBackend.all)
    func refreshRotation(backend: TestBackend) async throws {
        try await TestCluster.run(backend: backend) { cluster in
            let first = try await cluster.login()["refreshToken"] as! String
            let rotated = try await cluster.http.send(.POST, "/api/v1/auth/refresh", json: ["refreshToken": first])
            #expect(rotated.status == 200)
            let second = rotated.json["refreshToken"] as! String
            #expect(second != first)

            // The first token again: a replay. It fails, and so does its successor from now on.
            let replay = try await cluster.http.send(.POST, "/api/v1/auth/refresh", json: ["refreshToken": first])
            #expect(replay.status == 401)
            let successor = try await cluster.http.send(.POST, "/api/v1/auth/refresh", json: ["refreshToken": second])
            #expect(successor.status == 401)

            // Another session of the same user is unaffected.
            let other = try await cluster.login()["refreshToken"] as! String
            let otherRefresh = try await cluster.http.send(.POST, "/api/v1/auth/refresh", json: ["refreshToken": other])
            #expect(otherRefresh.status == 200)

            let garbage = try await cluster.http.send(.POST, "/api/v1/auth/refresh", json: ["refreshToken": "rtk_nonsense"])
            #expect(garbage.status == 401)

            let reuse = try await cluster.withProjectStore { store in
                try await store.sql { db in
                    try await db.raw("SELECT COUNT(*) AS n FROM audit_log WHERE action = 'auth.refresh_reuse'").first()?.decode(column: "n", as: Int.self)
                }
            }
            #expect(reuse == 1)
        }
    }

    @Test("logout ends the access token and the session", arguments: TestBackend.all)
    func logout(backend: TestBackend) async throws {
        try await TestCluster.run(backend: backend) { cluster in
            let session = try await cluster.login()
            let token = session["accessToken"] as! String
            let me = try await cluster.http.send(.GET, "/api/v1/users/me", token: token)
            #expect(me.status == 200)
            let out = try await cluster.http.send(.POST, "/api/v1/auth/logout", token: token, json: ["refreshToken": session["refreshToken"] as! String])
            #expect(out.status == 200)
            let after = try await cluster.http.send(.GET, "/api/v1/users/me", token: token)
            #expect(after.status == 401)
            let refresh = try await cluster.http.send(.POST, "/api/v1/auth/refresh", json: ["refreshToken": session["refreshToken"] as! String])
            #expect(refresh.status == 401)
        }
    }

    @Test("a password change ends every token issued before it", arguments: TestBackend.all)
    func passwordChange(backend: TestBackend) async throws {
        try await TestCluster.run(backend: backend) { cluster in
            let admin = try await cluster.adminToken()
            _ = try await cluster.createUser("dana@sparkops.test", adminToken: admin)
            let session = try await cluster.login(email: "dana@sparkops.test", password: "user-password-123")
            let token = session["accessToken"] as! String
            let short = try await cluster.http.send(.POST, "/api/v1/users/me/password", token: token, json: ["currentPassword": "user-password-123", "newPassword": "short"])
            #expect(short.status == 400)
            #expect(short.errorField == "newPassword")
            let wrong = try await cluster.http.send(.POST, "/api/v1/users/me/password", token: token, json: ["currentPassword": "guess-guess-guess", "newPassword": "a-new-password-456"])
            #expect(wrong.status == 403)

            try await Task.sleep(for: .milliseconds(1100))  // tokens carry whole seconds
            let changed = try await cluster.http.send(.POST, "/api/v1/users/me/password", token: token, json: ["currentPassword": "user-password-123", "newPassword": "a-new-password-456"])
            #expect(changed.status == 200)
            let old = try await cluster.http.send(.GET, "/api/v1/users/me", token: token)
            #expect(old.status == 401)
            let refresh = try await cluster.http.send(.POST, "/api/v1/auth/refresh", json: ["refreshToken": session["refreshToken"] as! String])
            #expect(refresh.status == 401)
            try await Task.sleep(for: .milliseconds(1100))
            let fresh = try await cluster.login(email: "dana@sparkops.test", password: "a-new-password-456")
            let now = try await cluster.http.send(.GET, "/api/v1/users/me", token: fresh["accessToken"] as? String)
            #expect(now.status == 200)
        }
    }

    @Test("missing, malformed, expired, forged, alg none and wrong-key access tokens are refused with 401")
    func badTokens() async throws {
        try await TestCluster.run(backend: .sqlite) { cluster in
            let valid = try await cluster.adminToken()
            let parts = valid.split(separator: ".").map(String.init)
            let header = try JSONSerialization.jsonObject(with: Data(base64URL: parts[0])!) as! [String: Any]
            var claims = try JSONSerialization.jsonObject(with: Data(base64URL: parts[1])!) as! [String: Any]
            let kid = header["kid"] as! String

            func encode(_ object: [String: Any]) -> String {
                SparkJWKS.base64URL(try! JSONSerialization.data(withJSONObject: object))
            }
            func signed(_ claims: [String: Any], with key: Curve25519.Signing.PrivateKey, alg: String = "EdDSA") -> String {
                let input = encode(["alg": alg, "kid": kid, "typ": "JWT"]) + "." + encode(claims)
                return input + "." + SparkJWKS.base64URL(try! key.signature(for: Data(input.utf8)))
            }
            let strangerKey = Curve25519.Signing.PrivateKey()

            var expired = claims
            expired["exp"] = Date().timeIntervalSince1970 - 60
            var wrongAudience = claims
            wrongAudience["aud"] = "someone-else"
            claims["typ"] = "refresh"
            let cases: [(String, String?)] = [
                ("no credential", nil),
                ("not a token", "hello"),
                ("three garbage parts", "a.b.c"),
                ("alg none", encode(["alg": "none", "kid": kid]) + "." + parts[1] + "."),
                ("alg HS256", encode(["alg": "HS256", "kid": kid]) + "." + parts[1] + "." + parts[2]),
                ("tampered payload", parts[0] + "." + encode(claims) + "." + parts[2]),
                ("signed by another key under our kid", signed(claims, with: strangerKey)),
                ("expired, signed by another key", signed(expired, with: strangerKey)),
                ("wrong audience, signed by another key", signed(wrongAudience, with: strangerKey)),
                ("unknown key id", encode(["alg": "EdDSA", "kid": "sig_unknown"]) + "." + parts[1] + "." + parts[2]),
                ("API key that does not exist", "spk_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
            ]
            for (name, token) in cases {
                let reply = try await cluster.http.send(.GET, "/api/v1/projects", token: token)
                #expect(reply.status == 401, "\(name): \(reply.status) \(reply.text)")
                #expect(reply.errorCode == "UNAUTHENTICATED", "\(name)")
                #expect(reply.headers.first(name: "WWW-Authenticate") == "Bearer", "\(name)")
            }
            let fine = try await cluster.http.send(.GET, "/api/v1/projects", token: valid)
            #expect(fine.status == 200)
        }
    }

    @Test("an API key is shown once, stored hashed, scoped to its project and role, and ends when revoked or expired", arguments: TestBackend.all)
    func apiKeys(backend: TestBackend) async throws {
        try await TestCluster.run(backend: backend) { cluster in
            let admin = try await cluster.adminToken()
            let project = try await cluster.createProject("keys", token: admin)
            let other = try await cluster.createProject("other", token: admin)
            let created = try await cluster.http.send(.POST, "/api/v1/projects/\(project)/api-keys", token: admin, json: ["name": "reader", "role": "ROLE_VIEWER"])
            #expect(created.status == 201)
            let key = created.json["key"] as! String
            let keyID = (created.json["apiKey"] as! [String: Any])["id"] as! String
            #expect(key.hasPrefix("spk_"))

            let listed = try await cluster.http.send(.GET, "/api/v1/projects/\(project)/api-keys", token: admin)
            #expect(!listed.text.contains(key))
            let stored = try await cluster.withProjectStore { store in
                try await store.sql { try await $0.raw("SELECT key_hash FROM api_keys").all().map { try $0.decode(column: "key_hash", as: String.self) } }
            }
            #expect(stored == [SparkSecrets.digest(key)])

            let read = try await cluster.http.send(.GET, "/api/v1/projects/\(project)", token: key)
            #expect(read.status == 200)
            // Its own project only: another project's id is simply not found.
            let elsewhere = try await cluster.http.send(.GET, "/api/v1/projects/\(other)", token: key)
            #expect(elsewhere.status == 404)
            // A viewer key cannot manage keys.
            let manage = try await cluster.http.send(.GET, "/api/v1/projects/\(project)/api-keys", token: key)
            #expect(manage.status == 403)
            // API keys are only accepted in the Authorization header.
            let inQuery = try await cluster.http.send(.GET, "/api/v1/projects/\(project)?api_key=\(key)")
            #expect(inQuery.status == 401)

            let revoked = try await cluster.http.send(.DELETE, "/api/v1/projects/\(project)/api-keys/\(keyID)", token: admin)
            #expect(revoked.status == 200)
            #expect(revoked.json["revokeTime"] != nil)
            let afterRevoke = try await cluster.http.send(.GET, "/api/v1/projects/\(project)", token: key)
            #expect(afterRevoke.status == 401)

            // An expired key.
            let second = try await cluster.http.send(.POST, "/api/v1/projects/\(project)/api-keys", token: admin, json: ["name": "short", "role": "ROLE_VIEWER", "ttlDays": 1])
            let secondKey = second.json["key"] as! String
            let secondID = (second.json["apiKey"] as! [String: Any])["id"] as! String
            try await cluster.withProjectStore { store in
                try await store.sql { try await $0.raw("UPDATE api_keys SET expires_at = 1 WHERE id = \(bind: secondID)").run() }
            }
            try await Task.sleep(for: .seconds(5.5))  // past the gateway's cache
            let expired = try await cluster.http.send(.GET, "/api/v1/projects/\(project)", token: secondKey)
            #expect(expired.status == 401)

            // A key's role is at most its creator's.
            let tooMuch = try await cluster.http.send(.POST, "/api/v1/projects/\(project)/api-keys", token: admin, json: ["name": "x", "role": "ROLE_OWNER", "ttlDays": 9999])
            #expect(tooMuch.status == 400)
            #expect(tooMuch.errorField == "ttlDays")
        }
    }
}

extension Data {
    init?(base64URL: String) {
        var base64 = base64URL.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        while base64.count % 4 != 0 { base64 += "=" }
        self.init(base64Encoded: base64)
    }
}
