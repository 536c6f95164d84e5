import Foundation
public import GRPCCore
public import HTTPTypes
public import Hummingbird
import NIOCore

/// An error answered over HTTP with the SparkOps error body:
/// `{"error":{"code":"NOT_FOUND","message":"…","details":[…]}}`, the status following the gRPC code.
public struct APIError: Error, HTTPResponseError, Sendable {
    public var code: RPCError.Code
    public var message: String
    public var field: String?
    public var headers: HTTPFields

    public init(_ code: RPCError.Code, _ message: String, field: String? = nil, headers: HTTPFields = [:]) {
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers
    }

    /// An RPC's error, with internal detail hidden behind the request id.
    public init(_ error: RPCError, requestID: String) {
        switch error.code {
        case .internalError, .unknown, .dataLoss:
            self.init(error.code, "internal error (request id \(requestID))")
        default:
            let field = error.metadata[stringValues: "sparkops-error-field"].first(where: { _ in true })
            self.init(error.code, error.message, field: field)
        }
    }

    public var status: HTTPResponse.Status {
        Self.status(for: self.code)
    }

    public static func status(for code: RPCError.Code) -> HTTPResponse.Status {
        switch code {
        case .cancelled: return .init(code: 499, reasonPhrase: "Client Closed Request")
        case .invalidArgument, .outOfRange: return .badRequest
        case .deadlineExceeded: return .gatewayTimeout
        case .notFound: return .notFound
        case .alreadyExists, .aborted, .failedPrecondition: return .conflict
        case .permissionDenied: return .forbidden
        case .resourceExhausted: return .tooManyRequests
        case .unimplemented: return .notImplemented
        case .unavailable: return .serviceUnavailable
        case .unauthenticated: return .unauthorized
        default: return .internalServerError
        }
    }

    public static func codeName(_ code: RPCError.Code) -> String {
        switch code {
        case .cancelled: return "CANCELLED"
        case .unknown: return "UNKNOWN"
        case .invalidArgument: return "INVALID_ARGUMENT"
        case .deadlineExceeded: return "DEADLINE_EXCEEDED"
        case .notFound: return "NOT_FOUND"
        case .alreadyExists: return "ALREADY_EXISTS"
        case .permissionDenied: return "PERMISSION_DENIED"
        case .resourceExhausted: return "RESOURCE_EXHAUSTED"
        case .failedPrecondition: return "FAILED_PRECONDITION"
        case .aborted: return "ABORTED"
        case .outOfRange: return "OUT_OF_RANGE"
        case .unimplemented: return "UNIMPLEMENTED"
        case .internalError: return "INTERNAL"
        case .unavailable: return "UNAVAILABLE"
        case .dataLoss: return "DATA_LOSS"
        case .unauthenticated: return "UNAUTHENTICATED"
        default: return "UNKNOWN"
        }
    }

    public var body: [String: Any] {
        var error: [String: Any] = ["code": Self.codeName(self.code), "message": self.message]
        if let field = self.field {
            error["details"] = [["@type": "type.sparkops.dev/FieldViolation", "field": field]]
        }
        return ["error": error]
    }

    public func response(from request: Request, context: some RequestContext) throws -> Response {
        let data = (try? JSONSerialization.data(withJSONObject: self.body, options: [.sortedKeys])) ?? Data("{}".utf8)
        var headers = self.headers
        headers[.contentType] = "application/json"
        return Response(status: self.status, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }
}
