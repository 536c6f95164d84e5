public import GRPCCore
public import SparkWire
public import SwiftProtobuf

/// An RPC the gateway exposes over HTTP/JSON, generated from the method's
/// `(sparkops.api.v1.http)` option (`SparkHTTPRoute.all`, written by `make proto`).
public struct SparkHTTPRoute: Sendable {
    public enum Verb: String, Sendable {
        case get = "GET"
        case post = "POST"
        case put = "PUT"
        case patch = "PATCH"
        case delete = "DELETE"
    }

    /// A request field a query parameter may fill.
    public struct QueryField: Sendable {
        public enum Kind: String, Sendable {
            case string, integer, boolean, enumeration
        }

        /// The field's canonical JSON name (lowerCamelCase).
        public var jsonName: String
        public var kind: Kind

        public init(jsonName: String, kind: Kind) {
            self.jsonName = jsonName
            self.kind = kind
        }
    }

    public typealias Decode = @Sendable ([UInt8], JSONDecodingOptions) throws -> any SwiftProtobuf.Message
    public typealias Call = @Sendable (
        SparkWireChannel,
        any SwiftProtobuf.Message,
        Metadata,
        CallOptions
    ) async throws -> any SwiftProtobuf.Message

    public var verb: Verb
    /// A template such as `/api/v1/projects/{project_id}`.
    public var path: String
    /// Path segment names and the JSON names of the request fields they fill.
    public var pathFields: [String: String]
    /// Query parameter names (proto field names) of routes without a body.
    public var queryFields: [String: QueryField]
    /// Whether the JSON body fills the request (it is then required).
    public var hasBody: Bool
    /// The route's body limit in bytes; 0 means the gateway's default.
    public var maxBodyBytes: Int
    /// The route's call deadline in seconds; 0 means the gateway's default.
    public var callTimeoutSeconds: Int
    /// The project permission the caller needs, or empty.
    public var permission: String
    public var isPublic: Bool
    public var adminOnly: Bool
    public var successStatus: Int
    /// The owning service's short name, such as `project`.
    public var service: String
    public var descriptor: MethodDescriptor
    public var decodeRequest: Decode
    /// Where the request and the response hold free-form JSON, if they do: the gateway takes any
    /// JSON value there and splices the text out again (``SparkJSON``).
    public var requestShape: SparkJSONShape?
    public var responseShape: SparkJSONShape?
    public var call: Call

    public init(
        verb: Verb,
        path: String,
        pathFields: [String: String],
        queryFields: [String: QueryField],
        hasBody: Bool,
        maxBodyBytes: UInt32 = 0,
        callTimeoutSeconds: UInt32 = 0,
        permission: String,
        isPublic: Bool,
        adminOnly: Bool,
        successStatus: Int,
        service: String,
        descriptor: MethodDescriptor,
        decodeRequest: @escaping Decode,
        requestShape: SparkJSONShape? = nil,
        responseShape: SparkJSONShape? = nil,
        call: @escaping Call
    ) {
        self.verb = verb
        self.path = path
        self.pathFields = pathFields
        self.queryFields = queryFields
        self.hasBody = hasBody
        self.maxBodyBytes = Int(maxBodyBytes)
        self.callTimeoutSeconds = Int(callTimeoutSeconds)
        self.permission = permission
        self.isPublic = isPublic
        self.adminOnly = adminOnly
        self.successStatus = successStatus
        self.service = service
        self.descriptor = descriptor
        self.decodeRequest = decodeRequest
        self.requestShape = requestShape
        self.responseShape = responseShape
        self.call = call
    }
}
