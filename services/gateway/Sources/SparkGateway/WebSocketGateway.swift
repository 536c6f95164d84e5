import NIOWebSocket
import Foundation
import GRPCCore
import HTTPTypes
import Hummingbird
import HummingbirdWebSocket
import Logging
import NIOCore
import SparkKit
import SparkProto
import Synchronization

/// `/api/v1/ws`: live events over WebSocket.
///
/// A browser first gets a ticket (`POST /api/v1/ws/tickets`, authenticated: single use, valid 30 s)
/// and connects to `/api/v1/ws?ticket=…`; other clients may instead send
/// `{"type":"auth","token":"<access token or API key>"}` as their first message, within 10 s.
/// Long-lived credentials never go in the URL. The handshake's `Origin`, when present, must be one
/// of the CORS origins. Then `{"type":"subscribe","topic":"runs","projectId":"prj_…"}` subscribes,
/// after the same permission check as the HTTP routes (`run.read`).
final class WebSocketGateway: Sendable {
    private struct Ticket {
        var principal: Sparkops_Common_V1_Principal
        var expires: Date
    }

    private let tickets = Mutex<[String: Ticket]>([:])
    let authenticator: Authenticator
    let config: GatewayConfig
    let logger: Logger

    init(authenticator: Authenticator, config: GatewayConfig, logger: Logger) {
        self.authenticator = authenticator
        self.config = config
        self.logger = logger
    }

    /// Topics a socket may subscribe to, and the permission each needs.
    static let topics: [String: String] = ["runs": "run.read", "approvals": "run.read"]

    func issueTicket(_ request: Request, context: GatewayRequestContext) async throws -> Response {
        guard let bearer = RouteDispatcher.bearer(request) else {
            throw APIError(.unauthenticated, "this route needs Authorization: Bearer <access token or API key>", headers: [.wwwAuthenticate: "Bearer"])
        }
        let principal = try await self.authenticator.authenticate(bearer: bearer, requestMetadata: [:])
        let ticket = SparkSecrets.token(prefix: "wst_")
        let expires = Date().addingTimeInterval(30)
        self.tickets.withLock { tickets in
            tickets = tickets.filter { $0.value.expires > Date() }
            tickets[ticket] = Ticket(principal: principal, expires: expires)
        }
        let body = #"{"ticket":"\#(ticket)","expireTime":"\#(ISO8601DateFormatter().string(from: expires))"}"#
        return Response(status: .created, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: body)))
    }

    /// Redeems a ticket once.
    func redeem(_ ticket: String) -> Sparkops_Common_V1_Principal? {
        self.tickets.withLock { tickets in
            guard let entry = tickets.removeValue(forKey: ticket), entry.expires > Date() else { return nil }
            return entry.principal
        }
    }

    func shouldUpgrade(_ request: Request, context: GatewayRequestContext) throws -> RouterShouldUpgrade {
        if let origin = request.headers[.origin], !self.config.corsOrigins.contains(origin) {
            throw APIError(.permissionDenied, "origin \(origin.debugDescription) may not open a WebSocket here")
        }
        if request.uri.queryParameters["token"] != nil || request.uri.queryParameters["access_token"] != nil {
            throw APIError(.invalidArgument, "credentials do not go in the URL; use a ticket or an auth message", field: "token")
        }
        return .upgrade([:])
    }

    func run(inbound: WebSocketInboundStream, outbound: WebSocketOutboundWriter, request: Request) async throws {
        var principal = request.uri.queryParameters["ticket"].flatMap { self.redeem(String($0)) }
        if request.uri.queryParameters["ticket"] != nil && principal == nil {
            try await self.send(outbound, ["type": "error", "code": "UNAUTHENTICATED", "message": "the ticket is invalid, used or expired"])
            try await outbound.close(.policyViolation, reason: "unauthenticated")
            return
        }
        if principal != nil {
            try await self.send(outbound, ["type": "ready"])
        }
        let deadline = Date().addingTimeInterval(10)
        var subscriptions: Set<String> = []
        for try await message in inbound.messages(maxSize: 64 * 1024) {
            guard case .text(let text) = message,
                let object = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any],
                let type = object["type"] as? String
            else {
                try await self.send(outbound, ["type": "error", "code": "INVALID_ARGUMENT", "message": "messages are JSON objects with a type"])
                continue
            }
            guard let current = principal else {
                guard type == "auth", let token = object["token"] as? String, Date() < deadline else {
                    try await self.send(outbound, ["type": "error", "code": "UNAUTHENTICATED", "message": "authenticate first, within 10 s"])
                    try await outbound.close(.policyViolation, reason: "unauthenticated")
                    return
                }
                do {
                    principal = try await self.authenticator.authenticate(bearer: token, requestMetadata: [:])
                    try await self.send(outbound, ["type": "ready"])
                } catch {
                    try await self.send(outbound, ["type": "error", "code": "UNAUTHENTICATED", "message": "the token is invalid"])
                    try await outbound.close(.policyViolation, reason: "unauthenticated")
                    return
                }
                continue
            }
            switch type {
            case "ping":
                try await self.send(outbound, ["type": "pong"])
            case "subscribe":
                guard let topic = object["topic"] as? String, let permission = Self.topics[topic] else {
                    try await self.send(outbound, ["type": "error", "code": "INVALID_ARGUMENT", "message": "topic must be one of \(Self.topics.keys.sorted().joined(separator: ", "))"])
                    continue
                }
                guard let projectID = object["projectId"] as? String, SparkID.isValid(projectID, prefix: "prj") else {
                    try await self.send(outbound, ["type": "error", "code": "INVALID_ARGUMENT", "message": "projectId must be a prj_… id"])
                    continue
                }
                let decision = try await self.authenticator.authorize(current, projectID: projectID, permission: permission)
                guard decision.allowed else {
                    let code = decision.role == .unspecified ? "NOT_FOUND" : "PERMISSION_DENIED"
                    try await self.send(outbound, ["type": "error", "code": code, "message": code == "NOT_FOUND" ? "project not found" : "\(permission) needs a higher role"])
                    continue
                }
                subscriptions.insert("\(topic)/\(projectID)")
                try await self.send(outbound, ["type": "subscribed", "topic": topic, "projectId": projectID])
            case "unsubscribe":
                if let topic = object["topic"] as? String, let projectID = object["projectId"] as? String {
                    subscriptions.remove("\(topic)/\(projectID)")
                }
                try await self.send(outbound, ["type": "unsubscribed"])
            default:
                try await self.send(outbound, ["type": "error", "code": "INVALID_ARGUMENT", "message": "unknown message type \(type.debugDescription)"])
            }
        }
    }

    private func send(_ outbound: WebSocketOutboundWriter, _ object: [String: Any]) async throws {
        let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
        try await outbound.write(.text(String(decoding: data, as: UTF8.self)))
    }
}
