import Foundation
import Logging
import SparkKit
import Synchronization

/// Decides whether a request under a key (a principal, an IP) may proceed, by the generic cell rate
/// algorithm: `perMinute` requests a minute on average, `burst` at once.
protocol RateLimiter: Sendable {
    /// Nil when allowed; otherwise how long to wait before retrying.
    func check(key: String, limit: GatewayConfig.Limit) async throws -> Duration?
}

/// Limits held in this process: right for one gateway.
final class InMemoryRateLimiter: RateLimiter {
    private struct State {
        /// Theoretical arrival time of the next request per key, in seconds.
        var tat: [String: Double] = [:]
        var lastSweep: Double = 0
    }

    private let state = Mutex(State())
    private let clock: @Sendable () -> Double

    init(clock: @escaping @Sendable () -> Double = { Date().timeIntervalSince1970 }) {
        self.clock = clock
    }

    func check(key: String, limit: GatewayConfig.Limit) async throws -> Duration? {
        let now = self.clock()
        let interval = 60.0 / Double(max(1, limit.perMinute))
        return self.state.withLock { state -> Duration? in
            if now - state.lastSweep > 60 {
                state.tat = state.tat.filter { $0.value > now }
                state.lastSweep = now
            }
            let tat = max(state.tat[key] ?? now, now)
            let next = tat + interval
            let allowAt = next - Double(max(1, limit.burst)) * interval
            if now < allowAt {
                return .milliseconds(Int64(((allowAt - now) * 1000).rounded(.up)))
            }
            state.tat[key] = next
            return nil
        }
    }
}

/// Limits shared by every gateway through Redis: the same algorithm as one Lua script, so that the
/// check and the update are one atomic step, on Redis's clock.
final class RedisRateLimiter: RateLimiter {
    static let script = """
        local now_parts = redis.call('TIME')
        local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
        local interval = tonumber(ARGV[1])
        local burst = tonumber(ARGV[2])
        local tat = tonumber(redis.call('GET', KEYS[1]) or now)
        if tat < now then tat = now end
        local next_tat = tat + interval
        local allow_at = next_tat - burst * interval
        if now < allow_at then return allow_at - now end
        redis.call('SET', KEYS[1], next_tat, 'PX', math.ceil(next_tat - now) + 1000)
        return -1
        """

    private let redis: RedisClient
    private let prefix: String
    private let sha = Mutex<String?>(nil)
    private let outage: RedisOutage
    /// While Redis cannot be reached, each replica limits on its own rather than stop serving.
    private let fallback = InMemoryRateLimiter()

    /// - Parameter prefix: namespaces the keys (`redis.keyPrefix`), for deployments sharing a Redis.
    init(redis: RedisClient, prefix: String = "sparkops", logger: Logger = Logger(label: "sparkops.gateway")) {
        self.redis = redis
        self.prefix = prefix
        self.outage = RedisOutage(what: "rate limits", logger: logger)
    }

    func check(key: String, limit: GatewayConfig.Limit) async throws -> Duration? {
        do {
            let wait = try await self.shared(key: key, limit: limit)
            self.outage.ended()
            return wait
        } catch let error as RedisError where error.isConnectionFailure {
            self.outage.began(error)
            return try await self.fallback.check(key: key, limit: limit)
        }
    }

    private func shared(key: String, limit: GatewayConfig.Limit) async throws -> Duration? {
        let interval = 60_000.0 / Double(max(1, limit.perMinute))
        let arguments = ["\(self.prefix):ratelimit:\(key)", "\((interval * 1000).rounded() / 1000)", "\(max(1, limit.burst))"]
        let reply: RESPValue
        if let sha = self.sha.withLock({ $0 }) {
            do {
                reply = try await self.redis.send(["EVALSHA", sha, "1"] + arguments)
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
        return try await self.redis.send(["EVAL", Self.script, "1"] + arguments)
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
