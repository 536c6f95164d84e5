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

    public init(_ code: RPCError.Code, _ message: String, field: String? = nil) {
        self.code = code
        self.message = message
        self.field = field
    }

    public var description: String { self.message }

    // RPCErrorConvertible
    public var rpcErrorCode: RPCError.Code { self.code }
    public var rpcErrorMessage: String { self.message }
    public var rpcErrorMetadata: Metadata {
        guard let field = self.field else { return [:] }
        return ["sparkops-error-field": "\(field)"]
    }

    public static func notFound(_ what: String) -> SparkError {
        SparkError(.notFound, "\(what) not found")
    }

    public static func invalid(_ field: String, _ message: String) -> SparkError {
        SparkError(.invalidArgument, "\(field): \(message)", field: field)
    }
}
