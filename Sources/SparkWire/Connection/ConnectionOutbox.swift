import DequeModule
package import GRPCCore
package import NIOCore
import Synchronization

/// What the tasks of one connection share with its event loop: the queue of streams with parts to
/// send, the socket's writability, and (clients) stream ids and concurrency slots.
///
/// Streams enqueue themselves when they have parts to send; the first enqueue schedules one drain
/// on the event loop, which turns every queued stream's parts into frames and flushes once. Under
/// load a drain carries many streams' frames in one write. A write from the event loop that makes
/// the queue ``drainBatch`` streams long drains at once: the peer starts on those calls while this
/// side works on the rest, rather than the two sides taking turns with whole batches.
package final class ConnectionOutbox: Sendable {
    /// What the outbox asks of its connection's event loop. Made once per connection and held as
    /// one reference, so that scheduling a drain passes a stored closure rather than making one.
    package final class Hooks: Sendable {
        /// Drains the queue (run on the event loop, scheduled).
        let drain: @Sendable () -> Void
        /// Drains the queue at once unless the handler is already at work (on the event loop).
        let drainNow: @Sendable () -> Void
        /// Resumes socket reads held while too many received bytes were unread.
        let resumeReads: @Sendable () -> Void

        package init(
            drain: @escaping @Sendable () -> Void,
            drainNow: @escaping @Sendable () -> Void,
            resumeReads: @escaping @Sendable () -> Void
        ) {
            self.drain = drain
            self.drainNow = drainNow
            self.resumeReads = resumeReads
        }
    }

    private struct State {
        var queue: [StreamChannel] = []
        var drainScheduled = false
        var hooks: Hooks?
        var writabilityWaiters: [UInt64: CheckedContinuation<Void, any Error>] = [:]
        var nextWaiterID: UInt64 = 0
        var closedError: RPCError?

        // Client side.
        var nextStreamID: UInt32 = 1
        var openStreams = 0
        var maxConcurrentStreams = Int(SparkWireProtocol.defaultMaxConcurrentStreams)
        var slotWaiters = Deque<(UInt64, CheckedContinuation<Void, any Error>)>()
        var acceptingStreams = true
    }

    package let eventLoop: any EventLoop
    private let state = Mutex(State())
    private let writable = Atomic<Bool>(true)
    private let peerMaxFrameSize = Atomic<Int>(Int(SparkWireProtocol.defaultMaxFrameSize))
    private let peerWindow = Atomic<Int>(Int(SparkWireProtocol.defaultInitialWindow))

    // Received message bytes not yet read by a call, and the read pause they cause.
    private let buffered = Atomic<Int>(0)
    private let bufferedPeak = Atomic<Int>(0)
    private let readsPaused = Atomic<Bool>(false)
    private let immediateDrains = Atomic<Int>(0)
    package let maxBufferedBytes: Int

    package init(eventLoop: any EventLoop, maxBufferedBytes: Int = 16 << 20) {
        self.eventLoop = eventLoop
        self.maxBufferedBytes = maxBufferedBytes
    }

    /// How many queued streams a write from the event loop drains at once, without waiting for the
    /// scheduled drain. With 64 calls in flight on loopback, draining every 16 or 32 streams
    /// rather than once per event loop tick gave 1.5× the calls/s (docs/benchmarks.md).
    package static let drainBatch = 16

    /// The event loop's drain (scheduled, and at once) and read resumption; set once by the
    /// connection handler.
    package func setHooks(_ hooks: Hooks) {
        self.state.withLock { $0.hooks = hooks }
    }

    // MARK: Received bytes

    /// Event loop: messages of `bytes` were handed to a stream.
    package func received(bytes: Int) {
        let total = self.buffered.add(bytes, ordering: .relaxed).newValue
        if total > self.bufferedPeak.load(ordering: .relaxed) {
            self.bufferedPeak.store(total, ordering: .relaxed)
        }
    }

    /// A call read (or a failed stream dropped) messages of `bytes`.
    package func consumed(bytes: Int) {
        guard bytes > 0 else { return }
        let total = self.buffered.subtract(bytes, ordering: .relaxed).newValue
        if total <= self.maxBufferedBytes / 2, self.readsPaused.compareExchange(expected: true, desired: false, ordering: .relaxed).exchanged {
            if let hooks = self.state.withLock({ $0.hooks }) {
                self.eventLoop.execute(hooks.resumeReads)
            }
        }
    }

    /// Event loop: whether to hold the next socket read, and if so marks reads as paused.
    package func shouldPauseReads() -> Bool {
        guard self.buffered.load(ordering: .relaxed) > self.maxBufferedBytes else { return false }
        self.readsPaused.store(true, ordering: .relaxed)
        // A reader may have drained the buffer between the check and the flag.
        if self.buffered.load(ordering: .relaxed) <= self.maxBufferedBytes / 2 {
            self.readsPaused.store(false, ordering: .relaxed)
            return false
        }
        return true
    }

    /// Received message bytes no call has read yet; for tests.
    package var bufferedBytes: Int { self.buffered.load(ordering: .relaxed) }

    /// The most bytes ever held unread on this connection; for tests.
    package var peakBufferedBytes: Int { self.bufferedPeak.load(ordering: .relaxed) }

    /// Largest message that fits in a frame the peer accepts, leaving room for the frame's other parts.
    package var maxMessageSize: Int {
        self.peerMaxFrameSize.load(ordering: .relaxed) - 64
    }

    /// Messages the peer accepts on a new stream before it grants more.
    package var peerInitialWindow: Int {
        self.peerWindow.load(ordering: .relaxed)
    }

    package func setPeerLimits(_ limits: ConnectionStateMachine.Limits) {
        self.peerMaxFrameSize.store(Int(limits.maxFrameSize), ordering: .relaxed)
        self.peerWindow.store(Int(limits.initialWindow), ordering: .relaxed)
        let resumed: [CheckedContinuation<Void, any Error>] = self.state.withLock { state in
            state.maxConcurrentStreams = Int(limits.maxConcurrentStreams)
            var resumed: [CheckedContinuation<Void, any Error>] = []
            while state.openStreams < state.maxConcurrentStreams, let (_, waiter) = state.slotWaiters.popFirst() {
                state.openStreams += 1
                resumed.append(waiter)
            }
            return resumed
        }
        for waiter in resumed { waiter.resume() }
    }

    // MARK: Draining

    package func enqueue(_ stream: StreamChannel) {
        let (hooks, schedule, now) = self.state.withLock { state -> (Hooks?, Bool, Bool) in
            guard state.closedError == nil else { return (nil, false, false) }
            if stream.streamID == 0 {
                stream.assignID(state.nextStreamID)
                state.nextStreamID &+= 1
            }
            state.queue.append(stream)
            let now = state.queue.count >= Self.drainBatch
            guard !state.drainScheduled else { return (state.hooks, false, now) }
            state.drainScheduled = true
            return (state.hooks, true, now)
        }
        guard let hooks else { return }
        if schedule {
            self.eventLoop.execute(hooks.drain)
        }
        if now, self.eventLoop.inEventLoop {
            self.immediateDrains.add(1, ordering: .relaxed)
            hooks.drainNow()
        }
    }

    /// How often a write asked for the queue to be drained at once (``drainBatch``); for tests.
    package var immediateDrainCount: Int { self.immediateDrains.load(ordering: .relaxed) }

    /// Event loop: swaps the streams queued since the last drain (in the order they were queued,
    /// and so, for a client, in increasing stream id for first frames) for `queue`, an empty array
    /// whose storage the next enqueues reuse.
    package func takeQueue(_ queue: inout [StreamChannel]) {
        self.state.withLock { state in
            state.drainScheduled = false
            swap(&queue, &state.queue)
        }
    }

    // MARK: Writability

    package var isWritable: Bool { self.writable.load(ordering: .relaxed) }

    package func setWritable(_ isWritable: Bool) {
        self.writable.store(isWritable, ordering: .relaxed)
        guard isWritable else { return }
        let waiters = self.state.withLock { state in
            defer { state.writabilityWaiters.removeAll() }
            return Array(state.writabilityWaiters.values)
        }
        for waiter in waiters { waiter.resume() }
    }

    package func waitUntilWritable() async throws {
        let id = self.state.withLock { state in
            defer { state.nextWaiterID += 1 }
            return state.nextWaiterID
        }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let resume: Result<Void, any Error>? = self.state.withLock { state in
                    if Task.isCancelled { return .failure(CancellationError()) }
                    if let error = state.closedError { return .failure(error) }
                    if self.writable.load(ordering: .relaxed) { return .success(()) }
                    state.writabilityWaiters[id] = continuation
                    return nil
                }
                if let resume { continuation.resume(with: resume) }
            }
        } onCancel: {
            let waiter = self.state.withLock { $0.writabilityWaiters.removeValue(forKey: id) }
            waiter?.resume(throwing: CancellationError())
        }
    }

    // MARK: Client stream slots

    /// Waits until the peer's concurrency limit allows one more stream.
    package func acquireStreamSlot() async throws {
        let waiterID = try self.state.withLock { state throws(RPCError) -> UInt64? in
            if let error = state.closedError { throw error }
            guard state.acceptingStreams else {
                throw RPCError(code: .unavailable, message: "the connection is going away")
            }
            if state.openStreams < state.maxConcurrentStreams {
                state.openStreams += 1
                return nil
            }
            defer { state.nextWaiterID += 1 }
            return state.nextWaiterID
        }
        guard let id = waiterID else { return }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let outcome: Result<Void, any Error>? = self.state.withLock { state in
                    if Task.isCancelled { return .failure(CancellationError()) }
                    if let error = state.closedError { return .failure(error) }
                    if !state.acceptingStreams {
                        return .failure(RPCError(code: .unavailable, message: "the connection is going away"))
                    }
                    if state.openStreams < state.maxConcurrentStreams {
                        state.openStreams += 1
                        return .success(())
                    }
                    state.slotWaiters.append((id, continuation))
                    return nil
                }
                if let outcome { continuation.resume(with: outcome) }
            }
        } onCancel: {
            let waiter = self.state.withLock { state -> CheckedContinuation<Void, any Error>? in
                guard let index = state.slotWaiters.firstIndex(where: { $0.0 == id }) else { return nil }
                return state.slotWaiters.remove(at: index).1
            }
            waiter?.resume(throwing: CancellationError())
        }
    }

    package func releaseStreamSlot() {
        let waiter: CheckedContinuation<Void, any Error>? = self.state.withLock { state in
            state.openStreams -= 1
            guard state.openStreams < state.maxConcurrentStreams, let (_, waiter) = state.slotWaiters.popFirst() else {
                return nil
            }
            state.openStreams += 1
            return waiter
        }
        waiter?.resume()
    }

    package var openStreamCount: Int {
        self.state.withLock { $0.openStreams }
    }

    /// No new streams: a GoAway arrived or the client is shutting down.
    package func stopAcceptingStreams() {
        let waiters = self.state.withLock { state in
            state.acceptingStreams = false
            defer { state.slotWaiters.removeAll() }
            return state.slotWaiters.map(\.1)
        }
        for waiter in waiters {
            waiter.resume(throwing: RPCError(code: .unavailable, message: "the connection is going away"))
        }
    }

    package var isAcceptingStreams: Bool {
        self.state.withLock { $0.acceptingStreams && $0.closedError == nil }
    }

    /// The connection closed: everything waiting fails with `error`.
    package func close(_ error: RPCError) {
        let (writers, slots) = self.state.withLock { state in
            state.closedError = error
            state.acceptingStreams = false
            state.queue.removeAll()
            defer {
                state.writabilityWaiters.removeAll()
                state.slotWaiters.removeAll()
            }
            return (Array(state.writabilityWaiters.values), state.slotWaiters.map(\.1))
        }
        for waiter in writers { waiter.resume(throwing: error) }
        for waiter in slots { waiter.resume(throwing: error) }
    }
}
