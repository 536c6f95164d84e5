package import NIOCore

/// Keepalive: ping a quiet connection and close it when the answer does not come.
public struct SparkWireKeepalive: Hashable, Sendable {
    /// Send a ping after this long without receiving a frame.
    public var interval: Duration
    /// Close the connection when a ping stays unanswered this long.
    public var timeout: Duration

    public init(interval: Duration, timeout: Duration) {
        self.interval = interval
        self.timeout = timeout
    }
}

/// Limits and behaviour of one SparkWire connection, server or client side.
public struct SparkWireConnectionLimits: Hashable, Sendable {
    /// Largest frame accepted, in bytes without the prefix; announced to the peer. Default 4 MiB.
    public var maxFrameSize: Int
    /// Messages the peer may send on a stream before this side grants more. Default 256.
    public var initialWindow: Int
    /// Streams the peer may have open at once on this connection (servers). Default 100.
    public var maxConcurrentStreams: Int
    /// Bytes of received messages a connection may hold that no call has read yet. Above it the
    /// connection stops reading from its socket (TCP pushes back on the sender) until readers have
    /// drained it below half. Default 16 MiB. Memory per connection is bounded by this plus one frame.
    public var maxBufferedBytes: Int

    public init(
        maxFrameSize: Int = Int(SparkWireProtocol.defaultMaxFrameSize),
        initialWindow: Int = Int(SparkWireProtocol.defaultInitialWindow),
        maxConcurrentStreams: Int = Int(SparkWireProtocol.defaultMaxConcurrentStreams),
        maxBufferedBytes: Int = 16 << 20
    ) {
        self.maxFrameSize = maxFrameSize
        self.initialWindow = initialWindow
        self.maxConcurrentStreams = maxConcurrentStreams
        self.maxBufferedBytes = maxBufferedBytes
    }

    public static let defaults = SparkWireConnectionLimits()

    package var stateMachineLimits: ConnectionStateMachine.Limits {
        ConnectionStateMachine.Limits(
            initialWindow: UInt32(clamping: self.initialWindow),
            maxFrameSize: UInt32(clamping: self.maxFrameSize),
            maxConcurrentStreams: UInt32(clamping: self.maxConcurrentStreams)
        )
    }
}

package struct ConnectionConfiguration: Sendable {
    package var role: ConnectionStateMachine.Role
    package var limits: SparkWireConnectionLimits
    package var keepalive: SparkWireKeepalive?
    package var methods: SparkWireMethodTable
    /// Wait for the TLS handshake (and check ALPN) before speaking; false for plaintext.
    package var usesTLS: Bool
    /// Servers: how long draining connections may take after GoAway before they are closed.
    package var gracePeriod: Duration?

    package init(
        role: ConnectionStateMachine.Role,
        limits: SparkWireConnectionLimits,
        keepalive: SparkWireKeepalive?,
        methods: SparkWireMethodTable,
        usesTLS: Bool,
        gracePeriod: Duration? = nil
    ) {
        self.role = role
        self.limits = limits
        self.keepalive = keepalive
        self.methods = methods
        self.usesTLS = usesTLS
        self.gracePeriod = gracePeriod
    }
}

extension Duration {
    package var timeAmount: TimeAmount {
        let (seconds, attoseconds) = self.components
        return .nanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
    }
}
