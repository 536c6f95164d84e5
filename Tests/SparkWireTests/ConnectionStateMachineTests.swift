import GRPCCore
import NIOCore
@testable import SparkWire
import Testing

@Suite("Connection state machine")
struct ConnectionStateMachineTests {
    static let limits = ConnectionStateMachine.Limits(initialWindow: 4, maxFrameSize: 1 << 20, maxConcurrentStreams: 2)

    func server() -> ConnectionStateMachine {
        var machine = ConnectionStateMachine(role: .server, local: Self.limits)
        _ = machine.receive(WireFrame(streamID: 0, settings: .init()))
        return machine
    }

    func open(_ machine: inout ConnectionStateMachine, _ id: UInt32, messages: Int = 0, end: Bool = false) -> ConnectionStateMachine.ReceiveAction {
        machine.receive(WireFrame(
            streamID: id,
            headers: .init(method: "/s/m"),
            messages: Array(repeating: ByteBuffer(), count: messages),
            endStream: end
        ))
    }

    @Test("the first frame must carry settings")
    func settingsFirst() {
        var machine = ConnectionStateMachine(role: .server, local: Self.limits)
        guard case .connectionError(let code, _) = machine.receive(WireFrame(streamID: 1, headers: .init(method: "/s/m"))) else {
            Issue.record("expected a connection error")
            return
        }
        #expect(code == .internalError)
        #expect(machine.isClosed)
    }

    @Test("a window update in the frame that opens a stream is credit for that stream")
    func windowUpdateWithHeaders() {
        var machine = self.server()
        guard case .openStream(let delivery) = machine.receive(WireFrame(streamID: 1, headers: .init(method: "/s/m"), windowUpdate: 7)) else {
            Issue.record("expected the stream to open")
            return
        }
        #expect(delivery.credit == 7)
    }

    @Test("a first frame with more messages than the window is cancelled with code 8, as on an open stream")
    func firstFrameOverWindow() {
        var machine = self.server()
        guard case .resetStream(1, let code, _) = self.open(&machine, 1, messages: Int(Self.limits.initialWindow) + 1) else {
            Issue.record("expected a cancel")
            return
        }
        #expect(code == .resourceExhausted)
        // The connection lives on; the stream is not open.
        #expect(!machine.isClosed)
        guard case .openStream = self.open(&machine, 3, messages: Int(Self.limits.initialWindow)) else {
            Issue.record("a stream within the window should open")
            return
        }
    }

    @Test("settings are read once; defaults fill zeros; a second settings frame is an error")
    func settings() {
        var machine = ConnectionStateMachine(role: .client, local: Self.limits)
        guard case .settingsReceived(let peer) = machine.receive(WireFrame(streamID: 0, settings: .init(initialWindow: 9))) else {
            Issue.record("expected settings")
            return
        }
        #expect(peer.initialWindow == 9)
        #expect(peer.maxFrameSize == SparkWireProtocol.defaultMaxFrameSize)
        guard case .connectionError = machine.receive(WireFrame(streamID: 0, settings: .init())) else {
            Issue.record("expected a connection error")
            return
        }
    }

    @Test("a max_frame_size below 1024 is refused")
    func tinyFrames() {
        var machine = ConnectionStateMachine(role: .client, local: Self.limits)
        guard case .connectionError = machine.receive(WireFrame(streamID: 0, settings: .init(maxFrameSize: 10))) else {
            Issue.record("expected a connection error")
            return
        }
    }

    @Test("a stream opens, takes messages within its window, and is reset past it")
    func window() {
        var machine = self.server()
        guard case .openStream(let delivery) = self.open(&machine, 1, messages: 3) else {
            Issue.record("expected openStream")
            return
        }
        #expect(delivery.messages.count == 3)
        #expect(machine.streams[1]?.receiveWindow == 1)
        guard case .deliver = machine.receive(WireFrame(streamID: 1, messages: [ByteBuffer()])) else {
            Issue.record("expected deliver")
            return
        }
        guard case .resetStream(1, let code, _) = machine.receive(WireFrame(streamID: 1, messages: [ByteBuffer()])) else {
            Issue.record("expected a reset")
            return
        }
        #expect(code == .resourceExhausted)
        #expect(machine.streams[1] == nil)
    }

