import Foundation
import Hummingbird
import HummingbirdCore
import HummingbirdWebSocket
import Logging
import NIOCore

/// The gateway's HTTP/1.1 and WebSocket child channel with one more bound: a connection must
/// complete its first request's head within `firstRequestTimeout`, bytes trickling in or not.
/// Hummingbird's own idle timeout (`gateway.idleTimeoutSeconds`, set on the HTTP/1.1 side) starts
/// only once the first request has been parsed, so without this a half-open connection that
/// never sends a request would live for ever.
struct GuardedHTTPChannel<Inner: ServerChildChannel>: ServerChildChannel {
    typealias Value = Inner.Value

    let inner: Inner
    let firstRequestTimeout: Duration

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        channel.eventLoop.makeCompletedFuture {
            try channel.pipeline.syncOperations.addHandler(FirstRequestTimeoutHandler(timeout: self.firstRequestTimeout))
        }.flatMap {
            self.inner.setup(channel: channel, logger: logger)
        }
    }

    func handle(value: Value, logger: Logger) async {
        await self.inner.handle(value: value, logger: logger)
    }
}

/// The front of a connection until its first answer: closes the connection when the blank line
/// that ends the first request's head has not arrived within the timeout of the connection's
/// start, answers 400 at once when that head frames its body ambiguously (`Content-Length` with
/// `Transfer-Encoding`, a transfer coding that does not end in `chunked`, two different lengths),
/// and closes a connection whose first answer has not begun `firstAnswerTimeout` after the head
/// (a head the parser refused while a WebSocket upgrade was being negotiated gets no answer from
/// the server). Removes itself once the first answer is being written.
final class FirstRequestTimeoutHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = NIOAny
    typealias OutboundOut = NIOAny

    private let timeout: TimeAmount
    static let firstAnswerTimeout: TimeAmount = .minutes(10)
    private var timer: Scheduled<Void>?
    /// The bytes of the first request's head so far.
    private var head: [UInt8] = []
    private var headDone = false
    private var refused = false

    init(timeout: Duration) {
        let (seconds, attoseconds) = timeout.components
        self.timeout = .nanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { self.arm(context, in: self.timeout) }
    }

    func channelActive(context: ChannelHandlerContext) {
        self.arm(context, in: self.timeout)
        context.fireChannelActive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.timer?.cancel()
        self.timer = nil
    }

    private func arm(_ context: ChannelHandlerContext, in delay: TimeAmount) {
        self.timer?.cancel()
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        self.timer = context.eventLoop.scheduleTask(in: delay) {
            loopBound.value.close(promise: nil)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !self.refused else { return }
        guard !self.headDone else {
            context.fireChannelRead(data)
            return
        }
        let buffer = self.unwrapInboundIn(data)
        let searchFrom = max(0, self.head.count - 3)
        self.head += buffer.readableBytesView
        if let end = Self.headEnd(self.head, from: searchFrom) {
            self.headDone = true
            if let problem = Self.framingProblem(self.head[..<end]) {
                self.refuse(context, problem)
                return
            }
            self.head = []
            self.arm(context, in: Self.firstAnswerTimeout)
        } else if self.head.count > 1 << 20 {
            // The decoder refuses heads far shorter than this; keep no more.
            self.head = Array(self.head.suffix(3))
        }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        context.write(data, promise: promise)
        if !self.refused && self.timer != nil {
            // The first answer has begun: from here Hummingbird's own timeouts apply. Removed
            // after passing the write on; the pipeline then skips this handler.
            self.timer?.cancel()
            self.timer = nil
            context.pipeline.removeHandler(context: context, promise: nil)
        }
    }

    /// Answers 400 in the bytes of HTTP/1.1 itself (nothing behind this handler has seen the
    /// request) and closes the connection.
    private func refuse(_ context: ChannelHandlerContext, _ message: String) {
        self.refused = true
        self.timer?.cancel()
        self.timer = nil
        let body = #"{"error":{"code":"INVALID_ARGUMENT","details":[{"@type":"type.sparkops.dev/FieldViolation","field":"Transfer-Encoding"}],"message":"\#(message)"}}"#
        let response = "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n\r\n\(body)"
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.writeAndFlush(NIOAny(ByteBuffer(string: response))).whenComplete { _ in
            loopBound.value.close(promise: nil)
        }
    }

    /// Where the blank line ending a head starts, searching from `start`.
    static func headEnd(_ bytes: [UInt8], from start: Int) -> Int? {
        guard bytes.count >= 4, start <= bytes.count - 4 else { return nil }
        for index in start...(bytes.count - 4)
        where bytes[index] == 13 && bytes[index + 1] == 10 && bytes[index + 2] == 13 && bytes[index + 3] == 10 {
            return index
        }
        return nil
    }

    /// Why a request head's body framing is ambiguous (RFC 9112 §6.1, §6.3), if it is.
    static func framingProblem(_ head: ArraySlice<UInt8>) -> String? {
        var lengths: Set<String> = []
        var codings: [String] = []
        for line in String(decoding: head, as: UTF8.self).split(separator: "\r\n").dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            let name = line[..<colon].lowercased()
            let value = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces).lowercased()
            if name == "content-length" {
                for part in value.split(separator: ",", omittingEmptySubsequences: false) { lengths.insert(part.trimmingCharacters(in: .whitespaces)) }
            } else if name == "transfer-encoding" {
                codings += value.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
            }
        }
        if !codings.isEmpty && !lengths.isEmpty {
            return "a request may not carry both Content-Length and Transfer-Encoding"
        }
        if let last = codings.last, last != "chunked" {
            return "a request's last transfer coding must be chunked"
        }
        if lengths.count > 1 {
            return "a request may carry one Content-Length"
        }
        return nil
    }
}
