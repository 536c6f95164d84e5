package import GRPCCore
package import Logging
package import NIOCore
import NIOSSL
import X509
import SwiftASN1
import NIOTLS

/// A stream a client opened, handed from the event loop to the server transport.
package struct InboundStreamOpen: Sendable {
    package var channel: StreamChannel
    package var method: String
    /// The method's descriptor when the method table knows it.
    package var descriptor: MethodDescriptor?
    package var deadline: ContinuousClock.Instant?
    package var peer: SparkWirePeer
}

/// Events the client transport waits for.
package struct ClientConnectionEvents: Sendable {
    /// Succeeds when the server's Settings arrive; fails if the connection closes first.
    package var ready: EventLoopFuture<Void>
    /// Succeeds when the connection stops taking new streams: a GoAway arrived, or it closed.
    package var goingAway: EventLoopFuture<Void>
}

/// Runs one SparkWire connection on its event loop: decoded frames go through the
/// ``ConnectionStateMachine`` and reach their ``StreamChannel``s; streams' written parts leave
/// through ``ConnectionOutbox`` drains, one flush per drain.
package final class ConnectionHandler: ChannelDuplexHandler {
    package typealias InboundIn = WireFrame
    package typealias OutboundIn = ByteBuffer
    package typealias OutboundOut = ByteBuffer

    private let configuration: ConnectionConfiguration
    private var stateMachine: ConnectionStateMachine
    private var streams: [UInt32: StreamChannel] = [:]
    private var deadlineTimers: [UInt32: Scheduled<Void>] = [:]
    package let outbox: ConnectionOutbox
    private var context: ChannelHandlerContext?
    private let logger: Logger

    /// The array the next drain swaps for the outbox's queue: two arrays take turns, so that
    /// queuing streams does not allocate once both have grown.
    private var spareQueue: [StreamChannel] = []
    private var started = false
    /// In `channelRead` or `drain`: an enqueue must not drain at once (``drainNow()``).
    private var isBusy = false
    private var peer = SparkWirePeer.anonymous
    private let newStreams: AsyncStream<InboundStreamOpen>.Continuation?
    /// Server: starts the streams of lean unary methods itself, without a hop through `newStreams`.
    private let unary: UnaryDispatch?
    private let readyPromise: EventLoopPromise<Void>?
    private let goingAwayPromise: EventLoopPromise<Void>?

    private var lastFrameReceived = NIODeadline.now()
    /// The next keepalive check: due `interval` after the last frame received, not on a fixed
    /// period (which would let a frame just after one check put the ping off to almost twice the
    /// interval).
    private var keepaliveTask: Scheduled<Void>?
    private var outstandingPing: (payload: UInt64, timeout: Scheduled<Void>)?
    private var graceTimer: Scheduled<Void>?
    private var closeReason: RPCError?

    /// Server side: each opened stream is yielded to `newStreams`.
    package init(
        server configuration: ConnectionConfiguration,
        eventLoop: any EventLoop,
        newStreams: AsyncStream<InboundStreamOpen>.Continuation,
        unary: UnaryDispatch? = nil,
        logger: Logger
    ) {
        self.configuration = configuration
        self.stateMachine = ConnectionStateMachine(role: .server, local: configuration.limits.stateMachineLimits)
        self.outbox = ConnectionOutbox(eventLoop: eventLoop, maxBufferedBytes: configuration.limits.maxBufferedBytes)
        self.newStreams = newStreams
        self.unary = unary
        self.readyPromise = nil
        self.goingAwayPromise = nil
        self.logger = logger
    }

    /// Client side.
    package init(client configuration: ConnectionConfiguration, eventLoop: any EventLoop, logger: Logger) {
        self.configuration = configuration
        self.stateMachine = ConnectionStateMachine(role: .client, local: configuration.limits.stateMachineLimits)
        self.outbox = ConnectionOutbox(eventLoop: eventLoop, maxBufferedBytes: configuration.limits.maxBufferedBytes)
        self.newStreams = nil
        self.unary = nil
        self.readyPromise = eventLoop.makePromise()
        self.goingAwayPromise = eventLoop.makePromise()
        self.logger = logger
    }

    package var clientEvents: ClientConnectionEvents {
        ClientConnectionEvents(ready: self.readyPromise!.futureResult, goingAway: self.goingAwayPromise!.futureResult)
    }

    // MARK: Lifecycle

    package func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        self.outbox.setHooks(ConnectionOutbox.Hooks(
            drain: { loopBound.value.drain() },
            drainNow: { loopBound.value.drainNow() },
            resumeReads: { loopBound.value.resumeReads() }
        ))
        if context.channel.isActive && !self.configuration.usesTLS {
            self.start(context: context)
        }
    }

    package func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    package func channelActive(context: ChannelHandlerContext) {
        if !self.configuration.usesTLS {
            self.start(context: context)
        }
        context.fireChannelActive()
    }

    package func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case TLSUserEvent.handshakeCompleted(let negotiated) = event {
            guard negotiated == SparkWireProtocol.alpn else {
                self.logger.debug("closing connection: ALPN \(negotiated ?? "none") is not \(SparkWireProtocol.alpn)")
                self.closeReason = RPCError(code: .unavailable, message: "the peer did not negotiate ALPN \(SparkWireProtocol.alpn)")
                context.close(promise: nil)
                return
            }
            if let certificate = try? context.pipeline.syncOperations.handler(type: NIOSSLHandler.self).peerCertificate,
                let der = try? certificate.toDERBytes(),
                let parsed = try? Certificate(derEncoded: der)
            {
                self.peer = SparkWirePeer(certificate: parsed)
            }
            self.start(context: context)
        }
        context.fireUserInboundEventTriggered(event)
    }

    private func start(context: ChannelHandlerContext) {
        guard !self.started else { return }
        self.started = true
        self.lastFrameReceived = .now()
        self.write(WireFrame(streamID: 0, settings: self.stateMachine.local.settings), context: context)
        context.flush()
        if let keepalive = self.configuration.keepalive {
            self.scheduleKeepalive(in: keepalive.interval.timeAmount, context: context)
        }
    }

    package func channelInactive(context: ChannelHandlerContext) {
        let error = self.closeReason ?? RPCError(code: .unavailable, message: "the connection closed")
        self.tearDown(error)
        context.fireChannelInactive()
    }

    package func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let frameError = error as? WireFrameError {
            let code: RPCError.Code = frameError.kind == .tooLarge ? .resourceExhausted : .internalError
            self.connectionError(code: code, message: frameError.description, context: context)
            return
        }
        if self.closeReason == nil {
            self.closeReason = RPCError(code: .unavailable, message: "connection error: \(error)")
        }
        self.logger.debug("connection error", metadata: ["error": "\(error)"])
        context.close(promise: nil)
    }

    private func tearDown(_ error: RPCError) {
        _ = self.stateMachine.closed()
        self.keepaliveTask?.cancel()
        self.keepaliveTask = nil
        self.outstandingPing?.timeout.cancel()
        self.outstandingPing = nil
        self.graceTimer?.cancel()
        for timer in self.deadlineTimers.values { timer.cancel() }
        self.deadlineTimers.removeAll()
        let streams = self.streams
        self.streams.removeAll()
        for stream in streams.values {
            stream.fail(error, keepReceived: false)
        }
        self.outbox.close(error)
        self.newStreams?.finish()
        self.readyPromise?.fail(error)
        self.goingAwayPromise?.succeed()
    }

    // MARK: Receiving

    package func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let wasBusy = self.isBusy
        self.isBusy = true
        defer { self.isBusy = wasBusy }
        let frame = self.unwrapInboundIn(data)
        self.lastFrameReceived = .now()
        switch self.stateMachine.receive(frame) {
        case .none:
            ()
        case .settingsReceived(let limits):
            self.outbox.setPeerLimits(limits)
            self.readyPromise?.succeed()
        case .sendPingAck(let payload):
            self.write(WireFrame(streamID: 0, ping: .init(payload: payload, ack: true)), context: context)
            context.flush()
        case .pingAcknowledged(let payload):
            if let outstanding = self.outstandingPing, outstanding.payload == payload {
                outstanding.timeout.cancel()
                self.outstandingPing = nil
            }
        case .openStream(let delivery):
            self.openStream(delivery, context: context)
        case .refuseStream(let id, let trailers):
            self.write(WireFrame(streamID: id, trailers: trailers), context: context)
            context.flush()
        case .deliver(let delivery, let closes):
            self.deliver(delivery, closes: closes)
        case .streamCancelled(let id, let cancel):
            let code = RPCError.Code(Status.Code(rawValue: Int(cancel.code)) ?? .cancelled) ?? .cancelled
            let message = cancel.message.isEmpty ? "the peer cancelled the stream" : cancel.message
            self.removeStream(id)?.fail(RPCError(code: code, message: message))
            self.closeIfDrained(context: context)
        case .resetStream(let id, let code, let message):
            self.removeStream(id)?.fail(RPCError(code: code, message: message))
            self.write(WireFrame(streamID: id, cancel: .init(code: UInt32(code.rawValue), message: message)), context: context)
            context.flush()
            self.closeIfDrained(context: context)
        case .goAwayReceived(let goAway, let unprocessed):
            self.outbox.stopAcceptingStreams()
            let error = RPCError(
                code: .unavailable,
                message: "the server went away before processing the call; it is safe to retry"
            )
            for id in unprocessed {
                self.removeStream(id)?.fail(error)
            }
            if goAway.code != 0 {
                self.closeReason = RPCError(
                    code: RPCError.Code(Status.Code(rawValue: Int(goAway.code)) ?? .unavailable) ?? .unavailable,
                    message: "the peer closed the connection: \(goAway.message)"
                )
            }
            self.goingAwayPromise?.succeed()
            self.closeIfDrained(context: context)
        case .connectionError(let code, let message):
            self.connectionError(code: code, message: message, context: context)
        }
    }

    private func openStream(_ delivery: ConnectionStateMachine.Delivery, context: ChannelHandlerContext) {
        let headers = delivery.headers ?? .init()
        let method = self.configuration.methods[path: headers.method]
        let descriptor = method == nil ? nil : self.configuration.methods.descriptor(path: headers.method)
        let channel = StreamChannel(
            id: delivery.streamID,
            outbox: self.outbox,
            sendCredit: Int(self.stateMachine.peer.initialWindow),
            receiveWindow: self.stateMachine.local.initialWindow,
            holdUntilEnd: method.map { !$0.responseStreaming } ?? false
        )
        var parts: [StreamChannel.InboundPart] = []
        parts.reserveCapacity(1 + delivery.messages.count)
        parts.append(.headers(headers.metadata))
        for message in delivery.messages {
            parts.append(.message(message))
        }
        channel.deliver(parts, end: delivery.endStream)
        if delivery.credit > 0 {
            channel.grantCredit(delivery.credit)
        }
        self.streams[delivery.streamID] = channel

        var deadline: ContinuousClock.Instant?
        if headers.timeoutMicros > 0 {
            let micros = Int64(clamping: min(headers.timeoutMicros, UInt64(Int64.max / 1000)))
            deadline = ContinuousClock.now.advanced(by: .microseconds(micros))
            self.scheduleDeadline(streamID: delivery.streamID, in: .microseconds(micros), context: context)
        }
        let open = InboundStreamOpen(channel: channel, method: headers.method, descriptor: descriptor, deadline: deadline, peer: self.peer)
        if let unary = self.unary, unary.start(open) { return }
        self.newStreams?.yield(open)
    }

    private func deliver(_ delivery: ConnectionStateMachine.Delivery, closes: Bool) {
        guard let stream = closes ? self.removeStream(delivery.streamID) : self.streams[delivery.streamID] else { return }
        if delivery.credit > 0 {
            stream.grantCredit(delivery.credit)
        }
        var parts: [StreamChannel.InboundPart] = []
        parts.reserveCapacity(delivery.messages.count + 2)
        if let headers = delivery.headers {
            parts.append(.headers(headers.metadata))
        }
        for message in delivery.messages {
            parts.append(.message(message))
        }
        if let trailers = delivery.trailers {
            let code = Status.Code(rawValue: Int(trailers.code)) ?? .unknown
            parts.append(.trailers(Status(code: code, message: trailers.message), trailers.metadata))
            stream.closeOutbound(RPCError(code: .cancelled, message: "the server has already ended the call"))
        }
        if !parts.isEmpty || delivery.endStream {
            stream.deliver(parts, end: delivery.endStream || closes)
        }
    }

    @discardableResult
    private func removeStream(_ id: UInt32) -> StreamChannel? {
        self.deadlineTimers.removeValue(forKey: id)?.cancel()
        return self.streams.removeValue(forKey: id)
    }

    private func scheduleDeadline(streamID: UInt32, in delay: Duration, context: ChannelHandlerContext) {
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        self.deadlineTimers[streamID] = context.eventLoop.scheduleTask(in: delay.timeAmount) {
            loopBound.value.deadlineExpired(streamID: streamID)
        }
    }

    private func deadlineExpired(streamID: UInt32) {
        self.deadlineTimers.removeValue(forKey: streamID)
        guard let context = self.context, let stream = self.streams[streamID] else { return }
        let message = "the deadline passed before the call completed"
        let error = RPCError(code: .deadlineExceeded, message: message)
        let frame: WireFrame
        switch self.stateMachine.role {
        case .server:
            frame = WireFrame(streamID: streamID, trailers: .init(code: UInt32(Status.Code.deadlineExceeded.rawValue), message: message))
        case .client:
            frame = WireFrame(streamID: streamID, cancel: .init(code: UInt32(Status.Code.deadlineExceeded.rawValue), message: message))
        }
        if self.stateMachine.willSend(frame) {
            self.write(frame, context: context)
            context.flush()
        }
        self.removeStream(streamID)
        stream.fail(error)
        self.closeIfDrained(context: context)
    }

    // MARK: Sending

    /// Drains at once, unless this handler is already at work (a read delivering frames, a drain):
    /// the scheduled drain then takes the queue.
    package func drainNow() {
        guard !self.isBusy else { return }
        self.drain()
    }

    package func drain() {
        guard let context = self.context else { return }
        let wasBusy = self.isBusy
        self.isBusy = true
        defer { self.isBusy = wasBusy }
        var queue = self.spareQueue
        self.spareQueue = []
        self.outbox.takeQueue(&queue)
        defer {
            queue.removeAll(keepingCapacity: true)
            self.spareQueue = queue
        }
        guard !queue.isEmpty else { return }
        var allocated: ByteBuffer?
        for stream in queue {
            let (pending, first) = stream.takePending()
            guard !pending.isEmpty else { continue }
            if allocated == nil {
                // Room for this stream's messages and frame overhead, so that a typical drain
                // (one call's frame) does not grow the buffer.
                var bytes = 512
                for message in pending.messages { bytes += message.readableBytes + 16 }
                allocated = context.channel.allocator.buffer(capacity: bytes * min(queue.count, 4))
            }
            let id = stream.streamID
            if self.stateMachine.role == .client {
                if first {
                    guard self.stateMachine.openLocalStream(id) else {
                        stream.fail(RPCError(code: .unavailable, message: "the connection is going away; the call was not sent"))
                        continue
                    }
                    self.streams[id] = stream
                    if let timeout = pending.headers?.timeoutMicros, timeout > 0 {
                        self.scheduleDeadline(streamID: id, in: .microseconds(Int64(clamping: timeout)), context: context)
                    }
                } else if self.streams[id] == nil {
                    continue
                }
            }
            self.encode(pending, streamID: id, into: &allocated!)
        }
        if let buffer = allocated, buffer.readableBytes > 0 {
            context.writeAndFlush(self.wrapOutboundOut(buffer), promise: nil)
        }
        self.closeIfDrained(context: context)
    }

    /// Turns a stream's pending parts into as few frames as the peer's frame size allows.
    private func encode(_ pending: StreamChannel.Pending, streamID: UInt32, into buffer: inout ByteBuffer) {
        let maxSize = Int(self.stateMachine.peer.maxFrameSize)
        var frame = WireFrame(
            streamID: streamID,
            headers: pending.headers,
            windowUpdate: pending.windowUpdate > 0 ? pending.windowUpdate : nil
        )
        var size = frame.encodedSize
        let whole = pending.messages.reduce(size) { $0 + ProtobufWire.lengthDelimitedSize(field: 3, payload: $1.readableBytes) }
        if whole <= maxSize {
            // The usual case: every message fits in this frame, which takes the array as it is.
            frame.messages = pending.messages
            size = whole
        } else {
            for message in pending.messages {
                let added = ProtobufWire.lengthDelimitedSize(field: 3, payload: message.readableBytes)
                if size + added > maxSize && (!frame.messages.isEmpty || frame.headers != nil) {
                    self.emit(frame, into: &buffer)
                    frame = WireFrame(streamID: streamID)
                    size = frame.encodedSize
                }
                frame.messages.append(message)
                size += added
            }
        }
        frame.endStream = pending.endStream
        frame.cancel = pending.cancel
        if var trailers = pending.trailers {
            let trailerSize = ProtobufWire.lengthDelimitedSize(field: 5, payload: trailers.encodedSize)
            if trailerSize + 16 > maxSize {
                trailers = .init(code: UInt32(Status.Code.internalError.rawValue), message: "the call's trailers exceed the maximum frame size")
            }
            if size + trailerSize > maxSize {
                self.emit(frame, into: &buffer)
                frame = WireFrame(streamID: streamID)
            }
            frame.trailers = trailers
        }
        self.emit(frame, into: &buffer)
    }

    private func emit(_ frame: WireFrame, into buffer: inout ByteBuffer) {
        guard self.stateMachine.willSend(frame) else { return }
        frame.encode(into: &buffer)
        if frame.trailers != nil || frame.cancel != nil {
            self.removeStream(frame.streamID)
        }
    }

    private func write(_ frame: WireFrame, context: ChannelHandlerContext) {
        var buffer = context.channel.allocator.buffer(capacity: frame.encodedSize + SparkWireProtocol.prefixLength)
        frame.encode(into: &buffer)
        context.write(self.wrapOutboundOut(buffer), promise: nil)
    }

    // MARK: Read pausing

    private var readHeld = false

    /// Holds socket reads while the connection buffers more unread bytes than it may.
    package func read(context: ChannelHandlerContext) {
        if self.outbox.shouldPauseReads() {
            self.readHeld = true
        } else {
            context.read()
        }
    }

    package func resumeReads() {
        guard self.readHeld, let context = self.context else { return }
        self.readHeld = false
        context.read()
    }

    package func channelWritabilityChanged(context: ChannelHandlerContext) {
        self.outbox.setWritable(context.channel.isWritable)
        context.fireChannelWritabilityChanged()
    }

    // MARK: Connection control

    /// Sends GoAway and closes once the streams in flight finish (or the grace period ends).
    package func beginGracefulShutdown() {
        guard let context = self.context else { return }
        self.outbox.stopAcceptingStreams()
        guard self.started, let goAway = self.stateMachine.beginGoAway() else {
            if !self.started { context.close(promise: nil) }
            return
        }
        self.write(WireFrame(streamID: 0, goAway: goAway), context: context)
        context.flush()
        if let grace = self.configuration.gracePeriod, !self.stateMachine.canClose {
            let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
            self.graceTimer = context.eventLoop.scheduleTask(in: grace.timeAmount) {
                let handler = loopBound.value
                handler.closeReason = RPCError(code: .unavailable, message: "the server shut down before the call completed")
                handler.context?.close(promise: nil)
            }
        }
        self.closeIfDrained(context: context)
    }

    private func closeIfDrained(context: ChannelHandlerContext) {
        if self.stateMachine.canClose && self.streams.isEmpty && context.channel.isActive {
            context.close(promise: nil)
        }
    }

    private func connectionError(code: RPCError.Code, message: String, context: ChannelHandlerContext) {
        self.logger.debug("closing connection after a protocol error", metadata: ["code": "\(code)", "reason": "\(message)"])
        if self.closeReason == nil {
            self.closeReason = RPCError(code: .unavailable, message: "connection closed after a protocol error: \(message)")
        }
        if context.channel.isActive {
            let last = self.stateMachine.role == .server ? self.stateMachine.highestStreamID : 0
            self.write(WireFrame(streamID: 0, goAway: .init(lastStreamID: last, code: UInt32(code.rawValue), message: message)), context: context)
            context.flush()
        }
        _ = self.stateMachine.closed()
        context.close(promise: nil)
    }

    private func scheduleKeepalive(in delay: TimeAmount, context: ChannelHandlerContext) {
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        self.keepaliveTask = context.eventLoop.scheduleTask(in: delay) {
            loopBound.value.keepaliveTick()
        }
    }

    /// Pings once nothing has been received for the interval; otherwise checks again when the
    /// interval since the last frame will have passed.
    private func keepaliveTick() {
        guard let context = self.context, let keepalive = self.configuration.keepalive, self.keepaliveTask != nil else { return }
        let interval = keepalive.interval.timeAmount
        let idle = NIODeadline.now() - self.lastFrameReceived
        guard self.outstandingPing == nil, idle >= interval else {
            // While a ping waits for its answer, its own timeout decides; the answer is a frame,
            // so the next check falls an interval after it.
            self.scheduleKeepalive(in: self.outstandingPing == nil ? interval - idle : interval, context: context)
            return
        }
        self.scheduleKeepalive(in: interval, context: context)
        let payload = UInt64.random(in: 1 ... .max)
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        let timeout = context.eventLoop.scheduleTask(in: keepalive.timeout.timeAmount) {
            let handler = loopBound.value
            handler.closeReason = RPCError(code: .unavailable, message: "keepalive: the peer did not answer a ping in time")
            handler.logger.debug("closing connection: keepalive ping unanswered")
            guard let context = handler.context else { return }
            // A closing side says so (§3.3), even to a peer that may no longer be listening.
            if context.channel.isActive {
                let last = handler.stateMachine.role == .server ? handler.stateMachine.highestStreamID : 0
                let goAway = WireFrame.GoAway(lastStreamID: last, code: UInt32(Status.Code.unavailable.rawValue), message: "keepalive timeout: no answer to a ping")
                handler.write(WireFrame(streamID: 0, goAway: goAway), context: context)
                context.flush()
            }
            context.close(promise: nil)
        }
        self.outstandingPing = (payload, timeout)
        self.write(WireFrame(streamID: 0, ping: .init(payload: payload)), context: context)
        context.flush()
    }

    // MARK: Introspection (tests)

    package var openStreamCount: Int { self.streams.count }

    /// Whether the connection has begun speaking SparkWire (after the TLS handshake).
    package var hasStarted: Bool { self.started }
}
