import Foundation
import GRPCCore
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import SparkKit
import SparkProto
import SparkWire
import SwiftProtobuf

/// Serves one generated route: authenticates, checks the route's permission for the project in the
/// path, builds the request message from the JSON body, the path and the query, calls the owning
/// service over SparkWire, and answers with the response as JSON.
///
/// JSON follows protobuf's canonical mapping (lowerCamelCase names out, either spelling in).
/// **Unknown fields are rejected** with 400 naming the field, so that a typo is not silently ignored.
struct RouteDispatcher: Sendable {
    let route: SparkHTTPRoute
    let client: SparkWireChannel
    let authenticator: Authenticator
    let limiter: any RateLimiter
    let auditor: GatewayAuditor
    let config: GatewayConfig
    let logger: Logger

    static let decodingOptions: JSONDecodingOptions = {
        var options = JSONDecodingOptions()
        options.ignoreUnknownFields = false
        return options
    }()

    static let encodingOptions: JSONEncodingOptions = {
        var options = JSONEncodingOptions()
        options.alwaysPrintInt64sAsNumbers = false
        return options
    }()

    func handle(_ request: Request, context: GatewayRequestContext) async throws -> Response {
        var caller = Caller()
        do {
            return try await self.dispatch(request, context: context, caller: &caller)
        } catch let error as RPCError {
            if error.code == .internalError || error.code == .unknown {
                self.logger.error("call failed", metadata: ["request_id": "\(context.requestID)", "rpc": "\(self.route.descriptor)", "error": "\(error)"])
            }
            let apiError = APIError(error, requestID: context.requestID)
            await self.auditDenial(apiError, caller: caller, context: context)
            throw apiError
        } catch let error as APIError {
            await self.auditDenial(error, caller: caller, context: context)
            throw error
        }
    }

    /// What the gateway learnt of the caller before a call failed, for the audit of denials.
    struct Caller {
        var principal: Sparkops_Common_V1_Principal?
        /// The caller is not a member of the path's project (answered 404).
        var notMember = false
    }

    /// Refusals of who is calling are audited: bad credentials (401), permission denials (403) and
    /// the 404 a non-member gets for a project it cannot see.
    private func auditDenial(_ error: APIError, caller: Caller, context: GatewayRequestContext) async {
        guard error.code == .unauthenticated || error.code == .permissionDenied || (error.code == .notFound && caller.notMember) else { return }
        await self.auditor.denied(
            actor: caller.principal?.id ?? "anonymous",
            route: "\(self.route.verb.rawValue) \(self.route.path)",
            projectID: context.parameters.get("project_id").flatMap { SparkID.isValid($0, prefix: "prj") ? $0 : nil } ?? "",
            status: "\(error.status.code) \(APIError.codeName(error.code))",
            message: error.message,
            ip: context.clientIP
        )
    }

