#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Reconnection delays: exponential growth with random jitter, as in gRPC's connection backoff.
///
/// Attempt `n` (from 1) waits `min(initial × multiplierⁿ⁻¹, maximum)`, scaled by a random factor in
/// `1 ± jitter`, so that clients cut off together do not reconnect together.
public struct SparkWireBackoff: Hashable, Sendable {
    public var initial: Duration
    public var maximum: Duration
    public var multiplier: Double
    /// Fraction of the delay by which it may randomly grow or shrink, in 0...1.
    public var jitter: Double

    public init(initial: Duration = .milliseconds(200), maximum: Duration = .seconds(30), multiplier: Double = 1.6, jitter: Double = 0.2) {
        precondition(initial > .zero && maximum >= initial && multiplier >= 1 && (0 ... 1).contains(jitter))
        self.initial = initial
        self.maximum = maximum
        self.multiplier = multiplier
        self.jitter = jitter
    }

    /// The delay before attempt `attempt` (1 for the first retry).
    public func delay(attempt: Int, using generator: inout some RandomNumberGenerator) -> Duration {
        let exponent = Double(max(0, attempt - 1))
        let base = min(self.initial.seconds * pow(self.multiplier, exponent), self.maximum.seconds)
        let factor = self.jitter == 0 ? 1 : Double.random(in: (1 - self.jitter) ... (1 + self.jitter), using: &generator)
        return .nanoseconds(Int64(base * factor * 1e9))
    }

    public func delay(attempt: Int) -> Duration {
        var generator = SystemRandomNumberGenerator()
        return self.delay(attempt: attempt, using: &generator)
    }
}

extension Duration {
    var seconds: Double {
        let (seconds, attoseconds) = self.components
        return Double(seconds) + Double(attoseconds) / 1e18
    }
}

