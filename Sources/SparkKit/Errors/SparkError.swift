public import GRPCCore

/// A domain error with a status: the message is for the caller, safe to show (no SQL, no stack,
/// no secrets); `field` names the request field at fault, when there is one.
///
/// ```swift
/// throw SparkError(.invalidArgument, "name must be 1 to 100 characters", field: "name")
/// ```
public struct SparkError: Error, CustomStringConvertible, RPCErrorConvertible, Sendable {
    public var code: RPCError.Code
    public var message: String
    public var field: String?
    /// For RESOURCE_EXHAUSTED: when the caller may try again, in whole seconds (HTTP `Retry-After`).
    public var retryAfterSeconds: Int?

    /// Metadata keys of the error's parts, read by the gateway.
    public static let fieldKey = "sparkops-error-field"
    public static let retryAfterKey = "sparkops-retry-after"

    public init(_ code: RPCError.Code, _ message: String, field: String? = nil, retryAfterSeconds: Int? = nil) {
        self.code = code
        self.message = message
        self.field = field
        self.retryAfterSeconds = retryAfterSeconds
    }

    public var description: String { self.message }

    // RPCErrorConvertible
    public var rpcErrorCode: RPCError.Code { self.code }
    public var rpcErrorMessage: String { self.message }
    public var rpcErrorMetadata: Metadata {
        var metadata: Metadata = [:]
        if let field = self.field { metadata.addString(field, forKey: Self.fieldKey) }
        if let seconds = self.retryAfterSeconds { metadata.addString("\(seconds)", forKey: Self.retryAfterKey) }
        return metadata
    }

    public static func notFound(_ what: String) -> SparkError {
        SparkError(.notFound, "\(what) not found")
    }

    public static func invalid(_ field: String, _ message: String) -> SparkError {
        SparkError(.invalidArgument, "\(field): \(message)", field: field)
    }
}
