import Foundation
public import GRPCCore
public import HTTPTypes
public import Hummingbird
import NIOCore
import SparkKit
import SparkWire

/// An error answered over HTTP with the SparkOps error body:
/// `{"error":{"code":"NOT_FOUND","message":"…","details":[…]}}`, the status following the gRPC code.
public struct APIError: Error, HTTPResponseError, Sendable {
    public var code: RPCError.Code
    public var message: String
    /// The field at fault, by its JSON name (lowerCamelCase, as the body spells it).
    public var field: String?
    public var headers: HTTPFields
    /// An HTTP status that says more than the code's (413, 415, 405); nil follows the code.
    public var statusOverride: HTTPResponse.Status?

    public init(_ code: RPCError.Code, _ message: String, field: String? = nil, headers: HTTPFields = [:], status: HTTPResponse.Status? = nil) {
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers
        self.statusOverride = status
    }

    /// An RPC's error, with internal detail hidden behind the request id. Services name fields by
    /// their proto names (`page_size`); over HTTP the field and the message's `field:` prefix take
    /// the JSON spelling (`pageSize`), so that a client sees one spelling only.
    public init(_ error: RPCError, requestID: String) {
        switch error.code {
        case .internalError, .unknown, .dataLoss:
            self.init(error.code, "internal error (request id \(requestID))")
        case .resourceExhausted where error.metadata[stringValues: StreamChannel.tooLargeKey].first(where: { _ in true }) != nil:
            // The request, once encoded, is over what the service takes: nothing a retry changes.
            let limit = error.metadata[stringValues: StreamChannel.tooLargeKey].first(where: { _ in true }) ?? "?"
            self.init(.invalidArgument, "the request is larger than the service takes (at most \(limit) bytes encoded)", field: "body", status: .contentTooLarge)
        default:
            var message = error.message
            let field = error.metadata[stringValues: SparkError.fieldKey].first(where: { _ in true }).map { protoName -> String in
                let jsonName = UpdateMask.jsonName(protoName)
                if message.hasPrefix(protoName + ":") { message = jsonName + message.dropFirst(protoName.count) }
                return jsonName
            }
            var headers: HTTPFields = [:]
            if let seconds = error.metadata[stringValues: SparkError.retryAfterKey].first(where: { _ in true }), Int(seconds) != nil {
                headers[.retryAfter] = seconds
            }
            self.init(error.code, message, field: field, headers: headers)
        }
    }

    /// A body over the route's limit: 413.
    static func bodyTooLarge(limit: Int) -> APIError {
        APIError(.invalidArgument, "the body is larger than \(limit) bytes", field: "body", status: .contentTooLarge)
    }

    public var status: HTTPResponse.Status {
        self.statusOverride ?? Self.status(for: self.code)
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
        // Every 429 says when to come back.
        if self.code == .resourceExhausted && headers[.retryAfter] == nil {
            headers[.retryAfter] = "1"
        }
        return Response(status: self.status, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }
}
