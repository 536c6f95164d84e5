public import GRPCCore
public import Logging
public import NIOCore
public import NIOPosix
import NIOSSL
import Synchronization

/// A GRPCCore client transport speaking SparkWire to one service: a pool of mutually authenticated
/// TLS 1.3 connections, one per resolved address, with calls spread round robin.
///
/// ```swift
/// let transport = try SparkWireClientTransport(
///     config: .init(
///         endpoints: try SparkWireEndpoint.parseList("127.0.0.1:7001"),
///         serverIdentity: "project",
///         security: .mutualTLS(.directory(certs, service: "gateway")),
///         methods: SparkProtoMethods.all
///     )
/// )
/// try await withGRPCClient(transport: transport) { client in
///     let projects = Sparkops_Project_V1_ProjectService.Client(wrapping: client)
///     …
/// }
/// ```
///
/// Connections that fail are re-established with exponential backoff and jitter; a GoAway moves
/// new calls to a fresh connection while the calls in flight finish on the old one. With a
/// `retryPolicy`, GRPCCore retries failed calls of methods whose proto declares an
/// `idempotency_level`, and never others (retries are off unless a policy is given).
public final class SparkWireClientTransport: ClientTransport {
    public typealias Bytes = SparkWireBytes

    public struct Config: Sendable {
        /// Where the service listens; host names may resolve to several replicas.
        public var endpoints: [SparkWireEndpoint]
        /// The identity (DNS name in the server's certificate) the server must prove, such as `project`.
        public var serverIdentity: String?
        public var security: SparkWireSecurity
        public var limits: SparkWireConnectionLimits
        /// Ping quiet connections; nil disables. Default: every 30 s, 10 s to answer.
        public var keepalive: SparkWireKeepalive?
        public var backoff: SparkWireBackoff
        /// A connection attempt (TCP, TLS and the server's Settings) must finish within this time.
        public var connectTimeout: Duration
        /// Connections kept to each resolved address.
        public var connectionsPerAddress: Int
        /// How often host names are resolved again to find replicas that came or went.
        public var resolutionInterval: Duration
        /// Method traits: a unary request travels as one frame, and only methods marked idempotent retry.
        public var methods: [SparkWireMethod]
        /// Retry policy for idempotent methods; nil (the default) disables retries. GRPCCore 2.4.3's
        /// retry executor can lose a request message under load (the server then answers INTERNAL
        /// "Empty stream."; docs/benchmarks.md has the measurement), so retries are opt-in.
        public var retryPolicy: RetryPolicy?
        /// Run the transport side of each call that goes through GRPCCore (GRPCCore's executor,
        /// serialization) on the connection's event loop thread, avoiding thread hops per message.
        /// The lean unary path runs where its caller runs, whatever this says.
        public var runsCallsOnEventLoop: Bool

        public init(
            endpoints: [SparkWireEndpoint],
            serverIdentity: String?,
            security: SparkWireSecurity,
            limits: SparkWireConnectionLimits = .defaults,
            keepalive: SparkWireKeepalive? = SparkWireKeepalive(interval: .seconds(30), timeout: .seconds(10)),
            backoff: SparkWireBackoff = SparkWireBackoff(),
            connectTimeout: Duration = .seconds(10),
            connectionsPerAddress: Int = 1,
            resolutionInterval: Duration = .seconds(30),
            methods: [SparkWireMethod] = [],
            retryPolicy: RetryPolicy? = nil,
            runsCallsOnEventLoop: Bool = true
        ) {
            self.runsCallsOnEventLoop = runsCallsOnEventLoop
            self.endpoints = endpoints
            self.serverIdentity = serverIdentity
            self.security = security
            self.limits = limits
            self.keepalive = keepalive
            self.backoff = backoff
            self.connectTimeout = connectTimeout
            self.connectionsPerAddress = max(1, connectionsPerAddress)
            self.resolutionInterval = resolutionInterval
            self.methods = methods
            self.retryPolicy = retryPolicy
        }
    }

    /// A policy for idempotent methods: four attempts, 50 ms doubling to 2 s, on UNAVAILABLE (a
    /// replica restarting or going away). Pass it as `retryPolicy` to enable retries.
    public static let defaultRetryPolicy = RetryPolicy(
        maxAttempts: 4,
        initialBackoff: .milliseconds(50),
        maxBackoff: .seconds(2),
        backoffMultiplier: 2,
        retryableStatusCodes: [.unavailable]
    )

    private enum Phase {
        case idle
        case running
        case shuttingDown
    }

