import Foundation
import NIOCore
import NIOPosix
import NIOSSL
import NIOTLS
@testable import SparkWire
import SparkTesting
import Synchronization

/// Collects what a raw peer receives, for tests to wait on.
final class FrameLog: Sendable {
    private struct State {
        var frames: [WireFrame] = []
        /// When each frame arrived.
        var times: [ContinuousClock.Instant] = []
        var closed = false
        var handshakeCompleted = false
        var error: String?
    }

    private let state = Mutex(State())

    func append(_ frame: WireFrame) {
        self.state.withLock {
            $0.frames.append(frame)
            $0.times.append(.now)
        }
    }
    func markClosed() { self.state.withLock { $0.closed = true } }
    func markHandshake() { self.state.withLock { $0.handshakeCompleted = true } }
    func record(_ error: any Error) { self.state.withLock { $0.error = $0.error ?? "\(error)" } }

    var frames: [WireFrame] { self.state.withLock { $0.frames } }
    /// Each frame with the time it arrived.
    var timedFrames: [(frame: WireFrame, time: ContinuousClock.Instant)] { self.state.withLock { Array(zip($0.frames, $0.times)) } }
    var isClosed: Bool { self.state.withLock { $0.closed } }
    var handshakeCompleted: Bool { self.state.withLock { $0.handshakeCompleted } }
    var error: String? { self.state.withLock { $0.error } }

    /// Waits (polling, bounded) until `condition` holds for the frames received so far.
    @discardableResult
    func wait(
        timeout: Duration = .seconds(20),
        _ condition: ([WireFrame], Bool) -> Bool
    ) async throws -> [WireFrame] {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            let (frames, closed) = self.state.withLock { ($0.frames, $0.closed) }
            if condition(frames, closed) { return frames }
            try await Task.sleep(for: .milliseconds(5))
        }
        let (frames, closed) = self.state.withLock { ($0.frames, $0.closed) }
        throw RawPeerTimeout(description: "condition not met in \(timeout); closed=\(closed), frames=\(frames.map(\.summary))")
    }

    func waitForClose(timeout: Duration = .seconds(20)) async throws {
        try await self.wait(timeout: timeout) { _, closed in closed }
    }
}

struct RawPeerTimeout: Error, CustomStringConvertible {
    var description: String
}

extension WireFrame {
    /// A short text form for failure messages.
    var summary: String {
        var parts: [String] = ["#\(self.streamID)"]
        if let headers = self.headers { parts.append("headers(\(headers.method))") }
        if !self.messages.isEmpty { parts.append("messages(\(self.messages.count))") }
        if self.endStream { parts.append("end") }
        if let trailers = self.trailers { parts.append("trailers(\(trailers.code) \(trailers.message))") }
        if let cancel = self.cancel { parts.append("cancel(\(cancel.code))") }
        if let update = self.windowUpdate { parts.append("window(\(update))") }
        if self.settings != nil { parts.append("settings") }
        if let ping = self.ping { parts.append(ping.ack ? "ping-ack" : "ping") }
        if let goAway = self.goAway { parts.append("goaway(\(goAway.lastStreamID), \(goAway.code) \(goAway.message))") }
        return parts.joined(separator: " ")
    }
}

/// Records decoded frames and the connection's end; optionally answers frames.
final class RecordingHandler: ChannelInboundHandler {
    typealias InboundIn = WireFrame
    typealias OutboundOut = ByteBuffer

    let log: FrameLog
    let respond: (@Sendable (WireFrame) -> [WireFrame])?

    init(log: FrameLog, respond: (@Sendable (WireFrame) -> [WireFrame])? = nil) {
        self.log = log
        self.respond = respond
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = self.unwrapInboundIn(data)
        self.log.append(frame)
        guard let respond = self.respond else { return }
        let replies = respond(frame)
        guard !replies.isEmpty else { return }
        var buffer = context.channel.allocator.buffer(capacity: 256)
        for reply in replies { reply.encode(into: &buffer) }
        context.writeAndFlush(self.wrapOutboundOut(buffer), promise: nil)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case TLSUserEvent.handshakeCompleted = event { self.log.markHandshake() }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.log.record(error)
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.log.markClosed()
    }
}

/// A client that speaks frames directly, to send what a well-behaved SparkWire client never would.
struct RawWireClient: Sendable {
    let channel: any Channel
    let log: FrameLog

