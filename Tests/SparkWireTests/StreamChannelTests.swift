import Dispatch
import GRPCCore
import NIOCore
import NIOPosix
@testable import SparkWire
import Synchronization
import Testing

/// A stream's shared state on its own, without a socket: what the event loop delivers and what the
/// call reads and writes.
@Suite("SparkWire stream channel")
struct StreamChannelTests {
    private func makeStream(sendCredit: Int = 64, holdUntilEnd: Bool = true) -> (ConnectionOutbox, StreamChannel) {
        let outbox = ConnectionOutbox(eventLoop: MultiThreadedEventLoopGroup.singleton.next())
        let stream = StreamChannel(id: 1, outbox: outbox, sendCredit: sendCredit, receiveWindow: 1_000, holdUntilEnd: holdUntilEnd)
        return (outbox, stream)
    }

    private func message(_ index: Int) -> StreamChannel.InboundPart {
        var buffer = ByteBuffer()
        buffer.writeInteger(UInt32(index))
        buffer.writeRepeatingByte(0, count: 96)
        return .message(buffer)
    }

    private func read(_ stream: StreamChannel, count: Int) async throws -> [Int] {
        var indices: [Int] = []
        for _ in 0 ..< count {
            guard case .message(var buffer)? = try await stream.next() else {
                Issue.record("expected a message")
                return indices
            }
            indices.append(Int(buffer.readInteger(as: UInt32.self) ?? .max))
        }
        return indices
    }

    @Test("parts are read in the order delivered, across deliveries made while earlier ones are unread")
    func readOrderAcrossDeliveries() async throws {
        let (outbox, stream) = self.makeStream()
        var read: [Int] = []
        stream.deliver([.headers([:])] + (0 ..< 100).map(self.message), end: false)
        guard case .headers? = try await stream.next() else {
            Issue.record("expected the headers first")
            return
        }
        read += try await self.read(stream, count: 40)
        for batch in stride(from: 100, to: 130, by: 3) {
            stream.deliver((batch ..< batch + 3).map(self.message), end: false)
        }
        read += try await self.read(stream, count: 50)
        stream.deliver((130 ..< 150).map(self.message), end: true)
        read += try await self.read(stream, count: 60)
        #expect(try await stream.next() == nil)
        #expect(read == Array(0 ..< 150))
        #expect(outbox.bufferedBytes == 0)
        #expect(outbox.peakBufferedBytes >= 100 * 100)
    }

    @Test("a reader waiting when parts arrive gets the first, and the rest stay readable")
    func waitingReader() async throws {
        let (outbox, stream) = self.makeStream()
        async let first = stream.next()
        try await eventuallyWaiting(stream)
        stream.deliver([.headers([:]), self.message(7), .trailers(Status(code: .ok, message: ""), [:])], end: true)
        guard case .headers? = try await first else {
            Issue.record("expected the headers first")
            return
        }
        #expect(try await self.read(stream, count: 1) == [7])
        guard case .trailers(let status, _)? = try await stream.next() else {
            Issue.record("expected the trailers")
            return
        }
        #expect(status.code == .ok)
        #expect(try await stream.next() == nil)
        #expect(outbox.bufferedBytes == 0)
    }

    @Test("failing a stream drops its unread messages and returns their bytes to the connection")
    func failDropsUnread() async throws {
        let (outbox, stream) = self.makeStream()
        stream.deliver((0 ..< 5).map(self.message), end: false)
        #expect(outbox.bufferedBytes == 5 * 100)
        #expect(try await self.read(stream, count: 2) == [0, 1])
        #expect(outbox.bufferedBytes == 3 * 100)
        stream.fail(RPCError(code: .unavailable, message: "the connection closed"))
        #expect(outbox.bufferedBytes == 0)
        await #expect { _ = try await stream.next() } throws: { ($0 as? RPCError)?.code == .unavailable }
    }

