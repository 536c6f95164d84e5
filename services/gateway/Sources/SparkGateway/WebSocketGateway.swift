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
import SparkWire
import SwiftProtobuf
import Synchronization

/// `/api/v1/ws`: live events over WebSocket.
///
/// A browser first gets a ticket (`POST /api/v1/ws/tickets`, authenticated: single use, valid 30 s)
/// and connects to `/api/v1/ws?ticket=…`; other clients may instead send
/// `{"type":"auth","token":"<access token or API key>"}` as their first message, within
/// `gateway.webSocketAuthTimeoutSeconds` (10 s), or the socket is closed.
/// Long-lived credentials never go in the URL. A browser's `Origin` must be one of the CORS
/// origins (see ``originAllowed(_:allowlist:)``); a refused handshake gets an error message and
/// close code 1008. Then `{"type":"subscribe","topic":"runs","projectId":"prj_…"}` subscribes,
/// after the same permission check as the HTTP routes (`run.read`), and the socket receives
/// `{"type":"event","topic":"runs","projectId":…,"event":{sequence, runId, kind, stepId, …}}`
/// for each event of the project's runs (`runId` narrows it to one run) as it commits. A client that
/// reconnects sends `afterSequence` with the last sequence number it saw, and misses nothing:
/// the events come from the run service's store, in order. The `approvals` topic carries the
/// events that ask for a human's decision.
final class WebSocketGateway: Sendable {
    /// How long a ticket may wait for its socket.
    static let ticketLifetime: Duration = .seconds(30)

    private let tickets: any TicketStore
    private let sockets: OpenWebSockets
    let authenticator: Authenticator
    let runs: Sparkops_Run_V1_RunService.SparkWireClient?
    let config: GatewayConfig
    let logger: Logger

    init(authenticator: Authenticator, tickets: any TicketStore, runs: SparkWireChannel?, sockets: OpenWebSockets, config: GatewayConfig, logger: Logger) {
        self.authenticator = authenticator
        self.tickets = tickets
        self.sockets = sockets
        self.runs = runs.map { .init(wrapping: $0) }
        self.config = config
        self.logger = logger
    }

    /// Topics a socket may subscribe to, and the permission each needs.
    static let topics: [String: String] = ["runs": "run.read", "approvals": "run.read"]