    private func dispatch(_ request: Request, context: GatewayRequestContext, caller: inout Caller) async throws -> Response {
        var metadata: Metadata = [
            "x-request-id": "\(context.requestID)",
            "sparkops-client-ip": "\(context.clientIP)",
        ]
        if let traceparent = request.headers[.traceparent] {
            metadata.addString(traceparent, forKey: "traceparent")
        }
        if let agent = request.headers[.userAgent] {
            metadata.addString(String(agent.prefix(200)), forKey: "sparkops-user-agent")
        }
        // The per-IP limit, when the middleware left it here: applied before anything else, on
        // its own or (below) in one step with the next limit.
        var ipLimit: [RateLimitCheck] = context.ipLimitDeferred ? [RateLimitCheck(key: "ip:\(context.clientIP)", limit: self.config.ipLimit)] : []
        func applyIPLimit() async throws {
            guard !ipLimit.isEmpty else { return }
            defer { ipLimit = [] }
            if let wait = try await self.limiter.check(ipLimit) { throw Self.tooManyRequests(wait) }
        }

        // A body over the route's own limit is refused before anything is read or checked.
        if self.route.hasBody, let length = request.headers[.contentLength].flatMap(Int.init), length > self.bodyLimit {
            try await applyIPLimit()
            throw APIError.bodyTooLarge(limit: self.bodyLimit)
        }

        // Who is calling, and may they? Nothing about the route's input is looked at before the
        // caller is known: an anonymous request learns only that it needs a credential.
        var credential: String?
        if self.route.isPublic {
            try await applyIPLimit()
            if let wait = try await self.limiter.check(key: "auth:\(context.clientIP)", limit: self.config.authLimit) {
                await self.auditor.rateLimited(route: self.route.descriptor.method, ip: context.clientIP)
                throw Self.tooManyRequests(wait)
            }
        } else {
            guard let bearer = Self.bearer(request) else {
                try await applyIPLimit()
                throw APIError(.unauthenticated, "this route needs Authorization: Bearer <access token or API key>", headers: [.wwwAuthenticate: "Bearer"])
            }
            credential = bearer
            // A credential this gateway knows costs no call: its principal's limit and the IP's are
            // one step. Otherwise the IP's limit comes before the call that checks the credential.
            let principal: Sparkops_Common_V1_Principal
            if let known = self.authenticator.cachedPrincipal(bearer: bearer) {
                principal = known
            } else {
                try await applyIPLimit()
                principal = try await self.authenticator.authenticate(bearer: bearer, requestMetadata: metadata)
            }
            caller.principal = principal
            if let wait = try await self.limiter.check(ipLimit + [RateLimitCheck(key: "principal:\(principal.id)", limit: self.config.principalLimit)]) {
                throw Self.tooManyRequests(wait)
            }
            if self.route.adminOnly && !(principal.kind == .user && principal.isAdmin) {
                throw APIError(.permissionDenied, "only administrators may do this")
            }
            // Ids in the path must have their resource's shape before any service looks them up.
            for (segment, jsonName) in self.route.pathFields {
                if let prefix = Self.idPrefixes[segment], let value = context.parameters.get(segment), !SparkID.isValid(value, prefix: prefix) {
                    throw APIError(.invalidArgument, "\(jsonName): is not a \(prefix)_… id", field: jsonName)
                }
            }
            if !self.route.permission.isEmpty, let projectID = context.parameters.get("project_id") {
                let decision = try await self.authenticator.authorize(principal, projectID: projectID, permission: self.route.permission)
                if decision.role == .unspecified {
                    // Not a member: the project might as well not exist.
                    caller.notMember = true
                    throw APIError(.notFound, "project not found")
                }
                guard decision.allowed else {
                    throw APIError(.permissionDenied, "\(self.route.permission) needs a higher role than \(decision.role.name)")
                }
            }
            metadata.add(contentsOf: principal.metadata)
        }

        let message = try await self.requestMessage(request, context: context)
        var options = CallOptions.defaults
        options.timeout = max(self.config.callTimeout, .seconds(self.route.callTimeoutSeconds))
        let response = try await self.route.call(self.client, message, metadata, options)
        self.afterSuccess(credential: credential)
        var bytes: [UInt8] = try response.jsonUTF8Bytes(options: Self.encodingOptions)
        if let shape = self.route.responseShape {
            // Free-form JSON goes out as the JSON it is, not as its Json message.
            bytes = try SparkJSON.unwrap(bytes, shape: shape)
        }
        return Response(
            status: .init(code: self.route.successStatus),
            headers: [.contentType: "application/json"],
            body: .init(byteBuffer: ByteBuffer(bytes: bytes))
        )
    }

    /// The route's body limit: its own (`max_body_bytes` in the proto), else the gateway's.
    var bodyLimit: Int {
        self.route.maxBodyBytes > 0 ? min(self.route.maxBodyBytes, self.config.maxBodyBytes) : self.config.maxBodyBytes
    }

    /// Revocations through this gateway take effect here at once.
    private func afterSuccess(credential: String?) {
        switch self.route.descriptor.method {
        case "Logout":
            if let credential { self.authenticator.forget(credential: credential) }
        case "RevokeApiKey", "ChangePassword", "RemoveMember", "AddMember", "DeleteProject":
            self.authenticator.forgetAll()
        default:
            break
        }
    }

    // MARK: Building the request