    @Test("sending a window update restores the peer's credit")
    func windowUpdate() {
        var machine = self.server()
        _ = self.open(&machine, 1, messages: 4)
        let sent58421 = machine.willSend(WireFrame(streamID: 1, windowUpdate: 2))
        #expect(sent58421)
        #expect(machine.streams[1]?.receiveWindow == 2)
    }

    @Test("streams beyond the concurrency limit are refused with RESOURCE_EXHAUSTED")
    func concurrency() {
        var machine = self.server()
        _ = self.open(&machine, 1)
        _ = self.open(&machine, 3)
        guard case .refuseStream(5, let trailers) = self.open(&machine, 5) else {
            Issue.record("expected a refusal")
            return
        }
        #expect(trailers.code == UInt32(Status.Code.resourceExhausted.rawValue))
        // A refused id is spent: later frames for it are discarded.
        guard case .none = machine.receive(WireFrame(streamID: 5, messages: [ByteBuffer()])) else {
            Issue.record("expected the frame to be discarded")
            return
        }
    }

    @Test("a frame for a stream never opened ends the connection; one for a closed stream is discarded")
    func unknownStreams() {
        var machine = self.server()
        _ = self.open(&machine, 1, end: true)
        let sent23461 = machine.willSend(WireFrame(streamID: 1, trailers: .init(code: 0)))
        #expect(sent23461)
        #expect(machine.streams.isEmpty)
        guard case .none = machine.receive(WireFrame(streamID: 1, messages: [ByteBuffer()])) else {
            Issue.record("late frame should be discarded")
            return
        }
        guard case .connectionError(let code, let message) = machine.receive(WireFrame(streamID: 9, messages: [ByteBuffer()])) else {
            Issue.record("expected a connection error")
            return
        }
        #expect(code == .internalError)
        #expect(message.contains("never opened"))
    }

    @Test("stream rules: headers twice, parts after end_stream, trailers from a client, zero window update")
    func streamRules() {
        var machine = self.server()
        _ = self.open(&machine, 1)
        guard case .resetStream(1, _, let twice) = machine.receive(WireFrame(streamID: 1, headers: .init(method: "/s/m"))) else {
            Issue.record("expected a reset")
            return
        }
        #expect(twice.contains("twice"))

        _ = self.open(&machine, 3, end: true)
        guard case .resetStream(3, _, _) = machine.receive(WireFrame(streamID: 3, messages: [ByteBuffer()])) else {
            Issue.record("expected a reset")
            return
        }

        machine = self.server()
        _ = self.open(&machine, 1)
        guard case .resetStream(1, _, _) = machine.receive(WireFrame(streamID: 1, trailers: .init(code: 0))) else {
            Issue.record("expected a reset")
            return
        }
        _ = self.open(&machine, 3)
        guard case .resetStream(3, _, _) = machine.receive(WireFrame(streamID: 3, windowUpdate: 0)) else {
            Issue.record("expected a reset")
            return
        }
    }

    @Test("connection frames may not carry stream parts and stream frames may not carry connection parts")
    func partsInTheWrongPlace() {
        var machine = self.server()
        guard case .connectionError = machine.receive(WireFrame(streamID: 0, messages: [ByteBuffer()])) else {
            Issue.record("expected a connection error")
            return
        }
        machine = self.server()
        _ = self.open(&machine, 1)
        guard case .connectionError = machine.receive(WireFrame(streamID: 1, ping: .init(payload: 1))) else {
            Issue.record("expected a connection error")
            return
        }
    }

    @Test("after GoAway, new streams are refused UNAVAILABLE and the connection closes when drained")
    func goAway() {
        var machine = self.server()
        _ = self.open(&machine, 1)
        let goAway = machine.beginGoAway()
        #expect(goAway?.lastStreamID == 1)
        let second = machine.beginGoAway()
        #expect(second == nil)
        #expect(!machine.canClose)
        guard case .refuseStream(3, let trailers) = self.open(&machine, 3) else {
            Issue.record("expected a refusal")
            return
        }
        #expect(trailers.code == UInt32(Status.Code.unavailable.rawValue))
        let sent23461 = machine.willSend(WireFrame(streamID: 1, trailers: .init(code: 0)))
        #expect(sent23461)
        #expect(machine.canClose)
    }

