import DequeModule
import Foundation
import NIOCore
import NIOPosix
import NIOSSL

// The ceiling: the same bytes over the same mutual TLS 1.3, echoed by bare SwiftNIO handlers with
// a 4-byte length prefix and nothing else: no streams, no protobuf frames, no Swift concurrency.
// A request's first byte says what to do: "U" echo it back; "S" followed by a count: send that many
// 256-byte messages.

/// Splits a byte stream into length-prefixed messages.
struct LengthPrefixDecoder: NIOSingleStepByteToMessageDecoder {
    typealias InboundOut = ByteBuffer

    mutating func decode(buffer: inout ByteBuffer) throws -> ByteBuffer? {
        guard let length = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self),
            buffer.readableBytes >= 4 + Int(length)
        else { return nil }
        buffer.moveReaderIndex(forwardBy: 4)
        return buffer.readSlice(length: Int(length))
    }

    mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> ByteBuffer? {
        try self.decode(buffer: &buffer)
    }
}

final class RawEchoServerHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var remaining = 0
    private var message = ByteBuffer()

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var frame = self.unwrapInboundIn(data)
        switch frame.getInteger(at: frame.readerIndex, as: UInt8.self) {
        case UInt8(ascii: "U"):
            var out = context.channel.allocator.buffer(capacity: frame.readableBytes + 4)
            out.writeInteger(UInt32(frame.readableBytes))
            out.writeBuffer(&frame)
            context.write(self.wrapOutboundOut(out), promise: nil)
        case UInt8(ascii: "S"):
            frame.moveReaderIndex(forwardBy: 1)
            self.remaining = Int(frame.readInteger(as: UInt32.self) ?? 0)
            self.message = context.channel.allocator.buffer(capacity: 260)
            self.message.writeInteger(UInt32(256))
            self.message.writeRepeatingByte(7, count: 256)
            self.pump(context: context)
        default:
            context.close(promise: nil)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.flush()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { self.pump(context: context) }
    }

    private func pump(context: ChannelHandlerContext) {
        while self.remaining > 0 && context.channel.isWritable {
            // Batch writes as any streaming server would, flushing every 64 messages.
            for _ in 0 ..< min(64, self.remaining) {
                context.write(self.wrapOutboundOut(self.message), promise: nil)
                self.remaining -= 1
            }
            context.flush()
        }
    }
}

/// Keeps `concurrency` echo requests in flight until `end`, recording each one's latency.
final class RawUnaryClientHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let concurrency: Int
    private let request: ByteBuffer
    private let warmupEnd: NIODeadline
    private let end: NIODeadline
    private var sent = Deque<NIODeadline>()
    private(set) var latencies: [Int64] = []
    private var calls = 0
    let done: EventLoopPromise<(calls: Int, latencies: [Int64])>

    init(concurrency: Int, payloadSize: Int, warmup: TimeAmount, duration: TimeAmount, eventLoop: any EventLoop) {
        self.concurrency = concurrency
        var request = ByteBuffer()
        request.writeInteger(UInt32(payloadSize + 1))
        request.writeInteger(UInt8(ascii: "U"))
        request.writeRepeatingByte(1, count: payloadSize)
        self.request = request
        self.warmupEnd = .now() + warmup
        self.end = .now() + warmup + duration
        self.done = eventLoop.makePromise()
    }

    func channelActive(context: ChannelHandlerContext) {
        for _ in 0 ..< self.concurrency { self.send(context: context) }
        context.flush()
    }

    private func send(context: ChannelHandlerContext) {
        self.sent.append(.now())
        context.write(self.wrapOutboundOut(self.request), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let now = NIODeadline.now()
        let started = self.sent.removeFirst()
        if started >= self.warmupEnd && now <= self.end {
            self.latencies.append((now - started).nanoseconds)
            self.calls += 1
        }
        if now < self.end {
            self.send(context: context)
        } else if self.sent.isEmpty {
            self.done.succeed((self.calls, self.latencies))
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.flush()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.done.fail(error)
        context.close(promise: nil)
    }
}

/// Asks for `count` streamed messages and completes when they have all arrived.
final class RawStreamClientHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let count: Int
    private var received = 0
    private var started = NIODeadline.now()
    let done: EventLoopPromise<TimeAmount>

    init(count: Int, eventLoop: any EventLoop) {
        self.count = count
        self.done = eventLoop.makePromise()
    }

    func channelActive(context: ChannelHandlerContext) {
        var request = ByteBuffer()
        request.writeInteger(UInt32(5))
        request.writeInteger(UInt8(ascii: "S"))
        request.writeInteger(UInt32(self.count))
        self.started = .now()
        context.writeAndFlush(self.wrapOutboundOut(request), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.received += 1
        if self.received == self.count {
            self.done.succeed(.now() - self.started)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.done.fail(error)
        context.close(promise: nil)
    }
}

enum RawTLS {
    static func serverContext(certificates: String) throws -> NIOSSLContext {
        var config = TLSConfiguration.makeServerConfiguration(
            certificateChain: try NIOSSLCertificate.fromPEMFile("\(certificates)/echo.pem").map { .certificate($0) },
            privateKey: .privateKey(try NIOSSLPrivateKey(file: "\(certificates)/echo.key", format: .pem))
        )
        config.minimumTLSVersion = .tlsv13
        config.certificateVerification = .noHostnameVerification
        config.trustRoots = .file("\(certificates)/trust.pem")
        return try NIOSSLContext(configuration: config)
    }

    static func clientContext(certificates: String) throws -> NIOSSLContext {
        var config = TLSConfiguration.makeClientConfiguration()
        config.minimumTLSVersion = .tlsv13
        config.certificateChain = try NIOSSLCertificate.fromPEMFile("\(certificates)/gateway.pem").map { .certificate($0) }
        config.privateKey = .privateKey(try NIOSSLPrivateKey(file: "\(certificates)/gateway.key", format: .pem))
        config.trustRoots = .file("\(certificates)/trust.pem")
        return try NIOSSLContext(configuration: config)
    }

    static func serve(certificates: String) async throws -> any Channel {
        let context = try Self.serverContext(certificates: certificates)
        return try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: context))
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(LengthPrefixDecoder()))
                    try channel.pipeline.syncOperations.addHandler(RawEchoServerHandler())
                }
            }
            .bind(host: "127.0.0.1", port: 0)
            .get()
    }

    static func connect(port: Int, certificates: String, handler: some ChannelInboundHandler & Sendable) async throws -> any Channel {
        let context = try Self.clientContext(certificates: certificates)
        return try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(NIOSSLClientHandler(context: context, serverHostname: "echo"))
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(LengthPrefixDecoder()))
                    try channel.pipeline.syncOperations.addHandler(handler)
                }
            }
            .connect(host: "127.0.0.1", port: port)
            .get()
    }
}

extension RawUnaryClientHandler: @unchecked Sendable {}
extension RawStreamClientHandler: @unchecked Sendable {}
