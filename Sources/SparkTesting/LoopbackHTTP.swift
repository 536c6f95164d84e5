import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix

/// What the test servers share: an HTTP/1.1 listener on a loopback address that collects each
/// request whole and answers it with what a closure says, after an optional pause.
enum LoopbackHTTP {
    struct Answer: Sendable {
        var status: HTTPResponseStatus = .ok
        var headers: [(String, String)] = []
        var body: [UInt8] = []
        var delay: TimeAmount?
    }

    typealias Respond = @Sendable (HTTPRequestHead, [UInt8]) -> Answer

    static func bind(host: String = "127.0.0.1", port: Int = 0, _ respond: @escaping Respond) async throws -> any Channel {
        try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(Handler(respond: respond))
                }
            }
            .bind(host: host, port: port)
            .get()
    }

    final class Handler: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = HTTPServerRequestPart
        typealias OutboundOut = HTTPServerResponsePart

        let respond: Respond
        var head: HTTPRequestHead?
        var body: [UInt8] = []

        init(respond: @escaping Respond) {
            self.respond = respond
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
                let answer = self.respond(head, self.body)
                var headers = HTTPHeaders(answer.headers)
                headers.add(name: "Content-Length", value: String(answer.body.count))
                let keepAlive = head.isKeepAlive
                if !keepAlive { headers.add(name: "Connection", value: "close") }
                let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
                let response = HTTPResponseHead(version: head.version, status: answer.status, headers: headers)
                let send = { [body = answer.body] in
                    let context = loopBound.value
                    context.write(NIOAny(HTTPServerResponsePart.head(response)), promise: nil)
                    context.write(NIOAny(HTTPServerResponsePart.body(.byteBuffer(ByteBuffer(bytes: body)))), promise: nil)
                    let promise = context.eventLoop.makePromise(of: Void.self)
                    context.writeAndFlush(NIOAny(HTTPServerResponsePart.end(nil)), promise: promise)
                    if !keepAlive { promise.futureResult.whenComplete { _ in loopBound.value.close(promise: nil) } }
                }
                if let delay = answer.delay {
                    context.eventLoop.scheduleTask(in: delay) { send() }
                } else {
                    send()
                }
            }
        }
    }
}