    @Test("a unary side is queued as one frame's parts: headers, message and end of stream")
    func writeUnaryQueuesOneFrame() async throws {
        let (_, stream) = self.makeStream()
        var message = ByteBuffer()
        message.writeString("request")
        try await stream.writeUnary(headers: .init(method: "/a.B/C", timeoutMicros: 5), message: message, end: .endStream)
        let (pending, first) = stream.takePending()
        #expect(first)
        #expect(pending.headers?.method == "/a.B/C")
        #expect(pending.headers?.timeoutMicros == 5)
        #expect(pending.messages == [message])
        #expect(pending.endStream)
        #expect(pending.trailers == nil)
        #expect(throws: RPCError.self) { try stream.writeEndStream() }

        let (_, server) = self.makeStream()
        try await server.writeUnary(headers: .init(), message: message, end: .trailers(.init(code: 0, message: "done")))
        let (answer, _) = server.takePending()
        #expect(answer.messages == [message])
        #expect(answer.trailers?.message == "done")
        #expect(!answer.endStream)
    }

    @Test("a unary message over the peer's limit fails as writeMessage does, after the headers")
    func writeUnaryOversized() async throws {
        let (outbox, stream) = self.makeStream()
        outbox.setPeerLimits(.init(maxFrameSize: 1_024))
        let message = ByteBuffer(repeating: 1, count: 2_048)
        await #expect {
            try await stream.writeUnary(headers: .init(method: "/a.B/C"), message: message, end: .endStream)
        } throws: { ($0 as? RPCError)?.code == .resourceExhausted }
        let (pending, _) = stream.takePending()
        #expect(pending.headers?.method == "/a.B/C")
        #expect(pending.messages.isEmpty)
        #expect(!pending.endStream)
    }

    @Test("a unary side without send credit writes its headers and waits for credit")
    func writeUnaryWaitsForCredit() async throws {
        let (outbox, stream) = self.makeStream(sendCredit: 0, holdUntilEnd: false)
        let message = ByteBuffer(string: "late")
        let write = Task { try await stream.writeUnary(headers: .init(method: "/a.B/C"), message: message, end: .endStream) }
        var queue: [StreamChannel] = []
        try await eventually { outbox.takeQueue(&queue); return !queue.isEmpty }
        let (headersOnly, _) = stream.takePending()
        #expect(headersOnly.headers?.method == "/a.B/C")
        #expect(headersOnly.messages.isEmpty)
        stream.grantCredit(1)
        try await write.value
        let (rest, _) = stream.takePending()
        #expect(rest.messages == [message])
        #expect(rest.endStream)
    }

    /// Waits until `stream` has a reader parked on it: `deliver` then resumes that reader.
    private func eventuallyWaiting(_ stream: StreamChannel) async throws {
        try await eventually { stream.hasWaitingReader }
    }
}

@Suite("Event loop task executor")
struct EventLoopTaskExecutorTests {
    @Test("tasks run on the loop in the order they were enqueued, and again after each suspends")
    func ordering() async throws {
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let executor = EventLoopTaskExecutor(loop)
        let log = RunLog()
        // The loop is held while the tasks are made, so that they queue up and run as one batch;
        // each is enqueued as it is made, so their first halves must run in the order made.
        let gate = DispatchSemaphore(value: 0)
        loop.execute { gate.wait() }
        let tasks = (0 ..< 500).map { index in
            Task(executorPreference: executor) {
                log.record(index, phase: 0, onLoop: loop.inEventLoop)
                await Task.yield()
                log.record(index, phase: 1, onLoop: loop.inEventLoop)
            }
        }
        gate.signal()
        for task in tasks { await task.value }
        let (phases, offLoop) = log.snapshot
        #expect(phases[0] == Array(0 ..< 500))
        #expect(phases[1].sorted() == Array(0 ..< 500))
        #expect(offLoop == 0)
    }

    private final class RunLog: Sendable {
        private let state = Mutex<(phases: [[Int]], offLoop: Int)>(([[], []], 0))

        func record(_ index: Int, phase: Int, onLoop: Bool) {
            self.state.withLock {
                $0.phases[phase].append(index)
                if !onLoop { $0.offLoop += 1 }
            }
        }

        var snapshot: (phases: [[Int]], offLoop: Int) { self.state.withLock { $0 } }
    }
}
