import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import SparkKit
import Synchronization

/// A SOCKS5 proxy on a loopback port of its own, for one browser run: every connection the
/// browser makes (pages, scripts, images, redirects; http and https alike) arrives as a CONNECT
/// with the host name, is checked by the outbound guard, and goes to the address the guard
/// checked. A connection the guard refuses gets a SOCKS failure, and nothing is sent; the refusal
/// is recorded for the result. Chromium's own services (updates, sign-in) are refused before any
/// name is resolved.
final class GuardProxy: Sendable {
    let channel: any Channel
    let refusals = Mutex<[String]>([])
    let connections = Atomic<Int>(0)

    var port: Int { self.channel.localAddress?.port ?? 0 }

    /// Hosts Chromium calls by itself, which no page needs.
    static let browserServices = ["clients2.google.com", "update.googleapis.com", "accounts.google.com", "clientservices.googleapis.com",
                                  "safebrowsing.googleapis.com", "optimizationguide-pa.googleapis.com", "content-autofill.googleapis.com",
                                  "android.clients.google.com", "www.googleapis.com"]
    static let browserServiceSuffixes = [".gvt1.com", ".gvt2.com"]

    private init(channel: any Channel) {
        self.channel = channel
    }

    static func start(outbound: OutboundGuard, allow: [String]) async throws -> GuardProxy {
        let box = NIOLockedValueBox<GuardProxy?>(nil)
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(SOCKSHandler(outbound: outbound, allow: allow, proxy: { box.withLockedValue { $0 } }))
                }
            }
            .bind(host: "127.0.0.1", port: 0)
            .get()
        let proxy = GuardProxy(channel: channel)
        box.withLockedValue { $0 = proxy }
        return proxy
    }

    func stop() async {
        try? await self.channel.close()
    }

    func refused(_ message: String) {
        self.refusals.withLock { if $0.count < 50 { $0.append(message) } }
    }

    static func isBrowserService(_ host: String) -> Bool {
        let name = host.lowercased()
        return Self.browserServices.contains(name) || Self.browserServiceSuffixes.contains { name.hasSuffix($0) }
    }
}

