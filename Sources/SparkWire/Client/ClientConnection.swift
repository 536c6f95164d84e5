import GRPCCore
import Logging
import NIOCore
import NIOPosix
import NIOSSL

/// One client connection to one server address.
final class ClientConnection: Sendable {
    let channel: any Channel
    let outbox: ConnectionOutbox
    let events: ClientConnectionEvents
    let remotePeer: String
    let localPeer: String
    let localWindow: UInt32
    let executor: EventLoopTaskExecutor
    private let handler: NIOLoopBound<ConnectionHandler>

    private init(channel: any Channel, handler: ConnectionHandler, localWindow: UInt32) {
        self.channel = channel
        self.outbox = handler.outbox
        self.events = handler.clientEvents
        self.handler = NIOLoopBound(handler, eventLoop: channel.eventLoop)
        self.localWindow = localWindow
        self.executor = EventLoopTaskExecutor(channel.eventLoop)
        self.remotePeer = channel.remoteAddress.map(ServerConnection.describe) ?? "unknown"
        self.localPeer = channel.localAddress.map(ServerConnection.describe) ?? "unknown"
    }

    /// Connects, completes the TLS handshake and waits for the server's Settings, all within `timeout`.
    static func connect(
        to address: SocketAddress,
        serverIdentity: String?,
        sslContext: NIOSSLContext?,
        configuration: ConnectionConfiguration,
        timeout: Duration,
        group: any EventLoopGroup,
        logger: Logger
    ) async throws -> ClientConnection {
        let maxFrameSize = configuration.limits.maxFrameSize
        let localWindow = UInt32(clamping: configuration.limits.initialWindow)
        let connection = try await ClientBootstrap(group: group)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .connectTimeout(timeout.timeAmount)
            .connect(to: address) { channel in
                channel.eventLoop.makeCompletedFuture {
                    let sync = channel.pipeline.syncOperations
                    if let sslContext {
                        try sync.addHandler(NIOSSLClientHandler(context: sslContext, serverHostname: serverIdentity))
                    }
                    let handler = ConnectionHandler(client: configuration, eventLoop: channel.eventLoop, logger: logger)
                    try sync.addHandler(ByteToMessageHandler(FrameDecoder(maxFrameSize: maxFrameSize)))
                    try sync.addHandler(handler)
                    return ClientConnection(channel: channel, handler: handler, localWindow: localWindow)
                }
            }
        let channel = connection.channel
        let timer = channel.eventLoop.scheduleTask(in: timeout.timeAmount) {
            channel.close(promise: nil)
        }
        defer { timer.cancel() }
        do {
            try await withTaskCancellationHandler {
                try await connection.events.ready.get()
            } onCancel: {
                channel.close(promise: nil)
            }
        } catch {
            channel.close(promise: nil)
            throw error
        }
        return connection
    }

    /// A new stream, once the server's concurrency limit allows it.
    func makeStream(holdUntilEnd: Bool) async throws -> StreamChannel {
        try await self.outbox.acquireStreamSlot()
        return StreamChannel(
            id: 0,
            outbox: self.outbox,
            sendCredit: self.outbox.peerInitialWindow,
            receiveWindow: self.localWindow,
            holdUntilEnd: holdUntilEnd
        )
    }

    var isAcceptingStreams: Bool { self.outbox.isAcceptingStreams }

    /// Sends GoAway; the connection closes once its streams finish.
    func beginGracefulShutdown() {
        self.channel.eventLoop.execute {
            self.handler.value.beginGracefulShutdown()
        }
    }

    func close() {
        self.channel.close(promise: nil)
    }
}