    func requestMessage(_ request: Request, context: GatewayRequestContext) async throws -> any SwiftProtobuf.Message {
        var object: [String: Any] = [:]
        if self.route.hasBody {
            let body: ByteBuffer
            do {
                body = try await request.body.collect(upTo: self.bodyLimit)
            } catch let error as HTTPError where error.status == .contentTooLarge {
                throw APIError.bodyTooLarge(limit: self.bodyLimit)
            } catch is NIOTooManyBytesError {
                // A body without a Content-Length (chunked) that runs past the limit.
                throw APIError.bodyTooLarge(limit: self.bodyLimit)
            }
            guard body.readableBytes > 0 else {
                throw APIError(.invalidArgument, "this route needs a JSON body", field: "body")
            }
            guard Self.isJSON(request.headers[.contentType]) else {
                throw APIError(
                    .invalidArgument,
                    "the body must be application/json, not \((request.headers[.contentType] ?? "unlabelled").debugDescription)",
                    field: "Content-Type",
                    status: .unsupportedMediaType
                )
            }
            // Free-form JSON fields take any JSON value, passed on as its text exactly as sent
            // (numbers included): wrapped into their Json messages before anything reads them.
            var bodyBytes = Array(body.readableBytesView)
            if let shape = self.route.requestShape {
                guard let wrapped = try? SparkJSON.wrap(bodyBytes, shape: shape) else {
                    throw APIError(.invalidArgument, "the body is not valid JSON", field: "body")
                }
                bodyBytes = wrapped
            }
            guard let parsed = try? JSONSerialization.jsonObject(with: Data(bodyBytes), options: [.fragmentsAllowed]) else {
                throw APIError(.invalidArgument, "the body is not valid JSON", field: "body")
            }
            guard let dictionary = parsed as? [String: Any] else {
                throw APIError(.invalidArgument, "the body must be a JSON object", field: "body")
            }
            // A key written twice means one thing to one parser and another to the next.
            if let duplicate = JSONDuplicateKeys.first(in: Array(body.readableBytesView)) {
                throw APIError(.invalidArgument, "\(duplicate): is written twice in the body", field: duplicate)
            }
            object = dictionary
            if self.route.verb == .patch {
                Self.fillUpdateMask(&object, pathFields: self.route.pathFields)
            }
        } else {
            for (name, value) in request.uri.queryParameters {
                let key = String(name)
                guard let field = self.route.queryFields[key] ?? self.route.queryFields.values.first(where: { $0.jsonName == key }) else {
                    throw APIError(.invalidArgument, "unknown query parameter \(key.debugDescription)", field: key)
                }
                switch field.kind {
                case .integer:
                    guard let number = Int64(value) else { throw APIError(.invalidArgument, "\(field.jsonName): must be an integer", field: field.jsonName) }
                    object[field.jsonName] = number
                case .boolean:
                    guard value == "true" || value == "false" else { throw APIError(.invalidArgument, "\(field.jsonName): must be true or false", field: field.jsonName) }
                    object[field.jsonName] = value == "true"
                case .string, .enumeration:
                    object[field.jsonName] = String(value)
                }
            }
        }
        // Path segments fill their fields, whatever the body said.
        for (segment, jsonName) in self.route.pathFields {
            guard let value = context.parameters.get(segment) else { continue }
            object.removeValue(forKey: segment)
            object[jsonName] = value
        }
        let bytes = self.route.hasBody ? Array(try JSONSerialization.data(withJSONObject: object)) : FlatJSON.encode(object)
        do {
            return try self.route.decodeRequest(bytes, Self.decodingOptions)
        } catch {
            throw self.describeDecodingFailure(object: object, error: error)
        }
    }

    /// `application/json`, with or without parameters such as `charset=utf-8`.
    static func isJSON(_ contentType: String?) -> Bool {
        guard let contentType else { return false }
        // The media type is what comes before the first `;`; an empty value, a lone `;` or blanks
        // name none (`split` would give no part at all for them).
        let media = contentType.prefix { $0 != ";" }.trimmingCharacters(in: .whitespaces).lowercased()
        return media == "application/json"
    }

