package import GRPCCore
package import NIOCore

/// One SparkWire frame, decoded. The wire form is the protobuf message `sparkops.wire.v1.Frame`
/// behind a 4-byte big-endian length; ``WireFrame/encode(into:)`` and ``WireFrame/decode(_:)`` convert.
///
/// Several parts may travel in one frame; a unary call is one frame each way.
package struct WireFrame: Hashable, Sendable {
    /// Request or response metadata that opens a stream.
    package struct Headers: Hashable, Sendable {
        /// Request only: `/<package>.<Service>/<Method>`.
        package var method: String
        /// Request only: microseconds the caller allows; 0 means no deadline.
        package var timeoutMicros: UInt64
        package var metadata: Metadata

        package init(method: String = "", timeoutMicros: UInt64 = 0, metadata: Metadata = [:]) {
            self.method = method
            self.timeoutMicros = timeoutMicros
            self.metadata = metadata
        }
    }

    /// The status that ends a call.
    package struct Trailers: Hashable, Sendable {
        package var code: UInt32
        package var message: String
        package var metadata: Metadata

        package init(code: UInt32, message: String = "", metadata: Metadata = [:]) {
            self.code = code
            self.message = message
            self.metadata = metadata
        }
    }

    /// Abandons a stream.
    package struct Cancel: Hashable, Sendable {
        package var code: UInt32
        package var message: String

        package init(code: UInt32, message: String = "") {
            self.code = code
            self.message = message
        }
    }

    /// A side's limits; 0 means the protocol default.
    package struct Settings: Hashable, Sendable {
        package var version: UInt32
        package var initialWindow: UInt32
        package var maxFrameSize: UInt32
        package var maxConcurrentStreams: UInt32

        package init(version: UInt32 = 1, initialWindow: UInt32 = 0, maxFrameSize: UInt32 = 0, maxConcurrentStreams: UInt32 = 0) {
            self.version = version
            self.initialWindow = initialWindow
            self.maxFrameSize = maxFrameSize
            self.maxConcurrentStreams = maxConcurrentStreams
        }
    }

    package struct Ping: Hashable, Sendable {
        package var payload: UInt64
        package var ack: Bool

        package init(payload: UInt64, ack: Bool = false) {
            self.payload = payload
            self.ack = ack
        }
    }

    package struct GoAway: Hashable, Sendable {
        package var lastStreamID: UInt32
        package var code: UInt32
        package var message: String

        package init(lastStreamID: UInt32, code: UInt32 = 0, message: String = "") {
            self.lastStreamID = lastStreamID
            self.code = code
            self.message = message
        }
    }

    package var streamID: UInt32
    package var headers: Headers?
    package var messages: [ByteBuffer]
    package var endStream: Bool
    package var trailers: Trailers?
    package var cancel: Cancel?
    /// The increment of a window update; nil when the frame carries none.
    package var windowUpdate: UInt32?
    package var settings: Settings?
    package var ping: Ping?
    package var goAway: GoAway?

    package init(
        streamID: UInt32,
        headers: Headers? = nil,
        messages: [ByteBuffer] = [],
        endStream: Bool = false,
        trailers: Trailers? = nil,
        cancel: Cancel? = nil,
        windowUpdate: UInt32? = nil,
        settings: Settings? = nil,
        ping: Ping? = nil,
        goAway: GoAway? = nil
    ) {
        self.streamID = streamID
        self.headers = headers
        self.messages = messages
        self.endStream = endStream
        self.trailers = trailers
        self.cancel = cancel
        self.windowUpdate = windowUpdate
        self.settings = settings
        self.ping = ping
        self.goAway = goAway
    }
}

/// Protocol constants of SparkWire version 1.
public enum SparkWireProtocol {
    /// The ALPN protocol name both sides must negotiate.
    public static let alpn = "sparkwire/1"
    public static let version: UInt32 = 1
    /// Messages a peer may send on a new stream before it receives a WindowUpdate, unless Settings say otherwise.
    public static let defaultInitialWindow: UInt32 = 256
    /// The window of a peer whose settings announce `initial_window` 0: the spec's default.
    public static let unannouncedInitialWindow: UInt32 = 64
    /// Bytes of a frame, without its 4-byte prefix, unless Settings say otherwise.
    public static let defaultMaxFrameSize: UInt32 = 4 * 1024 * 1024
    /// Streams a peer may have open at once, unless Settings say otherwise.
    public static let defaultMaxConcurrentStreams: UInt32 = 100
    /// Bytes of the length prefix.
    public static let prefixLength = 4
}