/// One SOCKS5 client: the greeting, one CONNECT, then bytes both ways.
final class SOCKSHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    enum State { case greeting, request, connecting, relaying }

    let outbound: OutboundGuard
    let allow: [String]
    let proxy: @Sendable () -> GuardProxy?
    var state = State.greeting
    var buffered = ByteBuffer()
    var peer: (any Channel)?

    init(outbound: OutboundGuard, allow: [String], proxy: @escaping @Sendable () -> GuardProxy?) {
        self.outbound = outbound
        self.allow = allow
        self.proxy = proxy
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = self.unwrapInboundIn(data)
        switch self.state {
        case .relaying:
            self.peer?.writeAndFlush(bytes, promise: nil)
            return
        case .connecting:
            self.buffered.writeBuffer(&bytes)
            return
        case .greeting, .request:
            self.buffered.writeBuffer(&bytes)
        }
        if self.state == .greeting {
            guard let head = self.buffered.getBytes(at: self.buffered.readerIndex, length: 2) else { return }
            guard head[0] == 5 else { return context.close(promise: nil) }
            guard self.buffered.readableBytes >= 2 + Int(head[1]) else { return }
            self.buffered.moveReaderIndex(forwardBy: 2 + Int(head[1]))
            context.writeAndFlush(self.wrapOutboundOut(ByteBuffer(bytes: [5, 0])), promise: nil)
            self.state = .request
        }
        guard self.state == .request, let (host, port, length) = Self.parseRequest(self.buffered) else { return }
        self.buffered.moveReaderIndex(forwardBy: length)
        self.state = .connecting
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let eventLoop = context.eventLoop
        let outbound = self.outbound
        let allow = self.allow
        let proxy = self.proxy()
        proxy?.connections.wrappingAdd(1, ordering: .relaxed)
        Task {
            let result: Result<SocketAddress, OutboundRefusal> = await {
                if GuardProxy.isBrowserService(host) {
                    return .failure(OutboundRefusal(.forbiddenAddress, "\(host) is one of the browser's own services"))
                }
                do throws(OutboundRefusal) {
                    let addresses = try await outbound.resolve(host: host, port: port)
                    if !allow.isEmpty, !GuardedHTTPClient.host(host, isIn: allow) {
                        return .failure(OutboundRefusal(.forbiddenAddress, "\(host) is not among the hosts this tool may reach (browser.allow)"))
                    }
                    return .success(addresses[0])
                } catch {
                    return .failure(error)
                }
            }()
            switch result {
            case .failure(let refusal):
                proxy?.refused("\(host):\(port): \(refusal.message)")
                eventLoop.execute { loopBound.value.0.fail(loopBound.value.1, code: 2) }
            case .success(let address):
                guard let back = try? await eventLoop.submit({ loopBound.value.1.channel }).get() else { return }
                do {
                    let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                        .connectTimeout(.seconds(10))
                        .channelInitializer { channel in
                            channel.eventLoop.makeCompletedFuture {
                                try channel.pipeline.syncOperations.addHandler(RelayHandler(back: back))
                            }
                        }
                        .connect(to: address)
                        .get()
                    eventLoop.execute {
                        let (handler, context) = loopBound.value
                        handler.peer = channel
                        handler.state = .relaying
                        context.writeAndFlush(handler.wrapOutboundOut(ByteBuffer(bytes: [5, 0, 0, 1, 0, 0, 0, 0, 0, 0])), promise: nil)
                        if handler.buffered.readableBytes > 0 {
                            channel.writeAndFlush(handler.buffered, promise: nil)
                            handler.buffered.clear()
                        }
                    }
                } catch {
                    eventLoop.execute { loopBound.value.0.fail(loopBound.value.1, code: 5) }
                }
            }
        }
    }

    func fail(_ context: ChannelHandlerContext, code: UInt8) {
        context.writeAndFlush(self.wrapOutboundOut(ByteBuffer(bytes: [5, code, 0, 1, 0, 0, 0, 0, 0, 0])), promise: nil)
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.peer?.close(promise: nil)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    /// `VER CMD RSV ATYP ADDR PORT` of a CONNECT: the host, the port and the request's length.
    static func parseRequest(_ buffer: ByteBuffer) -> (String, Int, Int)? {
        guard let head = buffer.getBytes(at: buffer.readerIndex, length: 4), head[0] == 5, head[1] == 1 else { return nil }
        let start = buffer.readerIndex + 4
        let host: String
        let length: Int
        switch head[3] {
        case 1:
            guard let bytes = buffer.getBytes(at: start, length: 4) else { return nil }
            host = bytes.map(String.init).joined(separator: ".")
            length = 4 + 4
        case 3:
            guard let count = buffer.getInteger(at: start, as: UInt8.self), let bytes = buffer.getBytes(at: start + 1, length: Int(count)) else { return nil }
            host = String(decoding: bytes, as: UTF8.self)
            length = 4 + 1 + Int(count)
        case 4:
            guard let bytes = buffer.getBytes(at: start, length: 16) else { return nil }
            host = stride(from: 0, to: 16, by: 2).map { String(UInt16(bytes[$0]) << 8 | UInt16(bytes[$0 + 1]), radix: 16) }.joined(separator: ":")
            length = 4 + 16
        default:
            return nil
        }
        guard let port = buffer.getInteger(at: buffer.readerIndex + length, as: UInt16.self) else { return nil }
        return (host, Int(port), length + 2)
    }
}

/// The far side of a relayed connection: what it receives goes back to the browser.
final class RelayHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer

    let back: any Channel

    init(back: any Channel) {
        self.back = back
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.back.writeAndFlush(self.unwrapInboundIn(data), promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.back.close(promise: nil)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
