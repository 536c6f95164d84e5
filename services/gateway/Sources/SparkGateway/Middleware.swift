import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import NIOHTTP1
import SparkKit

/// Assigns the request id (kept from `X-Request-Id` if the client sent a sane one), works out the
/// client's address (from `X-Forwarded-For` only when the peer is a trusted proxy), applies the
/// per-IP rate limit and the body limit, and logs each request as one JSON line.
///
/// A request with an `Authorization` header for a route that a ``RouteDispatcher`` serves leaves
/// the per-IP limit to the dispatcher (`context.ipLimitDeferred`), which applies it before anything
/// else it does, together with the principal's limit when the credential is already known: one
/// Redis round trip for both instead of two.
struct RequestMiddleware: RouterMiddleware {
    typealias Context = GatewayRequestContext
    let config: GatewayConfig
    let limiter: any RateLimiter
    let logger: Logger
    /// The methods of every path the gateway serves, for 405 and `Allow`, and which of them a
    /// dispatcher serves.
    let methods: RouteMethods

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        var context = context
        let started = ContinuousClock.now
        if let given = request.headers[.requestID], given.count <= 64, given.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" }) {
            context.requestID = given
        } else {
            context.requestID = SparkID.make("req")
        }
        context.clientIP = Self.clientIP(request, peer: context.peerAddress, trusted: self.config.trustedProxies)
        var response: Response
        do {
            if let length = request.headers[.contentLength].flatMap(Int.init), length > self.config.maxBodyBytes {
                throw APIError.bodyTooLarge(limit: self.config.maxBodyBytes)
            }
            if request.headers[.authorization] != nil, self.methods.dispatches(method: request.method.rawValue, path: request.uri.path) {
                context.ipLimitDeferred = true
            } else if let wait = try await self.limiter.check(key: "ip:\(context.clientIP)", limit: self.config.ipLimit) {
                throw RouteDispatcher.tooManyRequests(wait)
            }
            response = try await next(request, context)
        } catch let error as APIError {
            response = try error.response(from: request, context: context)
        } catch let error as HTTPError where error.status == .contentTooLarge {
            response = try APIError.bodyTooLarge(limit: self.config.maxBodyBytes).response(from: request, context: context)
        } catch let error as HTTPError where error.status == .notFound {
            // A path the gateway serves, asked with another method: 405 and what it allows.
            if let allowed = self.methods.allowed(for: request.uri.path) {
                response = try APIError(
                    .unimplemented,
                    "\(request.method.rawValue) is not allowed here; allowed: \(allowed)",
                    headers: [.allow: allowed],
                    status: .methodNotAllowed
                ).response(from: request, context: context)
            } else {
                response = try APIError(.notFound, "no route \(request.uri.path.debugDescription)").response(from: request, context: context)
            }
        } catch let error as HTTPError {
            let code: GRPCCodeFromHTTP = .init(error.status)
            response = try APIError(code.code, error.body ?? error.status.reasonPhrase).response(from: request, context: context)
            response.status = error.status
        } catch let error as HTTPParserError {
            // The body's framing broke while it was read (a bad chunk, a Transfer-Encoding that is
            // not chunked): the client's error. The connection is closed after the answer.
            response = try APIError(.invalidArgument, "the request is not valid HTTP/1.1: \(error)", field: "body").response(from: request, context: context)
            response.headers[.connection] = "close"
        } catch {
            self.logger.error("request failed", metadata: ["request_id": "\(context.requestID)", "error": "\(error)"])
            response = try APIError(.internalError, "internal error (request id \(context.requestID))").response(from: request, context: context)
        }
        response.headers[.requestID] = context.requestID
        self.secure(&response.headers)
        let elapsed = ContinuousClock.now - started
        self.logger.debug("request", metadata: [
            "request_id": "\(context.requestID)",
            "method": "\(request.method.rawValue)",
            "path": "\(request.uri.path)",
            "status": "\(response.status.code)",
            "ip": "\(context.clientIP)",
            "micros": "\(elapsed.components.seconds * 1_000_000 + elapsed.components.attoseconds / 1_000_000_000_000)",
        ])
        return response
    }

    /// Headers every response carries: no MIME sniffing, no referrer, no framing, no caching (API
    /// answers carry tokens, keys, tickets and tenant data), and HSTS when the gateway is served
    /// over HTTPS (`gateway.hstsMaxAgeSeconds`).
    func secure(_ headers: inout HTTPFields) {
        headers[.xContentTypeOptions] = "nosniff"
        headers[.referrerPolicy] = "no-referrer"
        headers[.contentSecurityPolicy] = "frame-ancestors 'none'"
        if headers[.cacheControl] == nil { headers[.cacheControl] = "no-store" }
        if self.config.hstsMaxAge > 0 {
            headers[.strictTransportSecurity] = "max-age=\(self.config.hstsMaxAge); includeSubDomains"
        }
    }

    static func clientIP(_ request: Request, peer: String, trusted: Set<String>) -> String {
        guard trusted.contains(peer), let forwarded = request.headers[.forwardedFor] else { return peer }
        // The right-most address a trusted proxy did not add.
        let hops = forwarded.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        return hops.last(where: { !trusted.contains($0) }) ?? peer
    }
}

