import Foundation
import Logging
import SparkKit
import SparkProto
import SwiftProtobuf
import Synchronization

/// Where WebSocket tickets wait between `POST /api/v1/ws/tickets` and the socket that uses them.
protocol TicketStore: Sendable {
    /// Keeps `identity` under `ticket` for `ttl`.
    func put(_ ticket: String, identity: SocketIdentity, ttl: Duration) async throws
    /// The ticket's identity, once: a second call, or a call after the ttl, gets nil.
    func take(_ ticket: String) async throws -> SocketIdentity?
}

/// Tickets in this gateway's memory: right for one gateway.
final class InMemoryTicketStore: TicketStore {
    private struct Entry {
        var identity: SocketIdentity
        var expires: ContinuousClock.Instant
    }

    private let entries = Mutex<[String: Entry]>([:])

    func put(_ ticket: String, identity: SocketIdentity, ttl: Duration) async throws {
        let now = ContinuousClock.now
        self.entries.withLock { entries in
            entries = entries.filter { $0.value.expires > now }
            entries[SparkSecrets.digest(ticket)] = Entry(identity: identity, expires: now + ttl)
        }
    }

    func take(_ ticket: String) async throws -> SocketIdentity? {
        self.entries.withLock { entries in
            guard let entry = entries.removeValue(forKey: SparkSecrets.digest(ticket)), entry.expires > .now else { return nil }
            return entry.identity
        }
    }
}

/// Tickets in Redis, shared by every gateway replica: a ticket issued by one opens a socket on any
/// other, so no sticky sessions are needed. Keys are the ticket's SHA-256 (the ticket itself is a
/// credential), Redis expires them, and `GETDEL` (Redis 6.2 or later) takes one atomically, so two
/// replicas cannot both redeem it.
///
/// While Redis cannot be reached, tickets are kept in this replica (a socket opened on the replica
/// that issued its ticket works; on another, the client asks for a new ticket), and taking one
/// looks in both places.
final class RedisTicketStore: TicketStore {
    private let redis: RedisClient
    private let prefix: String
    private let outage: RedisOutage
    private let fallback = InMemoryTicketStore()

    init(redis: RedisClient, prefix: String, logger: Logger = Logger(label: "sparkops.gateway")) {
        self.redis = redis
        self.prefix = prefix
        self.outage = RedisOutage(what: "WebSocket tickets", logger: logger)
    }

    func put(_ ticket: String, identity: SocketIdentity, ttl: Duration) async throws {
        do {
            try await self.shared(put: ticket, identity: identity, ttl: ttl)
            self.outage.ended()
        } catch let error as RedisError where error.isConnectionFailure {
            self.outage.began(error)
            try await self.fallback.put(ticket, identity: identity, ttl: ttl)
        }
    }

    func take(_ ticket: String) async throws -> SocketIdentity? {
        if let identity = try await self.fallback.take(ticket) { return identity }
        do {
            return try await self.shared(take: ticket)
        } catch let error as RedisError where error.isConnectionFailure {
            self.outage.began(error)
            return nil
        }
    }

    private func key(_ ticket: String) -> [UInt8] {
        Array("\(self.prefix):wsticket:\(SparkSecrets.digest(ticket))".utf8)
    }

    private func shared(put ticket: String, identity: SocketIdentity, ttl: Duration) async throws {
        let milliseconds = max(1, ttl.components.seconds * 1000 + ttl.components.attoseconds / 1_000_000_000_000_000)
        let value = identity.serialized
        let reply = try await self.redis.send(bytes: [Array("SET".utf8), self.key(ticket), value, Array("PX".utf8), Array("\(milliseconds)".utf8)])
        guard reply.string == "OK" else { throw RedisError("unexpected reply to SET: \(reply)") }
    }

    private func shared(take ticket: String) async throws -> SocketIdentity? {
        switch try await self.redis.send(bytes: [Array("GETDEL".utf8), self.key(ticket)]) {
        case .null:
            return nil
        case .bulkString(let bytes):
            return try SocketIdentity(serialized: bytes)
        case let other:
            throw RedisError("unexpected reply to GETDEL: \(other)")
        }
    }
}
