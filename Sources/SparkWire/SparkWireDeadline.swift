import GRPCCore

/// The deadline of the RPC a task is serving, so that the calls it makes inherit it.
///
/// ``SparkWireServerTransport`` runs each handler with `current` set to the incoming call's deadline;
/// ``SparkWireClientTransport`` gives every outgoing call at most the time that remains. A handler
/// with 300 ms left that calls another service therefore sends a timeout of at most 300 ms, and the
/// callee stops working on the request when the caller has given up.
public enum SparkWireDeadline {
    @TaskLocal
    public static var current: ContinuousClock.Instant?

    /// The time left until `current`, or nil when the task serves no call with a deadline.
    public static var remaining: Duration? {
        self.current.map { ContinuousClock.now.duration(to: $0) }
    }

    /// The `timeout_micros` an outgoing call's headers carry: the smaller of the call's own
    /// timeout and the time that remains of the call this task serves; 0 for none.
    static func wireTimeout(requested: Duration?) throws(RPCError) -> UInt64 {
        var timeout = requested
        if let remaining = self.remaining {
            timeout = min(timeout ?? remaining, remaining)
        }
        guard let timeout else { return 0 }
        guard timeout > .zero else {
            throw RPCError(code: .deadlineExceeded, message: "the deadline passed before the call was sent")
        }
        return timeout.wireMicroseconds
    }
}

extension Duration {
    /// Whole microseconds, rounded up so that a positive duration never becomes 0 (no deadline).
    var wireMicroseconds: UInt64 {
        let (seconds, attoseconds) = self.components
        guard seconds >= 0 else { return 0 }
        let micros = UInt64(seconds) * 1_000_000 + UInt64(attoseconds / 1_000_000_000_000)
        let remainder = attoseconds % 1_000_000_000_000
        return micros + (remainder > 0 ? 1 : 0)
    }
}