/// The methods each path template of the gateway answers, so that a known path asked with another
/// method gets 405 with `Allow` rather than 404. HEAD is allowed wherever GET is. It also knows
/// which of them a ``RouteDispatcher`` serves (the generated routes), for `RequestMiddleware`.
struct RouteMethods: Sendable {
    private struct Template: Sendable {
        var segments: [Substring]
        /// Per segment, whether it is literal (not a `{parameter}`).
        var literal: [Bool]
        var methods: Set<String> = []
        var dispatchedMethods: Set<String> = []
    }

    private var templates: [Template] = []

    /// - Parameter routes: each route's path template and method, and whether a
    ///   ``RouteDispatcher`` serves it.
    init(_ routes: [(path: String, method: String, dispatched: Bool)]) {
        var byPath: [String: Template] = [:]
        for route in routes {
            let segments = route.path.split(separator: "/")
            var template = byPath[route.path] ?? Template(segments: segments, literal: segments.map { !($0.hasPrefix("{") && $0.hasSuffix("}")) })
            let methods: Set<String> = route.method == "GET" ? ["GET", "HEAD"] : [route.method]
            template.methods.formUnion(methods)
            if route.dispatched { template.dispatchedMethods.formUnion(methods) }
            byPath[route.path] = template
        }
        self.templates = Array(byPath.values)
    }

    /// The `Allow` value for `path`, or nil when no template matches it. As in the router, a
    /// literal segment wins over a parameter at the same place (`/documents/search` is the
    /// search route's, not `/documents/{document_id}`'s), so only the most specific templates count.
    func allowed(for path: String) -> String? {
        let methods = self.methods(for: path).all
        let order = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
        return methods.isEmpty ? nil : order.filter(methods.contains).joined(separator: ", ")
    }

    /// Whether the router sends `method` on `path` to a ``RouteDispatcher``.
    func dispatches(method: String, path: String) -> Bool {
        self.methods(for: path).dispatched.contains(method)
    }

    private func methods(for path: String) -> (all: Set<String>, dispatched: Set<String>) {
        let segments = path.split(separator: "/")
        var found: (all: Set<String>, dispatched: Set<String>) = ([], [])
        var best: [Bool] = []
        for template in self.templates where template.segments.count == segments.count {
            let matches = zip(zip(template.segments, segments), template.literal).allSatisfy { pair, isLiteral in
                !isLiteral || pair.0 == pair.1
            }
            guard matches else { continue }
            if found.all.isEmpty || template.literal.lexicographicallyPrecedes(best, by: { $0 && !$1 }) {
                found = (template.methods, template.dispatchedMethods)
                best = template.literal
            } else if template.literal == best {
                found.all.formUnion(template.methods)
                found.dispatched.formUnion(template.dispatchedMethods)
            }
        }
        return found
    }
}

extension HTTPField.Name {
    static let referrerPolicy = Self("Referrer-Policy")!
}

/// Translates an HTTP status Hummingbird raised (404 for an unknown route, say) into a gRPC code.
struct GRPCCodeFromHTTP {
    let code: GRPCCore.RPCError.Code

    init(_ status: HTTPResponse.Status) {
        switch status.code {
        case 400: self.code = .invalidArgument
        case 401: self.code = .unauthenticated
        case 403: self.code = .permissionDenied
        case 404: self.code = .notFound
        case 405: self.code = .unimplemented
        case 409: self.code = .alreadyExists
        case 413: self.code = .invalidArgument
        case 429: self.code = .resourceExhausted
        case 503: self.code = .unavailable
        default: self.code = .unknown
        }
    }
}

/// CORS for the origins in `gateway.corsOrigins` only: preflight requests from them are answered,
/// and their responses carry `Access-Control-Allow-Origin`; other origins get no CORS headers, so
/// browsers refuse them.
struct CORSAllowlistMiddleware: RouterMiddleware {
    typealias Context = GatewayRequestContext
    let origins: Set<String>

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard let origin = request.headers[.origin] else {
            return try await next(request, context)
        }
        let allowed = self.origins.contains(origin)
        if request.method == .options && request.headers[.accessControlRequestMethod] != nil {
            guard allowed else {
                return Response(status: .forbidden)
            }
            return Response(status: .noContent, headers: [
                .accessControlAllowOrigin: origin,
                .accessControlAllowMethods: "GET, POST, PUT, PATCH, DELETE, OPTIONS",
                .accessControlAllowHeaders: "Authorization, Content-Type, X-Request-Id, traceparent",
                .accessControlMaxAge: "600",
                .vary: "Origin",
            ])
        }
        var response = try await next(request, context)
        if allowed {
            response.headers[.accessControlAllowOrigin] = origin
            response.headers[.accessControlExposeHeaders] = "X-Request-Id, Retry-After"
            response.headers[.vary] = "Origin"
        }
        return response
    }
}

import GRPCCore