    public let config: Config
    public let retryThrottle: RetryThrottle?
    private let group: any EventLoopGroup
    private let logger: Logger
    private let pool: ConnectionPool
    private let methods: SparkWireMethodTable
    let methodConfigs: [String: MethodConfig]
    private let sslContext: NIOSSLContext?
    private let connectionConfig: ConnectionConfiguration
    private let phase = Mutex(Phase.idle)
    private let events: AsyncStream<PoolEvent>
    private let eventContinuation: AsyncStream<PoolEvent>.Continuation

    private enum PoolEvent {
        case resolve
        case shutdown
    }

    public init(
        config: Config,
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = Logger(label: "sparkops.wire.client")
    ) throws {
        guard !config.endpoints.isEmpty else { throw SparkWireConfigurationError("a client needs at least one endpoint") }
        if config.security.usesTLS && config.serverIdentity == nil {
            throw SparkWireConfigurationError("mutual TLS needs the server identity to verify")
        }
        self.config = config
        self.group = eventLoopGroup
        self.logger = logger
        self.pool = ConnectionPool(logger: logger)
        self.methods = SparkWireMethodTable(config.methods)
        self.sslContext = try config.security.makeClientContext()
        self.connectionConfig = ConnectionConfiguration(
            role: .client,
            limits: config.limits,
            keepalive: config.keepalive,
            methods: SparkWireMethodTable(config.methods),
            usesTLS: config.security.usesTLS
        )
        var configs: [String: MethodConfig] = [:]
        if let policy = config.retryPolicy {
            for method in config.methods where method.idempotency.isRetryable {
                let descriptor = method.descriptor
                configs[method.path] = MethodConfig(
                    names: [MethodConfig.Name(service: descriptor.service.fullyQualifiedService, method: descriptor.method)],
                    executionPolicy: .retry(policy)
                )
            }
            self.retryThrottle = RetryThrottle(maxTokens: 10, tokenRatio: 0.1)
        } else {
            self.retryThrottle = nil
        }
        self.methodConfigs = configs
        (self.events, self.eventContinuation) = AsyncStream.makeStream(of: PoolEvent.self)
    }

    public func config(forMethod descriptor: MethodDescriptor) -> MethodConfig? {
        // Most clients have no retry policy: no path to build per call.
        guard !self.methodConfigs.isEmpty else { return nil }
        return self.methodConfigs[descriptor.wirePath]
    }

    // MARK: Connecting

    public func connect() async throws {
        let start = self.phase.withLock { phase -> Bool in
            guard case .idle = phase else { return false }
            phase = .running
            return true
        }
        guard start else {
            throw RPCError(code: .failedPrecondition, message: "connect() may be called only once")
        }
        await withTaskCancellationHandler {
            await withDiscardingTaskGroup { group in
                let interval = self.config.resolutionInterval
                group.addTask {
                    while !Task.isCancelled {
                        try? await Task.sleep(for: interval)
                        self.eventContinuation.yield(.resolve)
                    }
                }
                self.eventContinuation.yield(.resolve)
                for await event in self.events {
                    switch event {
                    case .resolve:
                        for (id, address) in await self.resolve() {
                            group.addTask { await self.runSubchannel(id: id, address: address) }
                        }
                        continue
                    case .shutdown:
                        break
                    }
                    break
                }
                await self.pool.waitForConnectionsToClose()
                group.cancelAll()
            }
        } onCancel: {
            self.pool.beginShutdown()
            self.pool.closeAll()
            self.eventContinuation.yield(.shutdown)
        }
    }

    private func resolve() async -> [(Int, SocketAddress)] {
        guard !self.pool.isShutdown else { return [] }
        var addresses: [SocketAddress] = []
        var failures: [String] = []
        for endpoint in self.config.endpoints {
            do {
                addresses += try await endpoint.resolve()
            } catch {
                failures.append("\(error)")
            }
        }
        if addresses.isEmpty {
            self.pool.resolutionFailed(failures.joined(separator: "; "))
            return []
        }
        return self.pool.update(addresses: addresses, connectionsPerAddress: self.config.connectionsPerAddress)
    }