    /// AIP-134 over HTTP: a PATCH body that does not list `updateMask` changes exactly the fields it
    /// names (a PATCH request always has `update_mask`; protoc-gen-sparkops refuses one without).
    /// Path fields are not changes; `{}` names none and changes nothing.
    static func fillUpdateMask(_ object: inout [String: Any], pathFields: [String: String]) {
        guard object["updateMask"] == nil, object["update_mask"] == nil else { return }
        let path = Set(pathFields.keys).union(pathFields.values)
        object["updateMask"] = object.keys.filter { !path.contains($0) }.map(UpdateMask.protoName).sorted()
    }

    /// Finds the field at fault by decoding each top-level field alone.
    private func describeDecodingFailure(object: [String: Any], error: any Error) -> APIError {
        for key in object.keys.sorted() {
            guard let single = try? JSONSerialization.data(withJSONObject: [key: object[key]!]) else { continue }
            do {
                _ = try self.route.decodeRequest(Array(single), Self.decodingOptions)
            } catch let fieldError {
                if case JSONDecodingError.unknownField(let name) = fieldError {
                    return APIError(.invalidArgument, "unknown field \(name.debugDescription)", field: name)
                }
                let jsonName = UpdateMask.jsonName(key)
                return APIError(.invalidArgument, "\(jsonName): has the wrong type or an invalid value", field: jsonName)
            }
        }
        return APIError(.invalidArgument, "the body does not match the request: \(error)", field: "body")
    }

    /// The prefix of the ids path segments carry.
    static let idPrefixes = ["project_id": "prj", "user_id": "usr", "api_key_id": "key", "run_id": "run", "workflow_id": "wf", "agent_id": "agt", "tool_id": "tool"]

    static func bearer(_ request: Request) -> String? {
        request.headers[.authorization].flatMap(BearerCredential.parse)
    }

    static func tooManyRequests(_ wait: Duration) -> APIError {
        let seconds = max(1, Int((Double(wait.components.seconds) + Double(wait.components.attoseconds) / 1e18).rounded(.up)))
        return APIError(.resourceExhausted, "too many requests; retry after \(seconds) s", headers: [.retryAfter: "\(seconds)"])
    }
}

extension HTTPField.Name {
    static let traceparent = Self("traceparent")!
    static let requestID = Self("x-request-id")!
    static let forwardedFor = Self("x-forwarded-for")!
}

/// The request JSON of a route without a body: an object of string, integer and boolean values
/// from the path and the query, written directly (several times cheaper than JSONSerialization).
package enum FlatJSON {
    package static func encode(_ object: [String: Any]) -> [UInt8] {
        var out: [UInt8] = [UInt8(ascii: "{")]
        for (index, (key, value)) in object.enumerated() {
            if index > 0 { out.append(UInt8(ascii: ",")) }
            JSONString.append(key, to: &out)
            out.append(UInt8(ascii: ":"))
            switch value {
            case let text as String: JSONString.append(text, to: &out)
            case let number as Int64: out.append(contentsOf: String(number).utf8)
            case let flag as Bool: out.append(contentsOf: (flag ? "true" : "false").utf8)
            default: JSONString.append("\(value)", to: &out)
            }
        }
        out.append(UInt8(ascii: "}"))
        return out
    }
}

/// The credential of an `Authorization: Bearer <credential>` header.
package enum BearerCredential {
    /// The credential, with the scheme in any case and blanks around the credential ignored; nil
    /// for another scheme or an empty credential.
    package static func parse(_ header: String) -> String? {
        let utf8 = header.utf8
        guard let space = utf8.firstIndex(of: UInt8(ascii: " ")) else { return nil }
        let scheme = utf8[..<space]
        guard scheme.count == 6, zip(scheme, "bearer".utf8).allSatisfy({ $0 | 0x20 == $1 }) else { return nil }
        let isBlank = { (byte: UInt8) in byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t") }
        var token = utf8[utf8.index(after: space)...]
        while let first = token.first, isBlank(first) { token = token.dropFirst() }
        while let last = token.last, isBlank(last) { token = token.dropLast() }
        return token.isEmpty ? nil : String(Substring(token))
    }
}
