import Foundation
package import Logging
package import SparkKit
import Synchronization

/// One limit to apply to a request: its key (`ip:…`, `principal:…`) and the rate under it.
package struct RateLimitCheck: Sendable {
    package var key: String
    package var limit: GatewayConfig.Limit

    package init(key: String, limit: GatewayConfig.Limit) {
        self.key = key
        self.limit = limit
    }
}

/// Decides whether a request under a key (a principal, an IP) may proceed, by the generic cell rate
/// algorithm: `perMinute` requests a minute on average, `burst` at once.
package protocol RateLimiter: Sendable {
    /// Applies the checks in order, as one step: each one that allows the request counts it under
    /// its key; the first that refuses stops there. Nil when all allow; otherwise how long to wait
    /// before retrying. (The same as calling `check(key:limit:)` for each in turn, in one round
    /// trip where the limits are shared.)
    func check(_ checks: [RateLimitCheck]) async throws -> Duration?
}

extension RateLimiter {
    /// Nil when allowed; otherwise how long to wait before retrying.
    package func check(key: String, limit: GatewayConfig.Limit) async throws -> Duration? {
        try await self.check([RateLimitCheck(key: key, limit: limit)])
    }
}

/// Limits held in this process: right for one gateway.
package final class InMemoryRateLimiter: RateLimiter {
    private struct State {
        /// Theoretical arrival time of the next request per key, in seconds.
        var tat: [String: Double] = [:]
        var lastSweep: Double = 0
    }

    private let state = Mutex(State())
    private let clock: @Sendable () -> Double

    package init(clock: @escaping @Sendable () -> Double = { Date().timeIntervalSince1970 }) {
        self.clock = clock
    }

    package func check(_ checks: [RateLimitCheck]) async throws -> Duration? {
        let now = self.clock()
        return self.state.withLock { state -> Duration? in
            if now - state.lastSweep > 60 {
                state.tat = state.tat.filter { $0.value > now }
                state.lastSweep = now
            }
            for check in checks {
                let interval = 60.0 / Double(max(1, check.limit.perMinute))
                let tat = max(state.tat[check.key] ?? now, now)
                let next = tat + interval
                let allowAt = next - Double(max(1, check.limit.burst)) * interval
                if now < allowAt {
                    return .milliseconds(Int64(((allowAt - now) * 1000).rounded(.up)))
                }
                state.tat[check.key] = next
            }
            return nil
        }
    }
}

/// Limits shared by every gateway through Redis: the same algorithm as one Lua script, so that the
/// checks and their updates are one atomic step, on Redis's clock, in one round trip however many
/// keys a request is limited under. (The keys of one call must live on one Redis node.)
package final class RedisRateLimiter: RateLimiter {
    /// KEYS: the limits' keys; ARGV: each key's interval in milliseconds and burst, in turn.
    static let script = """
        local now_parts = redis.call('TIME')
        local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
        for i = 1, #KEYS do
            local interval = tonumber(ARGV[2 * i - 1])
            local burst = tonumber(ARGV[2 * i])
            local tat = tonumber(redis.call('GET', KEYS[i]) or now)
            if tat < now then tat = now end
            local next_tat = tat + interval
            local allow_at = next_tat - burst * interval
            if now < allow_at then return allow_at - now end
            redis.call('SET', KEYS[i], next_tat, 'PX', math.ceil(next_tat - now) + 1000)
        end
        return -1
        """

    private let redis: RedisClient
    private let prefix: String
    private let sha = Mutex<String?>(nil)
    private let outage: RedisOutage
    /// While Redis cannot be reached, each replica limits on its own rather than stop serving.
    private let fallback = InMemoryRateLimiter()

    /// - Parameter prefix: namespaces the keys (`redis.keyPrefix`), for deployments sharing a Redis.
    package init(redis: RedisClient, prefix: String = "sparkops", logger: Logger = Logger(label: "sparkops.gateway")) {
        self.redis = redis
        self.prefix = prefix
        self.outage = RedisOutage(what: "rate limits", logger: logger)
    }

    package func check(_ checks: [RateLimitCheck]) async throws -> Duration? {
        guard !checks.isEmpty else { return nil }
        do {
            let wait = try await self.shared(checks)
            self.outage.ended()
            return wait
        } catch let error as RedisError where error.isConnectionFailure {
            self.outage.began(error)
            return try await self.fallback.check(checks)
        }
    }

    private func shared(_ checks: [RateLimitCheck]) async throws -> Duration? {
        // numkeys, the keys, then each key's interval (ms) and burst.
        var arguments = ["\(checks.count)"]
        for check in checks { arguments.append("\(self.prefix):ratelimit:\(check.key)") }
        for check in checks {
            let interval = 60_000.0 / Double(max(1, check.limit.perMinute))
            arguments.append("\((interval * 1000).rounded() / 1000)")
            arguments.append("\(max(1, check.limit.burst))")
        }
        let reply: RESPValue
        if let sha = self.sha.withLock({ $0 }) {
            do {
                reply = try await self.redis.send(["EVALSHA", sha] + arguments)
            } catch let error as RedisError where error.description.hasPrefix("NOSCRIPT") {
                reply = try await self.load(arguments)
            }
        } else {
            reply = try await self.load(arguments)
        }
        guard let wait = reply.integer else { throw RedisError("unexpected rate limit reply \(reply)") }
        return wait < 0 ? nil : .milliseconds(wait)
    }

    private func load(_ arguments: [String]) async throws -> RESPValue {
        if let sha = try await self.redis.send(["SCRIPT", "LOAD", Self.script]).string {
            self.sha.withLock { $0 = sha }
        }
        return try await self.redis.send(["EVAL", Self.script] + arguments)
    }
}

/// Logs once when Redis becomes unreachable for a part of the gateway, and once when it is back.
final class RedisOutage: Sendable {
    private let down = Mutex(false)
    private let what: String
    private let logger: Logger

    init(what: String, logger: Logger) {
        self.what = what
        self.logger = logger
    }

    func began(_ error: RedisError) {
        let wasDown = self.down.withLock { down in
            defer { down = true }
            return down
        }
        if !wasDown {
            self.logger.warning("Redis is unreachable: \(self.what) are held in this replica until it is back", metadata: ["error": "\(error)"])
        }
    }

    func ended() {
        let wasDown = self.down.withLock { down in
            defer { down = false }
            return down
        }
        if wasDown {
            self.logger.info("Redis is back: \(self.what) are shared again")
        }
    }
}
