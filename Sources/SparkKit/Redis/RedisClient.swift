import DequeModule
public import Logging
public import NIOCore
public import NIOPosix
public import ServiceLifecycle
import Synchronization
import Foundation

/// A Redis client: one pipelined connection over SwiftNIO, RESP encoded and decoded by libhiredis,
/// reconnected with backoff when it drops. No call blocks an event loop.
///
/// ```swift
/// let redis = try RedisClient(url: "redis://127.0.0.1:6379/0")
/// // run `redis` in the service group, then:
/// let count = try await redis.send(["INCR", "hits"]).integer
/// ```
public final class RedisClient: Service, Sendable {
    public struct Endpoint: Sendable, Hashable {
        public var host: String
        public var port: Int
        public var password: String?
        public var database: Int
    }

    private struct State {
        var channel: (any Channel)?
        var waiters: [CheckedContinuation<any Channel, any Error>] = []
        var lastError: String?
        var shutdown = false
    }

    public let endpoint: Endpoint
    private let group: any EventLoopGroup
    private let logger: Logger
    private let replyTimeout: TimeAmount
    private let state = Mutex(State())

    /// - Parameters:
    ///   - url: `redis://[:password@]host[:port][/database]`.
    ///   - replyTimeout: how long a command waits for its reply. When it passes, the command fails
    ///     as a connection failure and the connection is closed (and reopened by ``run()``): the
    ///     replies are matched to commands by order, so a late one could not be told apart.
    public init(
        url: String,
        replyTimeout: Duration = .seconds(10),
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = Logger(label: "sparkops.redis")
    ) throws {
        self.endpoint = try Self.parse(url)
        self.group = eventLoopGroup
        self.logger = logger
        self.replyTimeout = max(.nanoseconds(1), TimeAmount(replyTimeout))
    }

    static func parse(_ url: String) throws -> Endpoint {
        guard let components = URLComponents(string: url), components.scheme == "redis", let host = components.host, !host.isEmpty else {
            throw RedisError("SPARKOPS_REDIS_URL must look like redis://[:password@]host[:port][/database]")
        }
        let database = Int(components.path.drop { $0 == "/" }) ?? 0
        return Endpoint(host: host, port: components.port ?? 6379, password: components.password, database: database)
    }

    // MARK: Commands

    /// Sends a command and returns its reply; a Redis error reply throws ``RedisError``.
    public func send(_ arguments: [String]) async throws -> RESPValue {
        try await self.send(bytes: arguments.map { Array($0.utf8) })
    }

    public func send(bytes arguments: [[UInt8]]) async throws -> RESPValue {
        let command = try RESPEncoder.encode(arguments)
        let reply: RESPValue
        do {
            let channel = try await self.connectedChannel()
            reply = try await channel.redisCommand(command, timeout: self.replyTimeout).get()
        } catch {
            throw RedisError("\(error)", isConnectionFailure: true)
        }
        if case .error(let message) = reply { throw RedisError(message) }
        return reply
    }

    // MARK: Connection

    public func run() async throws {
        var attempt = 0
        // Graceful shutdown and cancellation both close the connection, which ends the loop.
        let stop: @Sendable () -> Void = {
            let channel = self.state.withLock { state in
                state.shutdown = true
                return state.channel
            }
            channel?.close(promise: nil)
        }
        await withTaskCancellationHandler {
            await self.connectionLoop(attempt: &attempt, stop: stop)
        } onCancel: {
            stop()
        }
    }