    @Test("a client learns which streams a GoAway left unprocessed")
    func clientGoAway() {
        var machine = ConnectionStateMachine(role: .client, local: Self.limits)
        _ = machine.receive(WireFrame(streamID: 0, settings: .init()))
        let sent54729 = machine.openLocalStream(1)
        #expect(sent54729)
        let sent25244 = machine.openLocalStream(3)
        #expect(sent25244)
        let sent1502 = machine.openLocalStream(5)
        #expect(sent1502)
        guard case .goAwayReceived(_, let unprocessed) = machine.receive(WireFrame(streamID: 0, goAway: .init(lastStreamID: 3))) else {
            Issue.record("expected goAwayReceived")
            return
        }
        #expect(unprocessed == [5])
        let refused = machine.openLocalStream(7)
        #expect(!refused)
        #expect(machine.streams.keys.sorted() == [1, 3])
    }

    @Test("a client rejects response messages before headers and end_stream from a server")
    func clientStreamRules() {
        var machine = ConnectionStateMachine(role: .client, local: Self.limits)
        _ = machine.receive(WireFrame(streamID: 0, settings: .init()))
        let sent54729 = machine.openLocalStream(1)
        #expect(sent54729)
        guard case .resetStream(1, _, _) = machine.receive(WireFrame(streamID: 1, messages: [ByteBuffer()])) else {
            Issue.record("expected a reset")
            return
        }
        let sent25244 = machine.openLocalStream(3)
        #expect(sent25244)
        guard case .resetStream(3, _, _) = machine.receive(WireFrame(streamID: 3, headers: .init(), endStream: true)) else {
            Issue.record("expected a reset")
            return
        }
        let sent1502 = machine.openLocalStream(5)
        #expect(sent1502)
        guard case .deliver(_, let closes) = machine.receive(WireFrame(streamID: 5, headers: .init(), messages: [ByteBuffer()], trailers: .init(code: 0))) else {
            Issue.record("expected deliver")
            return
        }
        #expect(closes)
        #expect(machine.streams[5] == nil)
        guard case .connectionError = machine.receive(WireFrame(streamID: 99, headers: .init())) else {
            Issue.record("expected a connection error")
            return
        }
    }

    @Test("pings are answered and acknowledged")
    func pings() {
        var machine = self.server()
        guard case .sendPingAck(42) = machine.receive(WireFrame(streamID: 0, ping: .init(payload: 42))) else {
            Issue.record("expected an ack to send")
            return
        }
        guard case .pingAcknowledged(42) = machine.receive(WireFrame(streamID: 0, ping: .init(payload: 42, ack: true))) else {
            Issue.record("expected an acknowledgement")
            return
        }
    }

    @Test("a peer that announces initial_window 0 gets the spec's default of 64, not this side's own 256")
    func zeroWindowMeansSpecDefault() {
        for role in [ConnectionStateMachine.Role.client, .server] {
            var machine = ConnectionStateMachine(role: role, local: .init())
            guard case .settingsReceived(let peer) = machine.receive(WireFrame(streamID: 0, settings: .init(initialWindow: 0))) else {
                Issue.record("expected settings")
                return
            }
            #expect(peer.initialWindow == 64)
            #expect(SparkWireProtocol.unannouncedInitialWindow == 64)
            #expect(machine.local.initialWindow == SparkWireProtocol.defaultInitialWindow)
        }
    }

    @Test("headers on an id at or below the highest opened get trailers INTERNAL; other late frames are discarded")
    func headersOnLowerStreamID() {
        var machine = self.server()
        _ = self.open(&machine, 7)
        // Lower ids that were never used each get an answer rather than silence.
        for id: UInt32 in [3, 1] {
            guard case .refuseStream(id, let trailers) = self.open(&machine, id, end: true) else {
                Issue.record("expected trailers for stream \(id)")
                return
            }
            #expect(trailers.code == UInt32(Status.Code.internalError.rawValue))
            #expect(trailers.message.contains("strictly increase"))
        }
        #expect(!machine.isClosed)
        // A window update for a lower id without headers stays a late frame: discarded.
        guard case .none = machine.receive(WireFrame(streamID: 5, windowUpdate: 4)) else {
            Issue.record("expected the frame to be discarded")
            return
        }
    }
}