    /// TLS options for the raw client.
    struct TLSOptions {
        var certificates: TestCertificates?
        var identity: String? = "client"
        var alpn: [String] = [SparkWireProtocol.alpn]
        var maximumVersion: TLSVersion? = nil
        var minimumVersion: TLSVersion = .tlsv13
    }

    static func connect(port: Int, tls: TLSOptions?) async throws -> RawWireClient {
        var context: NIOSSLContext?
        if let tls, let certificates = tls.certificates {
            var config = TLSConfiguration.makeClientConfiguration()
            if let identity = tls.identity {
                config.certificateChain = try NIOSSLCertificate.fromPEMFile(certificates.path("\(identity).pem")).map { .certificate($0) }
                config.privateKey = .privateKey(try NIOSSLPrivateKey(file: certificates.path("\(identity).key"), format: .pem))
            }
            config.trustRoots = .file(certificates.path("trust.pem"))
            config.applicationProtocols = tls.alpn
            config.minimumTLSVersion = tls.minimumVersion
            config.maximumTLSVersion = tls.maximumVersion
            context = try NIOSSLContext(configuration: config)
        }
        let sslContext = context
        let log = FrameLog()
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let sslContext {
                        try channel.pipeline.syncOperations.addHandler(NIOSSLClientHandler(context: sslContext, serverHostname: "echo"))
                    }
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(FrameDecoder(maxFrameSize: 64 << 20)))
                    try channel.pipeline.syncOperations.addHandler(RecordingHandler(log: log))
                }
            }
            .connect(host: "127.0.0.1", port: port)
            .get()
        return RawWireClient(channel: channel, log: log)
    }

    /// Connects with mutual TLS and exchanges Settings, as a real client would.
    static func handshake(port: Int, certificates: TestCertificates, settings: WireFrame.Settings = .init()) async throws -> RawWireClient {
        let client = try await Self.connect(port: port, tls: TLSOptions(certificates: certificates))
        try await client.send(WireFrame(streamID: 0, settings: settings))
        try await client.log.wait { frames, _ in frames.contains { $0.settings != nil } }
        return client
    }

    func send(_ frames: WireFrame...) async throws {
        var buffer = ByteBuffer()
        for frame in frames { frame.encode(into: &buffer) }
        try await self.channel.writeAndFlush(buffer)
    }

    func sendRaw(_ bytes: [UInt8]) async throws {
        try await self.channel.writeAndFlush(ByteBuffer(bytes: bytes))
    }

    func close() async {
        try? await self.channel.close()
    }

    /// Frames received on `stream`.
    func frames(on stream: UInt32) -> [WireFrame] {
        self.log.frames.filter { $0.streamID == stream }
    }
}

/// A server that speaks frames directly: it answers the client's Settings and hands every other
/// frame to `respond`, to observe exactly what a SparkWire client sends and to misbehave on purpose.
struct RawWireServer: Sendable {
    let channel: any Channel
    let log: FrameLog
    var port: Int { self.channel.localAddress!.port! }

    static func start(
        certificates: TestCertificates,
        answerPings: Bool = true,
        respond: @escaping @Sendable (WireFrame) -> [WireFrame]
    ) async throws -> RawWireServer {
        var config = TLSConfiguration.makeServerConfiguration(
            certificateChain: try NIOSSLCertificate.fromPEMFile(certificates.path("echo.pem")).map { .certificate($0) },
            privateKey: .privateKey(try NIOSSLPrivateKey(file: certificates.path("echo.key"), format: .pem))
        )
        config.trustRoots = .file(certificates.path("trust.pem"))
        config.certificateVerification = .noHostnameVerification
        config.applicationProtocols = [SparkWireProtocol.alpn]
        config.minimumTLSVersion = .tlsv13
        let sslContext = try NIOSSLContext(configuration: config)
        let log = FrameLog()
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: sslContext))
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(FrameDecoder(maxFrameSize: 64 << 20)))
                    try channel.pipeline.syncOperations.addHandler(RecordingHandler(log: log) { frame in
                        if frame.settings != nil { return [WireFrame(streamID: 0, settings: .init())] }
                        if let ping = frame.ping, !ping.ack {
                            return answerPings ? [WireFrame(streamID: 0, ping: .init(payload: ping.payload, ack: true))] : []
                        }
                        return respond(frame)
                    })
                }
            }
            .bind(host: "127.0.0.1", port: 0)
            .get()
        return RawWireServer(channel: channel, log: log)
    }

    func stop() async {
        try? await self.channel.close()
    }
}
