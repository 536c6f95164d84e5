public import GRPCCore
public import Logging
public import NIOCore
public import NIOPosix
import NIOSSL
import Synchronization

/// A GRPCCore server transport speaking SparkWire: length-prefixed protobuf frames over TLS 1.3
/// with mutual authentication.
///
/// ```swift
/// let transport = SparkWireServerTransport(
///     config: .init(host: "0.0.0.0", port: 7001, security: .mutualTLS(.directory(certs, service: "project")))
/// )
/// let server = GRPCServer(transport: transport, services: [ProjectService(...)])
/// try await server.serve()
/// ```
///
/// Each handler sees the caller's certificate identity as `context.sparkWirePeer`, and runs with
/// ``SparkWireDeadline/current`` set to the call's deadline, which the transport also enforces: when
/// it passes, the caller gets DEADLINE_EXCEEDED and the handler is cancelled.
public final class SparkWireServerTransport: ServerTransport {
    public typealias Bytes = SparkWireBytes

    public struct Config: Sendable {
        public var host: String
        /// 0 picks a free port; read it from ``SparkWireServerTransport/listeningAddress``.
        public var port: Int
        public var security: SparkWireSecurity
        public var limits: SparkWireConnectionLimits
        /// Ping quiet connections; nil disables. Default: every 60 s, 20 s to answer.
        public var keepalive: SparkWireKeepalive?
        /// After GoAway, calls in flight get this long to finish before their connections close.
        public var gracePeriod: Duration
        /// A connection must finish its TLS handshake within this time.
        public var handshakeTimeout: Duration
        /// Method traits, so that single responses travel as one frame.
        public var methods: [SparkWireMethod]
        /// Run each connection's handlers on its event loop thread (no thread hop per call). Turn
        /// off for handlers that do long blocking work.
        public var runsHandlersOnEventLoop: Bool
        /// Unary methods served on SparkWire's lean path rather than through GRPCCore's executor.
        public var unaryMethods: [SparkWireUnaryMethod]
        /// What runs around each lean unary call, in order (the first is outermost).
        public var unaryInterceptors: [any SparkWireUnaryInterceptor]

        public init(
            host: String,
            port: Int,
            security: SparkWireSecurity,
            limits: SparkWireConnectionLimits = .defaults,
            keepalive: SparkWireKeepalive? = SparkWireKeepalive(interval: .seconds(60), timeout: .seconds(20)),
            gracePeriod: Duration = .seconds(30),
            handshakeTimeout: Duration = .seconds(10),
            methods: [SparkWireMethod] = [],
            runsHandlersOnEventLoop: Bool = true,
            unaryMethods: [SparkWireUnaryMethod] = [],
            unaryInterceptors: [any SparkWireUnaryInterceptor] = []
        ) {
            self.runsHandlersOnEventLoop = runsHandlersOnEventLoop
            self.unaryMethods = unaryMethods
            self.unaryInterceptors = unaryInterceptors
            self.host = host
            self.port = port
            self.security = security
            self.limits = limits
            self.keepalive = keepalive
            self.gracePeriod = gracePeriod
            self.handshakeTimeout = handshakeTimeout
            self.methods = methods
        }
    }

    private struct State {
        var serverChannel: (any Channel)?
        var connections: [ObjectIdentifier: ServerConnection] = [:]
        var shuttingDown = false
    }

    public let config: Config
    private let group: any EventLoopGroup
    private let logger: Logger
    private let state = Mutex(State())
    private let accepted = Atomic<Int>(0)
    private let addressPromise: EventLoopPromise<SocketAddress>

    public init(
        config: Config,
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = Logger(label: "sparkops.wire.server")
    ) {
        self.config = config
        self.group = eventLoopGroup
        self.logger = logger
        self.addressPromise = eventLoopGroup.next().makePromise()
    }

    /// The address the transport listens on, once `listen` has bound it.
    public var listeningAddress: SocketAddress {
        get async throws {
            try await self.addressPromise.futureResult.get()
        }
    }

