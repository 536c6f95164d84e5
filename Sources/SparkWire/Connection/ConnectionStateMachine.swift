package import GRPCCore
package import NIOCore

/// The rules of one SparkWire connection, as a value type: which frames are allowed when, which
/// streams exist, how much message credit the peer has left on each, and when the connection ends.
///
/// It performs no I/O. ``ConnectionHandler`` feeds it every frame received and every frame about to
/// be sent and performs the actions it returns; the tests and the fuzzer drive it directly.
package struct ConnectionStateMachine: Sendable {
    package enum Role: Sendable {
        case client
        case server
    }

    /// Limits one side announces in its Settings frame.
    package struct Limits: Hashable, Sendable {
        package var initialWindow: UInt32
        package var maxFrameSize: UInt32
        package var maxConcurrentStreams: UInt32

        package init(
            initialWindow: UInt32 = SparkWireProtocol.defaultInitialWindow,
            maxFrameSize: UInt32 = SparkWireProtocol.defaultMaxFrameSize,
            maxConcurrentStreams: UInt32 = SparkWireProtocol.defaultMaxConcurrentStreams
        ) {
            self.initialWindow = initialWindow
            self.maxFrameSize = maxFrameSize
            self.maxConcurrentStreams = maxConcurrentStreams
        }

        package init(_ settings: WireFrame.Settings) {
            // 0 means the spec's default (64), not what this side would announce for itself.
            self.initialWindow = settings.initialWindow == 0 ? SparkWireProtocol.unannouncedInitialWindow : settings.initialWindow
            self.maxFrameSize = settings.maxFrameSize == 0 ? SparkWireProtocol.defaultMaxFrameSize : settings.maxFrameSize
            self.maxConcurrentStreams =
                settings.maxConcurrentStreams == 0 ? SparkWireProtocol.defaultMaxConcurrentStreams : settings.maxConcurrentStreams
        }

        package var settings: WireFrame.Settings {
            WireFrame.Settings(
                version: SparkWireProtocol.version,
                initialWindow: self.initialWindow,
                maxFrameSize: self.maxFrameSize,
                maxConcurrentStreams: self.maxConcurrentStreams
            )
        }
    }

    /// What the protocol knows of an open stream.
    package struct StreamRecord: Hashable, Sendable {
        /// Messages the peer may still send before it needs more credit.
        package var receiveWindow: Int64
        /// The peer has finished sending: end_stream from a client, trailers from a server.
        package var remoteEnded: Bool = false
        /// Client only: the response headers arrived.
        package var responseStarted: Bool = false
        /// Client only: end_stream was sent.
        package var localEnded: Bool = false
    }

    /// Parts of a received stream frame for the stream's reader.
    package struct Delivery: Sendable {
        package var streamID: UInt32
        package var headers: WireFrame.Headers?
        package var messages: [ByteBuffer]
        package var endStream: Bool
        package var trailers: WireFrame.Trailers?
        /// Message credit the peer granted with this frame; 0 for none.
        package var credit: UInt32 = 0
    }

    package enum ReceiveAction: Sendable {
        /// Nothing to do (a frame for a stream that has already closed, say).
        case none
        /// The peer's Settings arrived; the connection may now carry streams.
        case settingsReceived(Limits)
        /// Answer a ping.
        case sendPingAck(UInt64)
        /// The peer answered our ping.
        case pingAcknowledged(UInt64)
        /// Server: a client opened a stream.
        case openStream(Delivery)
        /// Server: a new stream is refused at once with these trailers; no handler runs.
        case refuseStream(UInt32, WireFrame.Trailers)
        /// Parts for an open stream, or credit the peer granted on it. `closesStream` is set when
        /// the stream has ended (client: trailers arrived).
        case deliver(Delivery, closesStream: Bool)
        /// The peer cancelled a stream.
        case streamCancelled(UInt32, WireFrame.Cancel)
        /// The peer broke a stream's rules: fail it locally and send Cancel with this code.
        case resetStream(UInt32, code: RPCError.Code, message: String)
        /// The peer sent GoAway. Client: the streams listed were not processed and must fail UNAVAILABLE.
        case goAwayReceived(WireFrame.GoAway, unprocessed: [UInt32])
        /// The peer broke the connection's rules: send GoAway with this code and close.
        case connectionError(code: RPCError.Code, message: String)
    }

    package let role: Role
    package let local: Limits
    package private(set) var peer: Limits
    package private(set) var settingsReceived = false
    package private(set) var streams: [UInt32: StreamRecord] = [:]
    /// Server: the highest stream id a client opened. Client: the highest id it opened.
    package private(set) var highestStreamID: UInt32 = 0
    package private(set) var goAwaySent: UInt32?
    package private(set) var goAwayReceived: UInt32?
    package private(set) var isClosed = false

    package init(role: Role, local: Limits) {
        self.role = role
        self.local = local
        self.peer = Limits()
    }

    /// Whether the connection has finished draining after a GoAway and can close.
    package var canClose: Bool {
        (self.goAwaySent != nil || self.goAwayReceived != nil) && self.streams.isEmpty
    }

    // MARK: Receiving

    package mutating func receive(_ frame: WireFrame) -> ReceiveAction {
        guard !self.isClosed else { return .none }
        guard self.settingsReceived else {
            guard frame.streamID == 0, let settings = frame.settings else {
                return self.fail(.internalError, "the first frame must carry settings on stream 0")
            }
            guard settings.version == SparkWireProtocol.version || settings.version == 0 else {
                return self.fail(.unimplemented, "unsupported protocol version \(settings.version)")
            }
            let limits = Limits(settings)
            guard limits.maxFrameSize >= 1024 else {
                return self.fail(.internalError, "max_frame_size \(limits.maxFrameSize) is below 1024")
            }
            self.peer = limits
            self.settingsReceived = true
            if frame.ping != nil || frame.goAway != nil {
                return self.receiveConnectionFrame(WireFrame(streamID: 0, ping: frame.ping, goAway: frame.goAway))
            }
            return .settingsReceived(limits)
        }
        if frame.streamID == 0 {
            return self.receiveConnectionFrame(frame)
        }
        return self.receiveStreamFrame(frame)
    }

    private mutating func receiveConnectionFrame(_ frame: WireFrame) -> ReceiveAction {
        if frame.headers != nil || !frame.messages.isEmpty || frame.endStream || frame.trailers != nil
            || frame.cancel != nil || frame.windowUpdate != nil
        {
            return self.fail(.internalError, "stream parts on stream 0")
        }
        if frame.settings != nil {
            return self.fail(.internalError, "settings sent twice")
        }
        if let goAway = frame.goAway {
            let previous = self.goAwayReceived ?? .max
            self.goAwayReceived = min(previous, goAway.lastStreamID)
            var unprocessed: [UInt32] = []
            if self.role == .client {
                for id in self.streams.keys where id > goAway.lastStreamID {
                    unprocessed.append(id)
                }
                for id in unprocessed {
                    self.streams.removeValue(forKey: id)
                }
            }
            return .goAwayReceived(goAway, unprocessed: unprocessed.sorted())
        }
        if let ping = frame.ping {
            return ping.ack ? .pingAcknowledged(ping.payload) : .sendPingAck(ping.payload)
        }
        return .none
    }

    private mutating func receiveStreamFrame(_ frame: WireFrame) -> ReceiveAction {
        if frame.settings != nil || frame.ping != nil || frame.goAway != nil {
            return self.fail(.internalError, "connection parts on stream \(frame.streamID)")
        }
        let id = frame.streamID
        guard var record = self.streams[id] else {
            return self.receiveForUnknownStream(frame)
        }

        if let cancel = frame.cancel {
            self.streams.removeValue(forKey: id)
            return .streamCancelled(id, cancel)
        }
        if let increment = frame.windowUpdate, increment == 0 {
            return self.reset(id, .internalError, "window_update with increment 0")
        }
        return self.receiveStreamParts(frame, record: &record)
    }

    private mutating func receiveStreamParts(
        _ frame: WireFrame,
        record: inout StreamRecord
    ) -> ReceiveAction {
        let id = frame.streamID
        switch self.role {
        case .server:
            if frame.headers != nil {
                return self.reset(id, .internalError, "request headers sent twice")
            }
            if frame.trailers != nil {
                return self.reset(id, .internalError, "a client may not send trailers")
            }
            if record.remoteEnded && (!frame.messages.isEmpty || frame.endStream) {
                return self.reset(id, .internalError, "request parts after end_stream")
            }
        case .client:
            if frame.headers != nil && record.responseStarted {
                return self.reset(id, .internalError, "response headers sent twice")
            }
            if frame.headers == nil && !record.responseStarted && !frame.messages.isEmpty {
                return self.reset(id, .internalError, "response message before response headers")
            }
            if frame.endStream {
                return self.reset(id, .internalError, "a server ends a stream with trailers, not end_stream")
            }
            if frame.headers != nil { record.responseStarted = true }
        }

        record.receiveWindow -= Int64(frame.messages.count)
        if record.receiveWindow < 0 {
            return self.reset(id, .resourceExhausted, "the peer sent more messages than its window allowed")
        }
        if frame.endStream { record.remoteEnded = true }

        let closes = frame.trailers != nil
        if closes {
            self.streams.removeValue(forKey: id)
        } else {
            self.streams[id] = record
        }
        let delivery = Delivery(
            streamID: id,
            headers: frame.headers,
            messages: frame.messages,
            endStream: frame.endStream,
            trailers: frame.trailers,
            credit: frame.windowUpdate ?? 0
        )
        return .deliver(delivery, closesStream: closes)
    }

    private mutating func receiveForUnknownStream(_ frame: WireFrame) -> ReceiveAction {
        let id = frame.streamID
        switch self.role {
        case .client:
            // A stream the client opened and has since closed: late frames are discarded.
            if id <= self.highestStreamID { return .none }
            return self.fail(.internalError, "frame for stream \(id), which the client never opened")

        case .server:
            if id <= self.highestStreamID {
                // Headers open a stream, so headers on an id at or below the highest opened one
                // (reused, or lower and never used) can never be right: the caller would wait
                // forever for an answer, so it gets one. Other late frames of a closed stream
                // (a window update that crossed a cancel) are discarded.
                if frame.headers != nil && frame.cancel == nil && frame.trailers == nil {
                    return .refuseStream(
                        id,
                        WireFrame.Trailers(
                            code: UInt32(Status.Code.internalError.rawValue),
                            message: "stream \(id) is not above the highest stream opened (\(self.highestStreamID)); stream ids strictly increase"
                        )
                    )
                }
                return .none
            }
            guard let headers = frame.headers else {
                return self.fail(.internalError, "frame for stream \(id), which was never opened")
            }
            self.highestStreamID = id
            if frame.cancel != nil || frame.trailers != nil {
                return .none
            }
            if self.goAwaySent != nil {
                return .refuseStream(id, WireFrame.Trailers(code: UInt32(Status.Code.unavailable.rawValue), message: "the server is shutting down; retry on another connection"))
            }
            if headers.method.isEmpty {
                return .refuseStream(id, WireFrame.Trailers(code: UInt32(Status.Code.invalidArgument.rawValue), message: "request headers carry no method"))
            }
            if self.streams.count >= Int(self.local.maxConcurrentStreams) {
                return .refuseStream(
                    id,
                    WireFrame.Trailers(
                        code: UInt32(Status.Code.resourceExhausted.rawValue),
                        message: "too many concurrent streams; the limit is \(self.local.maxConcurrentStreams)"
                    )
                )
            }
            var record = StreamRecord(receiveWindow: Int64(self.local.initialWindow))
            record.receiveWindow -= Int64(frame.messages.count)
            if record.receiveWindow < 0 {
                // A flow-control violation, as on an open stream: cancel {8} (§4), not trailers.
                return .resetStream(id, code: .resourceExhausted, message: "the first frame carried more messages than the window allows")
            }
            record.remoteEnded = frame.endStream
            self.streams[id] = record
            // A window update that travels with the opening headers is credit like any other.
            return .openStream(Delivery(streamID: id, headers: headers, messages: frame.messages, endStream: frame.endStream, trailers: nil, credit: frame.windowUpdate ?? 0))
        }
    }

    private mutating func reset(_ id: UInt32, _ code: RPCError.Code, _ message: String) -> ReceiveAction {
        self.streams.removeValue(forKey: id)
        return .resetStream(id, code: code, message: message)
    }

    private mutating func fail(_ code: RPCError.Code, _ message: String) -> ReceiveAction {
        self.isClosed = true
        self.streams.removeAll()
        return .connectionError(code: code, message: message)
    }

    // MARK: Local events

    /// Client: a stream is about to send its first frame. Returns false when the connection no
    /// longer accepts new streams (a GoAway arrived) and the stream must fail UNAVAILABLE.
    package mutating func openLocalStream(_ id: UInt32) -> Bool {
        precondition(self.role == .client)
        guard !self.isClosed, self.goAwayReceived == nil, id > self.highestStreamID else { return false }
        self.highestStreamID = id
        self.streams[id] = StreamRecord(receiveWindow: Int64(self.local.initialWindow))
        return true
    }

    /// Records a stream frame about to be sent. Returns false when the stream no longer exists and
    /// the frame must be dropped. Trailers (server) and Cancel (either side) close the stream.
    package mutating func willSend(_ frame: WireFrame) -> Bool {
        guard !self.isClosed, var record = self.streams[frame.streamID] else { return false }
        if let increment = frame.windowUpdate {
            record.receiveWindow += Int64(increment)
        }
        if frame.endStream { record.localEnded = true }
        if frame.cancel != nil || frame.trailers != nil {
            self.streams.removeValue(forKey: frame.streamID)
        } else {
            self.streams[frame.streamID] = record
        }
        return true
    }

    /// Forgets a stream without sending anything (a client stream that completed).
    package mutating func closeStream(_ id: UInt32) {
        self.streams.removeValue(forKey: id)
    }

    /// Starts a graceful close. Returns the GoAway to send, or nil if one was already sent.
    package mutating func beginGoAway(code: UInt32 = 0, message: String = "") -> WireFrame.GoAway? {
        guard self.goAwaySent == nil, !self.isClosed else { return nil }
        let last = self.role == .server ? self.highestStreamID : 0
        self.goAwaySent = last
        return WireFrame.GoAway(lastStreamID: last, code: code, message: message)
    }

    /// The connection closed: every stream is gone.
    package mutating func closed() -> [UInt32] {
        self.isClosed = true
        let ids = Array(self.streams.keys)
        self.streams.removeAll()
        return ids
    }
}

