/// A frame SparkWire cannot accept. Either one ends the connection with a GoAway.
package struct WireFrameError: Error, Hashable, Sendable, CustomStringConvertible {
    package enum Kind: Hashable, Sendable {
        /// The bytes are not a valid `sparkops.wire.v1.Frame`; GoAway code INTERNAL.
        case malformed
        /// The length prefix is above the maximum frame size; GoAway code RESOURCE_EXHAUSTED.
        case tooLarge
    }

    package var kind: Kind
    package var reason: String

    package init(_ kind: Kind, _ reason: String) {
        self.kind = kind
        self.reason = reason
    }

    package var description: String {
        switch self.kind {
        case .malformed: return "malformed frame: \(self.reason)"
        case .tooLarge: return "frame too large: \(self.reason)"
        }
    }
}
