import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// A real HTTP/1.1 server on a loopback address, for the http tool's tests and benchmarks. It
/// answers every request with what it received, as JSON (`method`, `path`, `query`, `headers`,
/// `body`), except:
///
/// - `/status/<code>` answers that status (with the same JSON);
/// - `/redirect?to=<url>` answers 302 to the URL;
/// - `/bytes?n=<count>` answers `count` bytes of `x` as text/plain;
/// - `/slow?ms=<milliseconds>` answers after that long;
/// - `/searxng?q=<words>&format=json` answers as a SearXNG instance does, with three results
///   naming the words.
///
/// ```swift
/// let server = try await HTTPEchoServer.start()
/// defer { Task { try? await server.stop() } }
/// // http://127.0.0.1:\(server.port)/anything
/// ```
public final class HTTPEchoServer: Sendable {
    public let host: String
    public let port: Int
    let channel: any Channel
    let counter: RequestCounter

    /// How many requests it has received.
    public var requests: Int { self.counter.value.load(ordering: .relaxed) }
    public var baseURL: String { "http://\(self.host):\(self.port)" }

    init(host: String, port: Int, channel: any Channel, counter: RequestCounter) {
        self.host = host
        self.port = port
        self.channel = channel
        self.counter = counter
    }

    public static func start(host: String = "127.0.0.1", port: Int = 0) async throws -> HTTPEchoServer {
        let counter = RequestCounter()
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(EchoHandler(counter: counter))
                }
            }
            .bind(host: host, port: port)
            .get()
        return HTTPEchoServer(host: host, port: channel.localAddress?.port ?? port, channel: channel, counter: counter)
    }

    public func stop() async throws {
        try await self.channel.close()
    }

    final class RequestCounter: Sendable {
        let value = Atomic<Int>(0)
    }
}

final class EchoHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let counter: HTTPEchoServer.RequestCounter
    var head: HTTPRequestHead?
    var body: [UInt8] = []

    init(counter: HTTPEchoServer.RequestCounter) {
        self.counter = counter
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch self.unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
            self.body = []
        case .body(let buffer):
            self.body += buffer.readableBytesView
        case .end:
            guard let head = self.head else { return }
            self.counter.value.wrappingAdd(1, ordering: .relaxed)
            self.respond(to: head, context: context)
        }
    }

    func respond(to head: HTTPRequestHead, context: ChannelHandlerContext) {
        let components = URLComponents(string: head.uri)
        let path = components?.path ?? head.uri
        let query = Dictionary((components?.queryItems ?? []).map { ($0.name, $0.value ?? "") }, uniquingKeysWith: { first, _ in first })
        var status = HTTPResponseStatus.ok
        var headers = HTTPHeaders()
        var payload: [UInt8]
        var delay: TimeAmount?
        if path.hasPrefix("/redirect"), let target = query["to"] {
            status = .found
            headers.add(name: "Location", value: target)
            payload = []
        } else if path.hasPrefix("/searxng"), query["format"] == "json" {
            let words = query["q"] ?? ""
            let results: [[String: Any]] = (1 ... 3).map { index in
                ["title": "\(words) \(index)", "url": "https://example.org/\(index)", "content": "About \(words), part \(index)", "engine": "fake", "score": 1.0 / Double(index)]
            }
            payload = Array((try? JSONSerialization.data(withJSONObject: ["query": words, "number_of_results": 3, "results": results], options: [.sortedKeys])) ?? Data())
            headers.add(name: "Content-Type", value: "application/json")
        } else if path.hasPrefix("/bytes") {
            payload = [UInt8](repeating: UInt8(ascii: "x"), count: Int(query["n"] ?? "0") ?? 0)
            headers.add(name: "Content-Type", value: "text/plain")
        } else {
            if path.hasPrefix("/status/"), let code = Int(path.dropFirst("/status/".count)) {
                status = HTTPResponseStatus(statusCode: code)
            }
            if path.hasPrefix("/slow"), let milliseconds = Int64(query["ms"] ?? "") {
                delay = .milliseconds(milliseconds)
            }
            let echo: [String: Any] = [
                "method": head.method.rawValue,
                "path": path,
                "query": query,
                "headers": Dictionary(head.headers.map { ($0.name.lowercased(), $0.value) }, uniquingKeysWith: { first, second in "\(first), \(second)" }),
                "body": String(decoding: self.body, as: UTF8.self),
            ]
            payload = Array((try? JSONSerialization.data(withJSONObject: echo, options: [.sortedKeys])) ?? Data())
            headers.add(name: "Content-Type", value: "application/json")
        }
        headers.add(name: "Content-Length", value: String(payload.count))
        let keepAlive = head.isKeepAlive
        if !keepAlive { headers.add(name: "Connection", value: "close") }
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        let send = { [payload] in
            let context = loopBound.value
            context.write(NIOAny(HTTPServerResponsePart.head(HTTPResponseHead(version: head.version, status: status, headers: headers))), promise: nil)
            context.write(NIOAny(HTTPServerResponsePart.body(.byteBuffer(ByteBuffer(bytes: payload)))), promise: nil)
            let done = context.writeAndFlushWithPromise(HTTPServerResponsePart.end(nil))
            if !keepAlive { done.whenComplete { _ in loopBound.value.close(promise: nil) } }
        }
        if let delay {
            context.eventLoop.scheduleTask(in: delay) { send() }
        } else {
            send()
        }
    }
}

extension ChannelHandlerContext {
    fileprivate func writeAndFlushWithPromise(_ part: HTTPServerResponsePart) -> EventLoopFuture<Void> {
        let promise = self.eventLoop.makePromise(of: Void.self)
        self.writeAndFlush(NIOAny(part), promise: promise)
        return promise.futureResult
    }
}