    private func runSubchannel(id: Int, address: SocketAddress) async {
        var attempt = 0
        while self.pool.isActive(id) && !Task.isCancelled {
            if attempt > 0 {
                do {
                    try await Task.sleep(for: self.config.backoff.delay(attempt: attempt))
                } catch {
                    break
                }
                guard self.pool.isActive(id) else { break }
            }
            self.pool.connecting(id)
            let connection: ClientConnection
            do {
                connection = try await ClientConnection.connect(
                    to: address,
                    serverIdentity: self.config.serverIdentity,
                    sslContext: self.sslContext,
                    configuration: self.connectionConfig,
                    timeout: self.config.connectTimeout,
                    group: self.group,
                    logger: self.logger
                )
            } catch {
                attempt += 1
                let reason = "connecting to \(ServerConnection.describe(address)) failed: \(Self.describe(error))"
                self.logger.debug("\(reason)", metadata: ["attempt": "\(attempt)"])
                self.pool.failed(id, reason: reason)
                continue
            }
            attempt = 0
            self.pool.ready(id, connection)
            connection.channel.closeFuture.whenComplete { _ in
                self.pool.connectionClosed(connection)
            }
            // Until the server says GoAway or the connection drops.
            try? await connection.events.goingAway.get()
            let closed = !connection.channel.isActive
            self.pool.notReady(id, failure: closed ? "the connection to \(ServerConnection.describe(address)) closed" : nil)
            if closed {
                // A dropped connection is retried at once, then with backoff.
                attempt = 0
            }
        }
        self.pool.removeSubchannel(id)
    }

    private static func describe(_ error: any Error) -> String {
        if let rpcError = error as? RPCError { return rpcError.message }
        return "\(error)"
    }

    public func beginGracefulShutdown() {
        let first = self.phase.withLock { phase -> Bool in
            if case .shuttingDown = phase { return false }
            phase = .shuttingDown
            return true
        }
        guard first else { return }
        self.pool.beginShutdown()
        self.eventContinuation.yield(.shutdown)
    }

    // MARK: Streams

    public func withStream<T: Sendable>(
        descriptor: MethodDescriptor,
        options: CallOptions,
        _ closure: (_ stream: RPCStream<Inbound, Outbound>, _ context: ClientContext) async throws -> T
    ) async throws -> T {
        let path = descriptor.wirePath
        let method = self.methods[path: path]
        let (connection, stream) = try await self.openStream(
            holdUntilEnd: method.map { !$0.requestStreaming } ?? false,
            waitForReady: options.waitForReady ?? false
        )
        let context = ClientContext(descriptor: descriptor, remotePeer: connection.remotePeer, localPeer: connection.localPeer)
        let rpcStream = RPCStream(
            descriptor: descriptor,
            inbound: RPCAsyncSequence(wrapping: ClientInboundParts(channel: stream)),
            outbound: RPCWriter.Closable(wrapping: ClientOutboundWriter(channel: stream, path: path))
        )
        let result: Result<T, any Error>
        do {
            if self.config.runsCallsOnEventLoop {
                result = .success(try await withTaskExecutorPreference(connection.executor) {
                    try await closure(rpcStream, context)
                })
            } else {
                result = .success(try await closure(rpcStream, context))
            }
        } catch {
            result = .failure(error)
        }
        if !stream.isComplete {
            stream.cancel(RPCError(code: .cancelled, message: "the client abandoned the call"))
        }
        connection.outbox.releaseStreamSlot()
        return try result.get()
    }

    /// Picks a connection and opens a stream on it, moving on if the connection was just going away.
    func openStream(holdUntilEnd: Bool, waitForReady: Bool) async throws -> (ClientConnection, StreamChannel) {
        var attempts = 0
        while true {
            let connection = try await self.pool.pick(waitForReady: waitForReady)
            do {
                return (connection, try await connection.makeStream(holdUntilEnd: holdUntilEnd))
            } catch let error as RPCError where error.code == .unavailable && attempts < 3 {
                attempts += 1
                continue
            }
        }
    }

    /// The most unread message bytes a connection has held; for tests.
    package var peakBufferedBytes: Int { self.pool.peakBufferedBytes }

    /// How often a call's write asked for its connection's queue to be drained at once (the
    /// handler skips it while reading or draining); for tests.
    package var immediateDrainCount: Int { self.pool.immediateDrainCount }

    /// Connections ready for new calls; for tests.
    package var readyConnectionCount: Int { self.pool.readyCount }

    /// Whether at least one connection is ready for new calls (readiness checks use it).
    public var hasReadyConnection: Bool { self.pool.readyCount > 0 }
}

extension MethodDescriptor {
    /// `/<service>/<method>`, as SparkWire headers carry it.
    var wirePath: String {
        "/\(self.service.fullyQualifiedService)/\(self.method)"
    }
}