    public func listen(
        streamHandler: @escaping @Sendable (
            _ stream: RPCStream<Inbound, Outbound>,
            _ context: ServerContext
        ) async -> Void
    ) async throws {
        let serverChannel: NIOAsyncChannel<ServerConnection, Never>
        do {
            serverChannel = try await self.bind()
        } catch {
            self.addressPromise.fail(error)
            throw RPCError(code: .unavailable, message: "SparkWire could not listen on \(self.config.host):\(self.config.port): \(error)", cause: error)
        }
        self.addressPromise.succeed(serverChannel.channel.localAddress!)
        let alreadyShuttingDown = self.state.withLock { state in
            state.serverChannel = serverChannel.channel
            return state.shuttingDown
        }
        if alreadyShuttingDown {
            serverChannel.channel.close(promise: nil)
        }

        try await withTaskCancellationHandler {
            try await withThrowingDiscardingTaskGroup { group in
                try await serverChannel.executeThenClose { inbound in
                    for try await connection in inbound {
                        self.accepted.add(1, ordering: .relaxed)
                        let key = ObjectIdentifier(connection)
                        let shuttingDown = self.state.withLock { state in
                            state.connections[key] = connection
                            return state.shuttingDown
                        }
                        if shuttingDown { connection.beginGracefulShutdown() }
                        group.addTask {
                            await connection.run(streamHandler: streamHandler)
                            _ = self.state.withLock { $0.connections.removeValue(forKey: key) }
                        }
                    }
                }
            }
        } onCancel: {
            let connections = self.state.withLock { state in
                state.serverChannel?.close(promise: nil)
                return Array(state.connections.values)
            }
            for connection in connections { connection.close() }
        }
    }

    private func bind() async throws -> NIOAsyncChannel<ServerConnection, Never> {
        let sslContext = try self.config.security.makeServerContext()
        let connectionConfig = ConnectionConfiguration(
            role: .server,
            limits: self.config.limits,
            keepalive: self.config.keepalive,
            methods: SparkWireMethodTable(self.config.methods),
            usesTLS: sslContext != nil,
            gracePeriod: self.config.gracePeriod
        )
        let maxFrameSize = self.config.limits.maxFrameSize
        let handshakeTimeout = self.config.handshakeTimeout.timeAmount
        let runsOnEventLoop = self.config.runsHandlersOnEventLoop
        let unary = SparkWireUnaryRouter(methods: self.config.unaryMethods, interceptors: self.config.unaryInterceptors)
        let logger = self.logger
        return try await ServerBootstrap(group: self.group)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .bind(host: self.config.host, port: self.config.port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    let (streams, continuation) = AsyncStream.makeStream(of: InboundStreamOpen.self)
                    let executor = runsOnEventLoop ? EventLoopTaskExecutor(channel.eventLoop) : nil
                    let dispatch = unary.map { UnaryDispatch(router: $0, executor: executor, channel: channel) }
                    let handler = ConnectionHandler(
                        server: connectionConfig,
                        eventLoop: channel.eventLoop,
                        newStreams: continuation,
                        unary: dispatch,
                        logger: logger
                    )
                    let sync = channel.pipeline.syncOperations
                    if let sslContext {
                        try sync.addHandler(NIOSSLServerHandler(context: sslContext))
                    }
                    try sync.addHandler(ByteToMessageHandler(FrameDecoder(maxFrameSize: maxFrameSize)))
                    try sync.addHandler(handler)
                    if sslContext != nil {
                        channel.eventLoop.assumeIsolated().scheduleTask(in: handshakeTimeout) {
                            if !handler.hasStarted {
                                logger.debug("closing connection: TLS handshake did not complete in time")
                                channel.close(promise: nil)
                            }
                        }
                    }
                    return ServerConnection(channel: channel, handler: handler, streams: streams, executor: executor, unary: dispatch)
                }
            }
    }

    public func beginGracefulShutdown() {
        let (channel, connections) = self.state.withLock { state in
            state.shuttingDown = true
            return (state.serverChannel, Array(state.connections.values))
        }
        channel?.close(promise: nil)
        for connection in connections {
            connection.beginGracefulShutdown()
        }
    }

    /// Streams open across every connection; for tests and metrics.
    package var openStreamCount: Int {
        get async {
            let connections = self.state.withLock { Array($0.connections.values) }
            var total = 0
            for connection in connections {
                total += (try? await connection.openStreamCount) ?? 0
            }
            return total
        }
    }

    /// Connections accepted since the transport started.
    package var acceptedConnectionCount: Int {
        self.accepted.load(ordering: .relaxed)
    }

    /// Connections currently accepted.
    package var connectionCount: Int {
        self.state.withLock { $0.connections.count }
    }
}

