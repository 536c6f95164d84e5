public import GRPCCore

/// What SparkWire knows about an RPC method beyond its name: its streaming shape and whether it may
/// be retried.
///
/// `protoc-gen-sparkops` generates one per method (`SparkProtoMethods.all`). A transport given the
/// table sends a unary request as a single frame (headers, message and end of stream together) and a
/// single response as a single frame (headers, message and trailers), and
/// ``SparkWireClientTransport`` offers GRPCCore's retry policy only to methods marked idempotent.
public struct SparkWireMethod: Hashable, Sendable {
    /// How a method's proto declares its side effects (`option idempotency_level`).
    public enum Idempotency: Hashable, Sendable {
        /// Not declared: the method may have side effects and is never retried automatically.
        case unknown
        /// `IDEMPOTENT`: calling it twice has the same effect as calling it once.
        case idempotent
        /// `NO_SIDE_EFFECTS`: a read.
        case noSideEffects

        /// Whether GRPCCore may retry a failed call of the method.
        public var isRetryable: Bool { self != .unknown }
    }

    /// The method's path, `/<package>.<Service>/<Method>`.
    public var path: String
    /// Whether the client sends a stream of messages.
    public var requestStreaming: Bool
    /// Whether the server sends a stream of messages.
    public var responseStreaming: Bool
    /// The method's declared idempotency.
    public var idempotency: Idempotency

    public init(path: String, requestStreaming: Bool, responseStreaming: Bool, idempotency: Idempotency) {
        self.path = path
        self.requestStreaming = requestStreaming
        self.responseStreaming = responseStreaming
        self.idempotency = idempotency
    }

    /// The GRPCCore descriptor of the method.
    public var descriptor: MethodDescriptor {
        let trimmed = self.path.dropFirst()
        let slash = trimmed.lastIndex(of: "/") ?? trimmed.endIndex
        let service = String(trimmed[..<slash])
        let method = slash == trimmed.endIndex ? "" : String(trimmed[trimmed.index(after: slash)...])
        return MethodDescriptor(fullyQualifiedService: service, method: method)
    }
}

/// A lookup table of method traits by path.
package struct SparkWireMethodTable: Sendable {
    private let byPath: [String: (method: SparkWireMethod, descriptor: MethodDescriptor)]

    package init(_ methods: [SparkWireMethod]) {
        var byPath: [String: (method: SparkWireMethod, descriptor: MethodDescriptor)] = [:]
        for method in methods {
            byPath[method.path] = (method, method.descriptor)
        }
        self.byPath = byPath
    }

    package subscript(path path: String) -> SparkWireMethod? {
        self.byPath[path]?.method
    }

    /// The descriptor of a known method without parsing its path again.
    package func descriptor(path: String) -> MethodDescriptor? {
        self.byPath[path]?.descriptor
    }
}