    private func connectionLoop(attempt: inout Int, stop: @escaping @Sendable () -> Void) async {
        await withGracefulShutdownHandler {
            while !Task.isCancelled && !self.state.withLock({ $0.shutdown }) {
                do {
                    let channel = try await self.connect()
                    attempt = 0
                    let (waiters, stopped) = self.state.withLock { state in
                        state.channel = channel
                        state.lastError = nil
                        defer { state.waiters.removeAll() }
                        return (state.waiters, state.shutdown)
                    }
                    if stopped { channel.close(promise: nil) }
                    for waiter in waiters { waiter.resume(returning: channel) }
                    try? await channel.closeFuture.get()
                    self.state.withLock { $0.channel = nil }
                } catch {
                    attempt += 1
                    let reason = "\(error)"
                    let waiters = self.state.withLock { state in
                        state.lastError = reason
                        defer { state.waiters.removeAll() }
                        return state.waiters
                    }
                    for waiter in waiters { waiter.resume(throwing: RedisError("Redis at \(self.endpoint.host):\(self.endpoint.port) is unreachable: \(reason)")) }
                    self.logger.warning("redis connection failed", metadata: ["error": "\(reason)", "attempt": "\(attempt)"])
                }
                let delay = min(5.0, 0.1 * pow(2.0, Double(min(attempt, 6))))
                try? await Task.sleep(for: .milliseconds(Int(delay * 1000)))
            }
        } onGracefulShutdown: {
            stop()
        }
    }

    private func connectedChannel() async throws -> any Channel {
        if let channel = self.state.withLock({ $0.channel }), channel.isActive { return channel }
        // The check and the enqueueing are one step, so the connection loop cannot hand out the
        // waiters between them and leave this one waiting for the next connection.
        return try await withCheckedThrowingContinuation { continuation in
            let now = self.state.withLock { state -> Result<any Channel, RedisError>? in
                if let channel = state.channel, channel.isActive { return .success(channel) }
                if state.shutdown { return .failure(RedisError("the Redis client is shut down", isConnectionFailure: true)) }
                if let error = state.lastError {
                    return .failure(RedisError("Redis at \(self.endpoint.host):\(self.endpoint.port) is unreachable: \(error)", isConnectionFailure: true))
                }
                state.waiters.append(continuation)
                return nil
            }
            if let now { continuation.resume(with: now) }
        }
    }

    // MARK: Publish and subscribe

    /// Publishes `payload` on `channel`; returns how many subscribers received it.
    @discardableResult
    public func publish(_ payload: [UInt8], on channel: String) async throws -> Int64 {
        try await self.send(bytes: [Array("PUBLISH".utf8), Array(channel.utf8), payload]).integer ?? 0
    }

    /// Subscribes to `channels` on a connection of its own and calls `message` with each
    /// message's channel and payload, in the order Redis sends them, until the connection drops
    /// (it throws then) or the task is cancelled (it returns). `subscribed` is called once the
    /// subscription holds: messages published before it may have been missed, so that is when a
    /// caller catches up from its source of truth. Callers loop, with backoff, to resubscribe.
    public func subscribe(
        to channels: [String],
        subscribed: @Sendable () -> Void,
        message: @escaping @Sendable (_ channel: String, _ payload: [UInt8]) -> Void
    ) async throws {
        precondition(!channels.isEmpty, "subscribe to at least one channel")
        let (pushes, push) = AsyncStream<RESPValue>.makeStream()
        let channel: any Channel
        do {
            channel = try await self.connect(push: { push.yield($0) })
        } catch let error as RedisError {
            throw error
        } catch {
            throw RedisError("Redis at \(self.endpoint.host):\(self.endpoint.port) is unreachable: \(error)", isConnectionFailure: true)
        }
        channel.closeFuture.whenComplete { _ in push.finish() }
        try await withTaskCancellationHandler {
            let command = try RESPEncoder.encode([Array("SUBSCRIBE".utf8)] + channels.map { Array($0.utf8) })
            let confirmed: RESPValue
            do {
                confirmed = try await channel.redisCommand(command, timeout: self.replyTimeout).get()
            } catch {
                throw RedisError("the Redis subscription failed: \(error)", isConnectionFailure: true)
            }
            if case .error(let reason) = confirmed { throw RedisError(reason) }
            subscribed()
            for await value in pushes {
                // ["message", channel, payload]; the other channels' confirmations are skipped.
                guard case .array(let parts) = value, parts.count == 3, parts[0].string == "message",
                      let name = parts[1].string, case .bulkString(let payload) = parts[2] else { continue }
                message(name, payload)
            }
            if !Task.isCancelled { throw RedisError("the Redis subscription's connection closed", isConnectionFailure: true) }
        } onCancel: {
            channel.close(promise: nil)
        }
    }