/// One accepted connection: its channel, its handler and the streams it opens.
final class ServerConnection: Sendable {
    let channel: any Channel
    private let handler: NIOLoopBound<ConnectionHandler>
    private let streams: AsyncStream<InboundStreamOpen>
    private let remotePeer: String
    private let localPeer: String
    private let executor: EventLoopTaskExecutor?
    private let unary: UnaryDispatch?

    init(
        channel: any Channel,
        handler: ConnectionHandler,
        streams: AsyncStream<InboundStreamOpen>,
        executor: EventLoopTaskExecutor?,
        unary: UnaryDispatch?
    ) {
        self.channel = channel
        self.unary = unary
        self.executor = executor
        self.handler = NIOLoopBound(handler, eventLoop: channel.eventLoop)
        self.streams = streams
        self.remotePeer = channel.remoteAddress.map(Self.describe) ?? "unknown"
        self.localPeer = channel.localAddress.map(Self.describe) ?? "unknown"
    }

    func run(
        streamHandler: @escaping @Sendable (
            _ stream: RPCStream<SparkWireServerTransport.Inbound, SparkWireServerTransport.Outbound>,
            _ context: ServerContext
        ) async -> Void
    ) async {
        await withTaskExecutorPreference(self.executor) {
            await withDiscardingTaskGroup { group in
                for await open in self.streams {
                    group.addTask {
                        await self.handle(open, streamHandler: streamHandler)
                    }
                }
            }
            await self.unary?.tasks.waitForNone()
        }
    }

    private func handle(
        _ open: InboundStreamOpen,
        streamHandler: @escaping @Sendable (
            _ stream: RPCStream<SparkWireServerTransport.Inbound, SparkWireServerTransport.Outbound>,
            _ context: ServerContext
        ) async -> Void
    ) async {
        let descriptor = open.descriptor ?? MethodDescriptor(path: open.method)
        await withServerContextRPCCancellationHandle { handle in
            open.channel.setCancellationHandle(handle)
            var context = ServerContext(
                descriptor: descriptor,
                remotePeer: self.remotePeer,
                localPeer: self.localPeer,
                cancellation: handle
            )
            context.transportSpecific = open.peer
            let stream = RPCStream(
                descriptor: descriptor,
                inbound: RPCAsyncSequence(wrapping: ServerInboundParts(channel: open.channel)),
                outbound: RPCWriter.Closable(wrapping: ServerOutboundWriter(channel: open.channel))
            )
            // The handler runs in a child task so that a cancelled stream (by the caller, its
            // deadline or the connection closing) cancels the handler's work, not only its RPC.
            let handlerContext = context
            await withTaskGroup(of: Void.self) { group in
                group.addTask {
                    await SparkWireDeadline.$current.withValue(open.deadline) {
                        await streamHandler(stream, handlerContext)
                    }
                    open.channel.handlerFinished()
                }
                await open.channel.waitForHandlerEndOrCancellation()
                group.cancelAll()
            }
        }
    }

    func beginGracefulShutdown() {
        self.channel.eventLoop.execute {
            self.handler.value.beginGracefulShutdown()
        }
    }

    func close() {
        self.channel.close(promise: nil)
    }

    var openStreamCount: Int {
        get async throws {
            try await self.channel.eventLoop.submit { self.handler.value.openStreamCount }.get()
        }
    }

    static func describe(_ address: SocketAddress) -> String {
        switch address {
        case .v4(let v4): return "ipv4:\(v4.host):\(address.port ?? 0)"
        case .v6(let v6): return "ipv6:[\(v6.host)]:\(address.port ?? 0)"
        case .unixDomainSocket: return "unix:\(address.pathname ?? "")"
        }
    }
}