    func issueTicket(_ request: Request, context: GatewayRequestContext) async throws -> Response {
        guard let bearer = RouteDispatcher.bearer(request) else {
            throw APIError(.unauthenticated, "this route needs Authorization: Bearer <access token or API key>", headers: [.wwwAuthenticate: "Bearer"])
        }
        let identity = try await self.authenticator.identity(bearer: bearer, requestMetadata: [:])
        try await Self.checkEmptyBody(request)
        let ticket = SparkSecrets.token(prefix: "wst_")
        let expires = Date().addingTimeInterval(Double(Self.ticketLifetime.components.seconds))
        do {
            try await self.tickets.put(ticket, identity: identity, ttl: Self.ticketLifetime)
        } catch {
            self.logger.error("could not store a WebSocket ticket", metadata: ["request_id": "\(context.requestID)", "error": "\(error)"])
            throw APIError(.unavailable, "tickets cannot be issued now; retry, or authenticate with the socket's first message")
        }
        let body = #"{"ticket":"\#(ticket)","expireTime":"\#(ISO8601DateFormatter().string(from: expires))"}"#
        return Response(status: .created, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: body)))
    }


    /// The ticket route takes no fields: a body, when there is one, is `{}`; anything else is
    /// refused like an unknown field on any other route.
    static func checkEmptyBody(_ request: Request) async throws {
        let body: ByteBuffer
        do {
            body = try await request.body.collect(upTo: 4096)
        } catch {
            throw APIError.bodyTooLarge(limit: 4096)
        }
        guard body.readableBytes > 0 else { return }
        guard let object = try? JSONSerialization.jsonObject(with: Data(body.readableBytesView)) as? [String: Any] else {
            throw APIError(.invalidArgument, "the body must be a JSON object (this route takes no fields)", field: "body")
        }
        if let name = object.keys.sorted().first {
            throw APIError(.invalidArgument, "unknown field \(name.debugDescription)", field: name)
        }
    }

    /// Why a handshake may not open a socket, if it may not. A refused socket is upgraded only to
    /// carry the error (code, `field`, message) and is closed with 1008 before reading anything:
    /// an HTTP refusal of an upgrade reaches browsers without its body.
    func refusal(of request: Request) -> APIError? {
        let origins = request.headers[values: .origin]
        if origins.count > 1 {
            return APIError(.invalidArgument, "a handshake carries at most one Origin", field: "Origin")
        }
        if let origin = origins.first, !Self.originAllowed(origin, allowlist: self.config.corsOrigins) {
            return APIError(.permissionDenied, "origin \(origin.debugDescription) may not open a WebSocket here", field: "Origin")
        }
        if request.uri.queryParameters["token"] != nil || request.uri.queryParameters["access_token"] != nil {
            return APIError(.invalidArgument, "credentials do not go in the URL; use a ticket or an auth message", field: "token")
        }
        return nil
    }

    /// Whether a socket has authenticated or timed out, whichever came first; shared with the
    /// watchdog that closes sockets that do not authenticate in time.
    private final class AuthenticationState: Sendable {
        private static let pending = 0, authenticated = 1, timedOut = 2
        private let value = Atomic<Int>(AuthenticationState.pending)

        /// True when the socket authenticated before the watchdog fired.
        func markAuthenticated() -> Bool {
            self.value.compareExchange(expected: Self.pending, desired: Self.authenticated, ordering: .acquiringAndReleasing).exchanged
        }

        /// True when the watchdog fired before the socket authenticated.
        func markTimedOut() -> Bool {
            self.value.compareExchange(expected: Self.pending, desired: Self.timedOut, ordering: .acquiringAndReleasing).exchanged
        }
    }

    /// Whether a handshake's `Origin` may open a socket. Browsers send `http`/`https` origins (or
    /// `null`), and a web page cannot forge them: those must be in the CORS allowlist, which is what
    /// stops cross-site WebSocket hijacking. Non-browser clients send none, or a `ws`/`wss` origin
    /// naming the server they dial; no page can produce one, so they pass.
    static func originAllowed(_ origin: String, allowlist: Set<String>) -> Bool {
        if allowlist.contains(origin) { return true }
        let scheme = origin.prefix { $0 != ":" }.lowercased()
        return (scheme == "ws" || scheme == "wss") && origin.dropFirst(scheme.count).hasPrefix("://")
    }

    func run(inbound: WebSocketInboundStream, outbound: WebSocketOutboundWriter, request: Request) async throws {
        if let refusal = self.refusal(of: request) {
            var message: [String: Any] = ["type": "error", "code": APIError.codeName(refusal.code), "message": refusal.message]
            message["field"] = refusal.field
            try await self.send(outbound, message)
            try await outbound.close(.policyViolation, reason: "handshake refused")
            return
        }
        guard let (socketID, closing) = self.sockets.open() else {
            try await self.send(outbound, ["type": "error", "code": "UNAVAILABLE", "message": "the server is shutting down; connect again"])
            try await outbound.close(.goingAway, reason: "server shutting down")
            return
        }
        defer { self.sockets.remove(socketID) }
        let state = AuthenticationState()
        let session = SocketSession()
        if let ticket = request.uri.queryParameters["ticket"] {
            let redeemed: SocketIdentity?
            do {
                redeemed = try await self.tickets.take(String(ticket))
            } catch {
                self.logger.error("could not check a WebSocket ticket", metadata: ["error": "\(error)"])
                try await self.send(outbound, ["type": "error", "code": "UNAVAILABLE", "message": "tickets cannot be checked now; retry"])
                try await outbound.close(.unexpectedServerError, reason: "ticket store unavailable")
                return
            }
            // A ticket outlives nothing it was issued under: a session ended since (logout) or a
            // credential revoked since refuses it.
            guard let redeemed, (try? await self.authenticator.stillValid(redeemed)) != false else {
                try await self.send(outbound, ["type": "error", "code": "UNAUTHENTICATED", "message": "the ticket is invalid, used or expired"])
                try await outbound.close(.policyViolation, reason: "unauthenticated")
                return
            }
            session.identity.withLock { $0 = redeemed }
            _ = state.markAuthenticated()
            try await self.send(outbound, ["type": "ready"])
        }
        let authenticated = session.identity.withLock { $0 } != nil
        let drain = self.config.drain
        try await withThrowingTaskGroup(of: SocketPart.self) { group in
            if !authenticated {
                let timeout = self.config.webSocketAuthTimeout
                group.addTask {
                    try await Task.sleep(for: timeout)
                    guard state.markTimedOut() else { return .watchdog }
                    try? await self.send(outbound, ["type": "error", "code": "UNAUTHENTICATED", "message": "no authentication within \(timeout)"])
                    try? await outbound.close(.policyViolation, reason: "authentication timeout")
                    return .watchdog
                }
            }
            group.addTask {
                try await self.serve(inbound: inbound, outbound: outbound, session: session, state: state)
                return .conversation
            }
            // Within the same bound as HTTP requests: a session that ended, a key revoked or a
            // member removed closes the socket.
            let recheck = self.config.webSocketRecheck
            group.addTask {
                while !Task.isCancelled {
                    try await Task.sleep(for: recheck)
                    if let refusal = await self.recheck(session) {
                        try? await self.send(outbound, ["type": "error", "code": refusal.code, "message": refusal.message])
                        try? await outbound.close(.policyViolation, reason: "access ended")
                        return .revoked
                    }
                }
                return .revoked
            }
            // At a shutdown: a going-away close, then the client has the drain time to answer it
            // (its close ends the conversation); past that the conversation is cut.
            group.addTask {
                for await _ in closing { break }
                guard !Task.isCancelled else { return .shutdown }
                try? await outbound.close(.goingAway, reason: "server shutting down")
                try? await Task.sleep(for: drain)
                return .shutdown
            }
            defer { group.cancelAll() }
            while let part = try await group.next() {
                if part != .watchdog { return }
            }
        }
    }

    /// The concurrent parts of one socket; the socket ends when the conversation or the shutdown
    /// part ends (the authentication watchdog ends on its own).
    private enum SocketPart: Sendable {
        case conversation, watchdog, shutdown, revoked
    }

    /// Who a socket is and what it subscribed to, shared by its conversation and its re-checks.
    private final class SocketSession: Sendable {
        let identity = Mutex<SocketIdentity?>(nil)
        /// Each subscription's project and the permission it needed.
        let subscriptions = Mutex<[String: (projectID: String, permission: String)]>([:])
    }

    /// Why the socket may no longer stay open, if so. A check that cannot be made now (the
    /// project service restarting) is left to the next round.
    private func recheck(_ session: SocketSession) async -> (code: String, message: String)? {
        guard let identity = session.identity.withLock({ $0 }) else { return nil }
        if (try? await self.authenticator.stillValid(identity)) == false {
            return ("UNAUTHENTICATED", "the session ended or the credential was revoked")
        }
        let subscriptions = session.subscriptions.withLock { Array(Set($0.values.map { "\($0.projectID) \($0.permission)" })) }
        for entry in subscriptions {
            let parts = entry.split(separator: " ").map(String.init)
            guard let decision = try? await self.authenticator.authorize(identity.principal, projectID: parts[0], permission: parts[1], fresh: true) else { continue }
            if !decision.allowed {
                return (decision.role == .unspecified ? "NOT_FOUND" : "PERMISSION_DENIED", "access to project \(parts[0]) ended (\(parts[1]))")
            }
        }
        return nil
    }

    /// The message loop: first-message authentication when needed, then subscriptions.
    private func serve(
        inbound: WebSocketInboundStream,
        outbound: WebSocketOutboundWriter,
        session: SocketSession,
        state: AuthenticationState
    ) async throws {
        var principal = session.identity.withLock { $0?.principal }
        var subscriptions: [String: Task<Void, Never>] = [:]
        defer { for task in subscriptions.values { task.cancel() } }
        for try await message in inbound.messages(maxSize: 64 * 1024) {
            guard case .text(let text) = message,
                let object = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any],
                let type = object["type"] as? String
            else {
                try await self.send(outbound, ["type": "error", "code": "INVALID_ARGUMENT", "message": "messages are JSON objects with a type"])
                continue
            }
            guard let current = principal else {
                guard type == "auth", let token = object["token"] as? String else {
                    try await self.send(outbound, ["type": "error", "code": "UNAUTHENTICATED", "message": "the first message must be {\"type\":\"auth\",\"token\":…}"])
                    try await outbound.close(.policyViolation, reason: "unauthenticated")
                    return
                }
                do {
                    let identity = try await self.authenticator.identity(bearer: token, requestMetadata: [:])
                    session.identity.withLock { $0 = identity }
                    principal = identity.principal
                } catch {
                    try await self.send(outbound, ["type": "error", "code": "UNAUTHENTICATED", "message": "the token is invalid"])
                    try await outbound.close(.policyViolation, reason: "unauthenticated")
                    return
                }
                guard state.markAuthenticated() else { return }
                try await self.send(outbound, ["type": "ready"])
                continue
            }
            switch type {
            case "ping":
                try await self.send(outbound, ["type": "pong"])
            case "subscribe":
                guard let topic = object["topic"] as? String, let permission = Self.topics[topic] else {
                    try await self.send(outbound, ["type": "error", "code": "INVALID_ARGUMENT", "field": "topic", "message": "topic must be one of \(Self.topics.keys.sorted().joined(separator: ", "))"])
                    continue
                }
                guard let projectID = object["projectId"] as? String, SparkID.isValid(projectID, prefix: "prj") else {
                    try await self.send(outbound, ["type": "error", "code": "INVALID_ARGUMENT", "field": "projectId", "message": "projectId must be a prj_… id"])
                    continue
                }
                let decision = try await self.authenticator.authorize(current, projectID: projectID, permission: permission)
                guard decision.allowed else {
                    let code = decision.role == .unspecified ? "NOT_FOUND" : "PERMISSION_DENIED"
                    try await self.send(outbound, ["type": "error", "code": code, "message": code == "NOT_FOUND" ? "project not found" : "\(permission) needs a higher role"])
                    continue
                }
                let runID = object["runId"] as? String ?? ""
                guard runID.isEmpty || SparkID.isValid(runID, prefix: "run") else {
                    try await self.send(outbound, ["type": "error", "code": "INVALID_ARGUMENT", "field": "runId", "message": "runId must be a run_… id"])
                    continue
                }
                // Without afterSequence: from now (the project's newest sequence); 0: from the
                // first event; n: after event n, as a client resuming says.
                var after: Int64
                if object["afterSequence"] == nil {
                    guard let runs = self.runs else { continue }
                    do {
                        after = try await runs.listRunEvents(.with {
                            $0.projectID = projectID
                            $0.runID = runID
                            $0.afterSequence = Int64.max
                            $0.pageSize = 1
                        }, metadata: current.metadata).lastSequence
                    } catch {
                        try await self.send(outbound, ["type": "error", "code": "UNAVAILABLE", "message": "the run service cannot be asked now; subscribe again"])
                        continue
                    }
                } else if let given = Self.sequence(object["afterSequence"]), given >= 0 {
                    after = given
                } else {
                    try await self.send(outbound, ["type": "error", "code": "INVALID_ARGUMENT", "field": "afterSequence", "message": "afterSequence must be an integer, 0 or more (0: from the first event; left out: from now)"])
                    continue
                }
                let key = "\(topic)/\(projectID)/\(runID)"
                subscriptions.removeValue(forKey: key)?.cancel()
                session.subscriptions.withLock { $0[key] = (projectID, permission) }
                try await self.send(outbound, ["type": "subscribed", "topic": topic, "projectId": projectID, "afterSequence": "\(after)"])
                subscriptions[key] = self.stream(topic: topic, projectID: projectID, runID: runID, after: after, principal: current, to: outbound)
            case "unsubscribe":
                if let topic = object["topic"] as? String, let projectID = object["projectId"] as? String {
                    let runID = object["runId"] as? String ?? ""
                    subscriptions.removeValue(forKey: "\(topic)/\(projectID)/\(runID)")?.cancel()
                    _ = session.subscriptions.withLock { $0.removeValue(forKey: "\(topic)/\(projectID)/\(runID)") }
                }
                try await self.send(outbound, ["type": "unsubscribed"])
            default:
                try await self.send(outbound, ["type": "error", "code": "INVALID_ARGUMENT", "field": "type", "message": "unknown message type \(type.debugDescription)"])
            }
        }
    }

    /// An integer sequence number as a client may write it: a JSON integer, or a string of one
    /// (as the events carry theirs); nil for anything else (a fraction, a boolean, text).
    static func sequence(_ value: Any?) -> Int64? {
        switch value {
        case let text as String:
            return Int64(text)
        case let number as NSNumber:
            let type = String(cString: number.objCType)
            guard type != "c" && type != "B", number.doubleValue.rounded() == number.doubleValue else { return nil }
            return number.int64Value
        default:
            return nil
        }
    }

    /// Forwards the run service's events of a subscription to the socket until it is cancelled.
    /// A stream that breaks (the run service restarting) is opened again after the last event sent.
    private func stream(
        topic: String, projectID: String, runID: String, after: Int64, principal: Sparkops_Common_V1_Principal, to outbound: WebSocketOutboundWriter
    ) -> Task<Void, Never> {
        Task {
            guard let runs = self.runs else { return }
            let last = Atomic<Int64>(after)
            while !Task.isCancelled {
                do {
                    try await runs.watchEvents(.with {
                        $0.projectID = projectID
                        $0.runID = runID
                        $0.afterSequence = last.load(ordering: .relaxed)
                    }, metadata: principal.metadata) { response in
                        for try await event in response.messages {
                            last.store(max(last.load(ordering: .relaxed), event.sequence), ordering: .relaxed)
                            if topic == "approvals", !event.kind.hasSuffix("awaiting_approval") { continue }
                            let json = try event.jsonString(options: RouteDispatcher.encodingOptions)
                            let body = try JSONSerialization.jsonObject(with: Data(json.utf8))
                            try await self.send(outbound, ["type": "event", "topic": topic, "projectId": projectID, "event": body])
                        }
                    }
                } catch {
                    guard !Task.isCancelled else { return }
                    self.logger.debug("a WebSocket's event stream broke; it resumes", metadata: ["error": "\(error)"])
                }
                try? await Task.sleep(for: .seconds(1))
            }
        }
    }

    private func send(_ outbound: WebSocketOutboundWriter, _ object: [String: Any]) async throws {
        let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
        try await outbound.write(.text(String(decoding: data, as: UTF8.self)))
    }
}