    private func connect(push: (@Sendable (RESPValue) -> Void)? = nil) async throws -> any Channel {
        let channel = try await ClientBootstrap(group: self.group)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .connectTimeout(.seconds(5))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(RedisCommandHandler(push: push))
                }
            }
            .connect(host: self.endpoint.host, port: self.endpoint.port)
            .get()
        do {
            func command(_ arguments: [String]) async throws {
                let command = try RESPEncoder.encode(arguments.map { Array($0.utf8) })
                if case .error(let message) = try await channel.redisCommand(command, timeout: self.replyTimeout).get() { throw RedisError(message) }
            }
            if let password = self.endpoint.password { try await command(["AUTH", password]) }
            if self.endpoint.database != 0 { try await command(["SELECT", "\(self.endpoint.database)"]) }
        } catch {
            try? await channel.close()
            throw error
        }
        return channel
    }
}

struct RedisCommand {
    var bytes: ByteBuffer
    var promise: EventLoopPromise<RESPValue>
}

extension Channel {
    /// Writes a command and returns its reply. The reply fails, rather than waiting forever, when
    /// the write does (the connection closed between the caller's check and the write, so the
    /// handler may already have failed what it held) and when no reply comes within `timeout`; the
    /// connection is closed then, since a late reply could no longer be matched to its command.
    func redisCommand(_ bytes: ByteBuffer, timeout: TimeAmount) -> EventLoopFuture<RESPValue> {
        let reply = self.eventLoop.makePromise(of: RESPValue.self)
        let start: @Sendable () -> Void = {
            let written = self.eventLoop.makePromise(of: Void.self)
            written.futureResult.whenFailure { reply.fail(RedisError("the command could not be sent: \($0)", isConnectionFailure: true)) }
            let timer = self.eventLoop.scheduleTask(in: timeout) {
                reply.fail(RedisError("Redis sent no reply within \(timeout)", isConnectionFailure: true))
                self.close(promise: nil)
            }
            reply.futureResult.whenComplete { _ in timer.cancel() }
            self.writeAndFlush(RedisCommand(bytes: bytes, promise: reply), promise: written)
        }
        if self.eventLoop.inEventLoop { start() } else { self.eventLoop.execute(start) }
        return reply.futureResult
    }
}

/// Writes commands and answers their promises in order as replies arrive (Redis answers in order).
/// On a subscribed connection, what arrives with no command waiting is a message, given to `push`.
final class RedisCommandHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = RedisCommand
    typealias OutboundOut = ByteBuffer

    private let decoder = RESPDecoder()
    private var pending = Deque<EventLoopPromise<RESPValue>>()
    private let push: (@Sendable (RESPValue) -> Void)?

    init(push: (@Sendable (RESPValue) -> Void)? = nil) {
        self.push = push
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let command = self.unwrapOutboundIn(data)
        self.pending.append(command.promise)
        context.write(self.wrapOutboundOut(command.bytes), promise: promise)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        do {
            try self.decoder.feed(self.unwrapInboundIn(data))
            while let reply = try self.decoder.next() {
                if let promise = self.pending.popFirst() {
                    promise.succeed(reply)
                } else if let push = self.push {
                    push(reply)
                } else {
                    throw RedisError("a reply arrived with no command waiting for it")
                }
            }
        } catch {
            context.fireErrorCaught(error)
            context.close(promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.failAll(RedisError("redis connection error: \(error)"))
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.failAll(RedisError("the Redis connection closed"))
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.failAll(RedisError("the Redis connection closed"))
    }

    private func failAll(_ error: RedisError) {
        while let promise = self.pending.popFirst() { promise.fail(error) }
    }
}
