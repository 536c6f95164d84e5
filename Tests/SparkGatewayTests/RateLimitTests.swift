import Foundation
import NIOHTTP1
import SparkGateway
import SparkKit
import SparkTesting
import Testing

/// The gateway's rate limits: several keys checked as one step, the per-IP limit applied to every
/// request (also those whose dispatcher applies it, together with the principal's), and the
/// bearer credential read from `Authorization`.
@Suite("Gateway rate limits")
struct RateLimitTests {
    @Test("Authorization: the Bearer scheme in any case, blanks around the credential; anything else is no credential")
    func bearerCredential() {
        #expect(BearerCredential.parse("Bearer spk_abc") == "spk_abc")
        #expect(BearerCredential.parse("bearer spk_abc") == "spk_abc")
        #expect(BearerCredential.parse("BEARER \t spk_abc \t") == "spk_abc")
        #expect(BearerCredential.parse("Bearer a.b.c") == "a.b.c")
        #expect(BearerCredential.parse("Bearer a b") == "a b")
        #expect(BearerCredential.parse("Basic dXNlcjpwYXNz") == nil)
        #expect(BearerCredential.parse("Bearer") == nil)
        #expect(BearerCredential.parse("Bearer    ") == nil)
        #expect(BearerCredential.parse("Bearerx spk_abc") == nil)
        #expect(BearerCredential.parse("Bear spk_abc") == nil)
        #expect(BearerCredential.parse("") == nil)
        #expect(BearerCredential.parse("Bëarer spk_abc") == nil)
    }

    /// The limiters to compare: in memory, and Redis when the tests have one.
    static var limiters: [String] { ["memory"] + (TestBackend.all.compactMap(\.redisURL).first.map { [$0] } ?? []) }

    func withLimiter(_ kind: String, _ body: (any RateLimiter, String) async throws -> Void) async throws {
        let prefix = "test-\(UUID().uuidString.prefix(8))"
        guard kind != "memory" else {
            try await body(InMemoryRateLimiter(), prefix)
            return
        }
        let redis = try RedisClient(url: kind)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await redis.run() }
            defer { group.cancelAll() }
            try await body(RedisRateLimiter(redis: redis, prefix: prefix), prefix)
        }
    }

    @Test("checks in one step: each allowing check counts, the first refusal stops the rest, as checks made one after another would", arguments: Self.limiters)
    func severalKeys(limiter kind: String) async throws {
        try await withLimiter(kind) { limiter, prefix in
            // One request a minute, bursts of 3 and 1: the waits are tens of seconds.
            let ip = RateLimitCheck(key: "ip:\(prefix)", limit: .init(perMinute: 1, burst: 3))
            let principal = RateLimitCheck(key: "principal:\(prefix)", limit: .init(perMinute: 1, burst: 1))
            let other = RateLimitCheck(key: "principal:\(prefix)-other", limit: .init(perMinute: 1, burst: 1))
            #expect(try await limiter.check([]) == nil)
            #expect(try await limiter.check([ip, principal]) == nil)
            // The principal refuses; the IP's check before it counted (2 of 3 used).
            let refused = try #require(try await limiter.check([ip, principal]))
            #expect(refused > .seconds(30) && refused <= .seconds(60), "\(refused)")
            // The third of the IP's burst, then the IP refuses and the check after it does not count.
            #expect(try await limiter.check(key: ip.key, limit: ip.limit) == nil)
            #expect(try await limiter.check([ip, other]) != nil)
            #expect(try await limiter.check([other]) == nil, "a check after a refusal was counted")
            #expect(try await limiter.check([other]) != nil)
        }
    }

    @Test("the per-IP limit covers authenticated reads (checked with the principal's), bad credentials and requests without one", arguments: TestBackend.all)
    func ipLimitEverywhere(backend: TestBackend) async throws {
        try await TestCluster.run(backend: backend, overrides: ["gateway.rateLimit.ipPerMinute": "1", "gateway.rateLimit.ipBurst": "6"]) { cluster in
            // The login is the first of the IP's 6 requests.
            let admin = try await cluster.adminToken()
            var statuses: [Int] = []
            for _ in 0 ..< 8 {
                statuses.append(try await cluster.http.send(.GET, "/api/v1/projects", token: admin).status)
            }
            let allowed = statuses.prefix { $0 == 200 }.count
            #expect(allowed >= 1 && allowed <= 5, "\(statuses)")
            #expect(statuses.dropFirst(allowed).allSatisfy { $0 == 429 }, "\(statuses)")
            // The IP is spent: a bad credential is refused by the limit before it is checked, and
            // so is a request with no credential, or with one for a route that does not exist.
            let bad = try await cluster.http.send(.GET, "/api/v1/projects", token: "spk_not_a_key")
            #expect(bad.status == 429, "\(bad.text)")
            #expect((Int(bad.headers.first(name: "Retry-After") ?? "") ?? 0) > 1)
            #expect(try await cluster.http.send(.GET, "/api/v1/projects").status == 429)
            #expect(try await cluster.http.send(.GET, "/api/v1/no-such-route", token: admin).status == 429)
            #expect(try await cluster.http.send(.POST, "/api/v1/auth/login", json: ["email": TestCluster.adminEmail, "password": "x"]).status == 429)
        }
    }
}
