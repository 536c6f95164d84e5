package import GRPCCore
package import NIOCore
import Synchronization

/// The state one stream shares between its connection's event loop and the task running the call.
///
/// The event loop delivers received parts and credit; the call reads parts, writes parts and waits
/// for credit. Written parts collect in `pending` until the event loop drains them into frames, so
/// parts written in quick succession travel in one frame. Memory is bounded on both sides: the peer
/// may not send more messages than the window this side granted, and a writer waits when its send
/// credit is spent.
package final class StreamChannel: Sendable {
    package enum InboundPart: Sendable {
        case headers(Metadata)
        case message(ByteBuffer)
        case trailers(Status, Metadata)
    }

    /// Parts written by the call that the event loop has not taken yet.
    package struct Pending: Sendable {
        package var headers: WireFrame.Headers?
        package var messages: [ByteBuffer] = []
        package var endStream = false
        package var trailers: WireFrame.Trailers?
        package var cancel: WireFrame.Cancel?
        package var windowUpdate: UInt32 = 0

        package var isEmpty: Bool {
            self.headers == nil && self.messages.isEmpty && !self.endStream && self.trailers == nil
                && self.cancel == nil && self.windowUpdate == 0
        }
    }

    private enum InboundEnd {
        case finished
        case failed(RPCError)
    }

    private enum OutboundPhase {
        case open
        /// end_stream or trailers written; no more writes.
        case finished
        case failed(RPCError)
    }

    /// Received parts not read yet. It takes the delivered array as its storage when it is
    /// empty, so that a unary call's answer (one frame, one delivery) is buffered without
    /// allocating; parts already read are dropped from the front once they are half the array.
    struct InboundBuffer {
        private var parts: [InboundPart] = []
        private var head = 0

        var isEmpty: Bool { self.head == self.parts.count }

        mutating func append(contentsOf delivered: [InboundPart]) {
            if self.isEmpty {
                self.parts = delivered
                self.head = 0
                return
            }
            if self.head > 0, self.head * 2 >= self.parts.count {
                self.parts.removeFirst(self.head)
                self.head = 0
            }
            self.parts.append(contentsOf: delivered)
        }

        mutating func popFirst() -> InboundPart? {
            guard self.head < self.parts.count else { return nil }
            let part = self.parts[self.head]
            self.head += 1
            if self.head == self.parts.count {
                self.parts = []
                self.head = 0
            } else if self.head >= 32, self.head * 2 >= self.parts.count {
                self.parts.removeFirst(self.head)
                self.head = 0
            }
            return part
        }

        /// Empties the buffer; returns the bytes of the unread messages it held.
        mutating func removeAll() -> Int {
            var bytes = 0
            for case .message(let message) in self.parts[self.head...] { bytes += message.readableBytes }
            self.parts = []
            self.head = 0
            return bytes
        }
    }

    private struct State {
        var inbound = InboundBuffer()
        var inboundEnd: InboundEnd?
        var reader: CheckedContinuation<InboundPart?, any Error>?
        var consumedSinceUpdate: UInt32 = 0

        var sendCredit: Int
        var creditWaiter: CheckedContinuation<Void, any Error>?
        var pending = Pending()
        var flushRequested = false
        var outbound = OutboundPhase.open
        /// The first frame (with the headers) has been handed to the event loop.
        var opened = false

        var cancellationHandle: ServerContext.RPCCancellationHandle?
        /// Server, lean unary path: cancels the task running the handler.
        var cancelTask: (@Sendable () -> Void)?
        var cancelRequested = false
        var handlerFinished = false
        var lifecycleWaiter: CheckedContinuation<Void, Never>?
        var cancelled = false
        var released = false
    }

    /// The stream id; clients assign it when the stream first reaches the outbox.
    private let id: Atomic<UInt32>
    package let outbox: ConnectionOutbox
    /// Hold written parts until the end of the stream (unary request or single response), so that
    /// the stream's side travels as one frame.
    package let holdUntilEnd: Bool
    /// Grant the peer more credit once this many messages have been read.
    private let updateThreshold: UInt32
    private let state: Mutex<State>

    package init(id: UInt32, outbox: ConnectionOutbox, sendCredit: Int, receiveWindow: UInt32, holdUntilEnd: Bool) {
        self.id = Atomic(id)
        self.outbox = outbox
        self.holdUntilEnd = holdUntilEnd
        self.updateThreshold = max(1, receiveWindow / 2)
        self.state = Mutex(State(sendCredit: sendCredit))
    }

    package var streamID: UInt32 { self.id.load(ordering: .acquiring) }

    package func assignID(_ id: UInt32) {
        self.id.store(id, ordering: .releasing)
    }

    // MARK: Writing (the call's task)

    /// Queues the headers that open this side of the stream.
    package func writeHeaders(_ headers: WireFrame.Headers) throws(RPCError) {
        let flush = try self.state.withLock { state throws(RPCError) -> Bool in
            try Self.checkWritable(state.outbound)
            state.pending.headers = headers
            return self.requestFlush(&state, force: false)
        }
        if flush { self.outbox.enqueue(self) }
    }

    /// Metadata of the error a message over the peer's limit fails with: the limit in bytes.
    package static let tooLargeKey = "sparkops-message-too-large"

    /// Queues one message, waiting for send credit and for the socket to drain if need be.
    package func writeMessage(_ message: ByteBuffer) async throws {
        let limit = self.outbox.maxMessageSize
        guard message.readableBytes <= limit else {
            // Marked, so that an edge can tell "too large" (413) from "too many" (429).
            throw RPCError(
                code: .resourceExhausted,
                message: "message of \(message.readableBytes) bytes exceeds the peer's limit of \(limit) bytes",
                metadata: [Self.tooLargeKey: "\(limit)"]
            )
        }
        if !self.outbox.isWritable {
            try await self.outbox.waitUntilWritable()
        }
        while true {
            let outcome = try self.state.withLock { state throws(RPCError) -> (queued: Bool, flush: Bool) in
                try Self.checkWritable(state.outbound)
                guard state.sendCredit > 0 else { return (false, false) }
                state.sendCredit -= 1
                state.pending.messages.append(message)
                return (true, self.requestFlush(&state, force: false))
            }
            if outcome.flush { self.outbox.enqueue(self) }
            if outcome.queued { return }
            try await self.waitForCredit()
        }
    }

    /// How a unary side ends after its one message.
    package enum UnaryEnd: Sendable {
        /// Client: end_stream.
        case endStream
        /// Server: the call's status.
        case trailers(WireFrame.Trailers)
    }

    /// Writes a whole side of a unary call (headers, one message, and end_stream or trailers) under
    /// one lock and with one enqueue. Behaves as ``writeHeaders(_:)``, ``writeMessage(_:)`` and
    /// ``writeEndStream()`` or ``writeTrailers(_:)`` in turn, which it falls back to when the
    /// message is too large for the peer or there is no send credit.
    package func writeUnary(headers: WireFrame.Headers, message: ByteBuffer, end: UnaryEnd) async throws {
        if !self.outbox.isWritable {
            try await self.outbox.waitUntilWritable()
        }
        let flush: Bool?
        if message.readableBytes <= self.outbox.maxMessageSize {
            flush = try self.state.withLock { state throws(RPCError) -> Bool? in
                try Self.checkWritable(state.outbound)
                guard state.sendCredit > 0 else { return nil }
                state.sendCredit -= 1
                state.pending.headers = headers
                state.pending.messages.append(message)
                switch end {
                case .endStream: state.pending.endStream = true
                case .trailers(let trailers): state.pending.trailers = trailers
                }
                state.outbound = .finished
                return self.requestFlush(&state, force: true)
            }
        } else {
            flush = nil
        }
        guard let flush else {
            try self.writeHeaders(headers)
            try await self.writeMessage(message)
            switch end {
            case .endStream: try self.writeEndStream()
            case .trailers(let trailers): try self.writeTrailers(trailers)
            }
            return
        }
        if flush { self.outbox.enqueue(self) }
    }

    /// Client: no more request messages (end_stream).
    package func writeEndStream() throws(RPCError) {
        let flush = try self.state.withLock { state throws(RPCError) -> Bool in
            try Self.checkWritable(state.outbound)
            state.pending.endStream = true
            state.outbound = .finished
            return self.requestFlush(&state, force: true)
        }
        if flush { self.outbox.enqueue(self) }
    }

    /// Server: the call's status, which ends the stream.
    package func writeTrailers(_ trailers: WireFrame.Trailers) throws(RPCError) {
        let flush = try self.state.withLock { state throws(RPCError) -> Bool in
            try Self.checkWritable(state.outbound)
            state.pending.trailers = trailers
            state.outbound = .finished
            return self.requestFlush(&state, force: true)
        }
        if flush { self.outbox.enqueue(self) }
    }

    /// Abandons the stream from the call's side: unsent parts are dropped, the peer gets a Cancel
    /// if it ever saw the stream, readers and writers fail with `error`.
    package func cancel(_ error: RPCError) {
        var droppedBytes = 0
        let (flush, reader, waiter) = self.state.withLock { state in
            if state.cancelled {
                return (false, nil as CheckedContinuation<InboundPart?, any Error>?, nil as CheckedContinuation<Void, any Error>?)
            }
            state.cancelled = true
            state.outbound = .failed(error)
            state.pending = Pending()
            state.pending.cancel = WireFrame.Cancel(code: UInt32(error.code.rawValue), message: error.message)
            if state.inboundEnd == nil { state.inboundEnd = .failed(error) }
            droppedBytes = Self.dropInbound(&state)
            let reader = state.reader
            state.reader = nil
            let waiter = state.creditWaiter
            state.creditWaiter = nil
            return (self.requestFlush(&state, force: true), reader, waiter)
        }
        self.outbox.consumed(bytes: droppedBytes)
        reader?.resume(throwing: error)
        waiter?.resume(throwing: error)
        if flush { self.outbox.enqueue(self) }
    }

    /// Empties the inbound buffer; returns the message bytes it held.
    private static func dropInbound(_ state: inout State) -> Int {
        state.inbound.removeAll()
    }

    deinit {
        // Messages no call read still count against the connection's buffer until released here.
        let leftover = self.state.withLock { Self.dropInbound(&$0) }
        self.outbox.consumed(bytes: leftover)
    }

    private static func checkWritable(_ phase: OutboundPhase) throws(RPCError) {
        switch phase {
        case .open: return
        case .finished: throw RPCError(code: .internalError, message: "the stream's outbound side is already finished")
        case .failed(let error): throw error
        }
    }

    /// Marks the stream as needing a drain; returns true when the caller must enqueue it.
    private func requestFlush(_ state: inout State, force: Bool) -> Bool {
        guard force || !self.holdUntilEnd else { return false }
        guard !state.flushRequested else { return false }
        state.flushRequested = true
        return true
    }

    private func waitForCredit() async throws {
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let resume: Result<Void, any Error>? = self.state.withLock { state in
                    if Task.isCancelled { return .failure(CancellationError()) }
                    if case .failed(let error) = state.outbound { return .failure(error) }
                    if state.sendCredit > 0 { return .success(()) }
                    state.creditWaiter = continuation
                    return nil
                }
                if let resume { continuation.resume(with: resume) }
            }
        } onCancel: {
            let waiter = self.state.withLock { state in
                defer { state.creditWaiter = nil }
                return state.creditWaiter
            }
            waiter?.resume(throwing: CancellationError())
        }
    }

    // MARK: Reading (the call's task)

    /// The next received part, or nil once the peer finished its side.
    package func next() async throws -> InboundPart? {
        if let result = self.state.withLock({ state in self.takeInbound(&state) }) {
            return try self.finishTake(result)
        }
        let result = try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<InboundPart?, any Error>) in
                let immediate: TakeResult? = self.state.withLock { state in
                    if Task.isCancelled { return .failed(CancellationError()) }
                    if let result = self.takeInbound(&state) { return result }
                    state.reader = continuation
                    return nil
                }
                guard let immediate else { return }
                switch immediate {
                case .part(let part, _): continuation.resume(returning: part)
                case .end: continuation.resume(returning: nil)
                case .failed(let error): continuation.resume(throwing: error)
                }
                if case .part(_, true) = immediate { self.outbox.enqueue(self) }
            }
        } onCancel: {
            let reader = self.state.withLock { state in
                defer { state.reader = nil }
                return state.reader
            }
            reader?.resume(throwing: CancellationError())
        }
        return result
    }

    private enum TakeResult {
        /// A part; the flag says the stream must be enqueued for a window update.
        case part(InboundPart, Bool)
        case end
        case failed(any Error)
    }

    private func finishTake(_ result: TakeResult) throws -> InboundPart? {
        switch result {
        case .part(let part, let enqueue):
            if enqueue { self.outbox.enqueue(self) }
            return part
        case .end:
            return nil
        case .failed(let error):
            throw error
        }
    }

    private func takeInbound(_ state: inout State) -> TakeResult? {
        if let part = state.inbound.popFirst() {
            var enqueue = false
            if case .message(let message) = part { self.outbox.consumed(bytes: message.readableBytes) }
            if case .message = part, state.inboundEnd == nil {
                state.consumedSinceUpdate += 1
                if state.consumedSinceUpdate >= self.updateThreshold, !state.cancelled {
                    // Also after a client half-closed: it still grants credit for responses.
                    state.pending.windowUpdate += state.consumedSinceUpdate
                    state.consumedSinceUpdate = 0
                    enqueue = self.requestFlush(&state, force: true)
                }
            }
            return .part(part, enqueue)
        }
        switch state.inboundEnd {
        case .none: return nil
        case .finished: return .end
        case .failed(let error): return .failed(error)
        }
    }

    // MARK: Event loop side

    /// Takes the parts written since the last drain.
    package func takePending() -> (Pending, firstFrame: Bool) {
        self.state.withLock { state in
            state.flushRequested = false
            var pending = Pending()
            swap(&pending, &state.pending)
            let first = !state.opened && (pending.headers != nil || pending.cancel == nil)
            if first { state.opened = true }
            return (pending, first)
        }
    }

    /// Whether a call is parked in ``next()`` waiting for a part; for tests.
    package var hasWaitingReader: Bool {
        self.state.withLock { $0.reader != nil }
    }

    /// Whether the peer has seen this stream (its first frame was taken for sending).
    package var wasOpened: Bool {
        self.state.withLock { $0.opened }
    }

    /// Received parts. `end` means the peer has finished its side.
    package func deliver(_ parts: [InboundPart], end: Bool) {
        let reader: CheckedContinuation<InboundPart?, any Error>?
        let result: TakeResult?
        var bytes = 0
        for case .message(let message) in parts { bytes += message.readableBytes }
        self.outbox.received(bytes: bytes)
        var dropped = false
        (reader, result) = self.state.withLock { state in
            guard state.inboundEnd == nil else {
                dropped = true
                return (nil, nil)
            }
            state.inbound.append(contentsOf: parts)
            if end { state.inboundEnd = .finished }
            guard let reader = state.reader, let result = self.takeInbound(&state) else { return (nil, nil) }
            state.reader = nil
            return (reader, result)
        }
        if dropped { self.outbox.consumed(bytes: bytes) }
        guard let reader, let result else { return }
        switch result {
        case .part(let part, let enqueue):
            reader.resume(returning: part)
            if enqueue { self.outbox.enqueue(self) }
        case .end:
            reader.resume(returning: nil)
        case .failed(let error):
            reader.resume(throwing: error)
        }
    }

    /// The peer granted `increment` more messages.
    package func grantCredit(_ increment: UInt32) {
        let waiter = self.state.withLock { state in
            state.sendCredit += Int(increment)
            defer { state.creditWaiter = nil }
            return state.creditWaiter
        }
        waiter?.resume()
    }

    /// The stream ended without the call's say: the peer cancelled it, a deadline passed, the
    /// connection closed. Readers and writers fail with `error`; a server handler is cancelled.
    /// Parts already received stay readable when `keepReceived` is set.
    package func fail(_ error: RPCError, keepReceived: Bool = false) {
        var droppedBytes = 0
        let (reader, waiter, handle) = self.state.withLock { state in
            if case .open = state.outbound { state.outbound = .failed(error) }
            state.pending = Pending()
            state.cancelled = true
            if state.inboundEnd == nil {
                state.inboundEnd = .failed(error)
                if !keepReceived { droppedBytes = Self.dropInbound(&state) }
            }
            var reader = state.reader
            state.reader = nil
            if reader != nil, !state.inbound.isEmpty {
                // Cannot happen: a waiting reader means the buffer was empty.
                reader = nil
            }
            let waiter = state.creditWaiter
            state.creditWaiter = nil
            state.cancelRequested = true
            let lifecycle = state.lifecycleWaiter
            state.lifecycleWaiter = nil
            let cancelTask = state.cancelTask
            state.cancelTask = nil
            return (reader, waiter, (state.cancellationHandle, lifecycle, cancelTask))
        }
        self.outbox.consumed(bytes: droppedBytes)
        // The RPC is marked cancelled before its reader wakes, so a handler that sees the error
        // also sees `context.cancellation.isCancelled`.
        handle.0?.cancel()
        handle.2?()
        reader?.resume(throwing: error)
        waiter?.resume(throwing: error)
        handle.1?.resume()
    }

    /// Server: returns when the handler has finished or the stream was cancelled under it,
    /// whichever comes first.
    package func waitForHandlerEndOrCancellation() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let ready = self.state.withLock { state in
                if state.handlerFinished || state.cancelRequested { return true }
                state.lifecycleWaiter = continuation
                return false
            }
            if ready { continuation.resume() }
        }
    }

    /// Server: the handler returned.
    package func handlerFinished() {
        let waiter = self.state.withLock { state in
            state.handlerFinished = true
            defer { state.lifecycleWaiter = nil }
            return state.lifecycleWaiter
        }
        waiter?.resume()
    }

    /// Client: the server ended the call; later request writes are dropped.
    package func closeOutbound(_ error: RPCError) {
        let waiter = self.state.withLock { state in
            if case .open = state.outbound { state.outbound = .failed(error) }
            state.pending = Pending()
            defer { state.creditWaiter = nil }
            return state.creditWaiter
        }
        waiter?.resume(throwing: error)
    }

    /// Server: the handle that cancels the handler; cancels at once if the stream already failed.
    package func setCancellationHandle(_ handle: ServerContext.RPCCancellationHandle) {
        let cancelNow = self.state.withLock { state in
            state.cancellationHandle = handle
            return state.cancelRequested
        }
        if cancelNow { handle.cancel() }
    }

    /// Server, lean unary path: how to cancel the task running the handler; runs at once if the
    /// stream already failed.
    package func setTaskCancellation(_ cancel: @escaping @Sendable () -> Void) {
        let cancelNow = self.state.withLock { state in
            if state.cancelRequested { return true }
            state.cancelTask = cancel
            return false
        }
        if cancelNow { cancel() }
    }

    /// Server, lean unary path: the handler's task ended; nothing is left to cancel.
    package func clearTaskCancellation() {
        self.state.withLock { $0.cancelTask = nil }
    }

    /// Marks the stream's resources as returned; true only the first time.
    package func markReleased() -> Bool {
        self.state.withLock { state in
            defer { state.released = true }
            return !state.released
        }
    }

    /// Whether both sides are done and nothing needs sending.
    package var isComplete: Bool {
        self.state.withLock { state in
            guard case .finished = state.inboundEnd else { return false }
            if case .open = state.outbound { return false }
            return true
        }
    }
}
