import Foundation
import NIOHTTP1
import SparkKit
import SparkTesting
import Testing

/// `/api/v1/ws`: tickets, first-message authentication, the `Origin` check, and subscriptions with
/// the same permission check as the HTTP routes.
@Suite("Gateway WebSocket")
struct WebSocketTests {
    @Test("a ticket opens one socket, once; subscriptions are checked like HTTP routes", arguments: TestBackend.all)
    func ticket(backend: TestBackend) async throws {
        try await TestCluster.run(backend: backend) { cluster in
            let admin = try await cluster.adminToken()
            let project = try await cluster.createProject("live", token: admin)
            let issued = try await cluster.http.send(.POST, "/api/v1/ws/tickets", token: admin)
            #expect(issued.status == 201)
            let ticket = try #require(issued.json["ticket"] as? String)
            #expect(ticket.hasPrefix("wst_"))

            let first = try await Socket.converse(cluster, "/api/v1/ws?ticket=\(ticket)") { socket in
                #expect(try await socket.receive()["type"] as? String == "ready")
                try await socket.send(["type": "ping"])
                #expect(try await socket.receive()["type"] as? String == "pong")

                try await socket.send(["type": "subscribe", "topic": "runs", "projectId": project])
                let subscribed = try await socket.receive()
                #expect(subscribed["type"] as? String == "subscribed")
                #expect(subscribed["projectId"] as? String == project)

                // A well-formed id of a project that does not exist (or is not ours): 404, nothing leaks.
                try await socket.send(["type": "subscribe", "topic": "runs", "projectId": SparkID.make("prj")])
                #expect(try await socket.receive()["code"] as? String == "NOT_FOUND")

                try await socket.send(["type": "subscribe", "topic": "everything", "projectId": project])
                let badTopic = try await socket.receive()
                #expect(badTopic["code"] as? String == "INVALID_ARGUMENT")
                #expect(badTopic["field"] as? String == "topic")

                try await socket.send(["type": "subscribe", "topic": "runs", "projectId": "prj_'; DROP TABLE projects; --"])
                #expect(try await socket.receive()["field"] as? String == "projectId")

                try await socket.sendText("not json")
                #expect(try await socket.receive()["code"] as? String == "INVALID_ARGUMENT")
            }
            #expect(first.serverCloseCode == nil || first.serverCloseCode == 1000)

            // Used already: refused, and the socket is closed with a policy violation.
            let again = try await Socket.converse(cluster, "/api/v1/ws?ticket=\(ticket)") { socket in
                let refused = try await socket.receive()
                #expect(refused["code"] as? String == "UNAUTHENTICATED")
                #expect(try await socket.receive().isEmpty)
            }
            #expect(again.serverCloseCode == 1008)

            let forged = try await Socket.converse(cluster, "/api/v1/ws?ticket=wst_forged") { socket in
                let refused = try await socket.receive()
                #expect(refused["code"] as? String == "UNAUTHENTICATED")
                // Wait for the server's close frame, so that the client's own close cannot race it.
                #expect(try await socket.receive().isEmpty)
            }
            #expect(forged.serverCloseCode == 1008)
        }
    }

    @Test("tickets need a valid credential")
    func ticketNeedsCredential() async throws {
        try await TestCluster.run(backend: .sqlite) { cluster in
            let anonymous = try await cluster.http.send(.POST, "/api/v1/ws/tickets")
            #expect(anonymous.status == 401)
            #expect(anonymous.errorCode == "UNAUTHENTICATED")
            let forged = try await cluster.http.send(.POST, "/api/v1/ws/tickets", token: "not-a-token")
            #expect(forged.status == 401)
            // The route takes no fields: `{}` or no body, nothing else.
            let admin = try await cluster.adminToken()
            #expect(try await cluster.http.send(.POST, "/api/v1/ws/tickets", token: admin, json: [:]).status == 201)
            let unknown = try await cluster.http.send(.POST, "/api/v1/ws/tickets", token: admin, json: ["ttl": 3600])
            #expect(unknown.status == 400)
            #expect(unknown.errorField == "ttl")
            let notObject = try await RawHTTP.exchange(
                port: cluster.gatewayPort,
                head: ["POST /api/v1/ws/tickets HTTP/1.1", "Host: x", "Authorization: Bearer \(admin)", "Content-Type: application/json"],
                body: "[1]"
            )
            #expect(notObject.status == 400)
            #expect(notObject.errorField == "body")
        }
    }

    @Test("an open socket is closed within the re-check bound when its member is removed, its key revoked or its session logged out; a ticket from before a logout opens nothing", arguments: TestBackend.all)
    func accessEnds(backend: TestBackend) async throws {
        try await TestCluster.run(backend: backend, overrides: ["gateway.webSocketRecheckSeconds": "1"]) { cluster in
            let admin = try await cluster.adminToken()
            let project = try await cluster.createProject("revocations", token: admin)
            let memberID = try await cluster.createUser("member@sparkops.test", adminToken: admin)
            let added = try await cluster.http.send(.POST, "/api/v1/projects/\(project)/members", token: admin, json: ["userId": memberID, "role": "ROLE_VIEWER"])
            try #require(added.status == 200 || added.status == 201, "\(added.text)")
            func session() async throws -> (access: String, refresh: String) {
                let login = try await cluster.login(email: "member@sparkops.test", password: "user-password-123")
                return (login["accessToken"] as! String, login["refreshToken"] as! String)
            }
            func ticket(_ token: String) async throws -> String {
                try #require(try await cluster.http.send(.POST, "/api/v1/ws/tickets", token: token).json["ticket"] as? String)
            }
            /// Subscribes, runs `end` (which takes the access away), and expects the socket closed
            /// with 1008 within 10 s.
            func expectClosed(_ path: String, auth: String? = nil, code: String, _ end: () async throws -> Void) async throws {
                var started = ContinuousClock.now
                let outcome = try await Socket.converse(cluster, path) { socket in
                    if let auth { try await socket.send(["type": "auth", "token": auth]) }
                    #expect(try await socket.receive()["type"] as? String == "ready")
                    try await socket.send(["type": "subscribe", "topic": "runs", "projectId": project])
                    #expect(try await socket.receive()["type"] as? String == "subscribed")
                    try await end()
                    started = ContinuousClock.now
                    var message = try await socket.receive()
                    while message["type"] as? String == "event" { message = try await socket.receive() }
                    #expect(message["code"] as? String == code, "\(message)")
                    #expect(try await socket.receive().isEmpty)
                }
                #expect(outcome.serverCloseCode == 1008)
                #expect(ContinuousClock.now - started < .seconds(10))
            }

            // Logout ends the socket of that session, and a ticket issued before it opens nothing.
            let first = try await session()
            let early = try await ticket(first.access)
            try await expectClosed("/api/v1/ws?ticket=\(try await ticket(first.access))", code: "UNAUTHENTICATED") {
                let out = try await cluster.http.send(.POST, "/api/v1/auth/logout", token: first.access, json: ["refreshToken": first.refresh])
                #expect(out.status == 200, "\(out.text)")
            }
            let stale = try await Socket.converse(cluster, "/api/v1/ws?ticket=\(early)") { socket in
                let refusal = try await socket.receive()
                #expect(refusal["code"] as? String == "UNAUTHENTICATED", "\(refusal)")
            }
            #expect(stale.serverCloseCode == 1008)

            // A revoked API key, authenticated by the first message.
            let created = try await cluster.http.send(.POST, "/api/v1/projects/\(project)/api-keys", token: admin, json: ["name": "socket", "role": "ROLE_VIEWER"])
            let key = try #require(created.json["key"] as? String, "\(created.text)")
            let keyID = try #require(created.json["id"] as? String ?? (created.json["apiKey"] as? [String: Any])?["id"] as? String, "\(created.text)")
            try await expectClosed("/api/v1/ws", auth: key, code: "NOT_FOUND") {
                let revoked = try await cluster.http.send(.DELETE, "/api/v1/projects/\(project)/api-keys/\(keyID)", token: admin)
                #expect(revoked.status == 200, "\(revoked.text)")
            }

            // A member removed from the project.
            let second = try await session()
            try await expectClosed("/api/v1/ws?ticket=\(try await ticket(second.access))", code: "NOT_FOUND") {
                let removed = try await cluster.http.send(.DELETE, "/api/v1/projects/\(project)/members/\(memberID)", token: admin)
                #expect(removed.status == 200, "\(removed.text)")
            }
        }
    }

    @Test("the first message may authenticate with an API key; a bad token closes the socket")
    func firstMessageAuthentication() async throws {
        try await TestCluster.run(backend: .sqlite) { cluster in
            let admin = try await cluster.adminToken()
            let project = try await cluster.createProject("keyed", token: admin)
            let other = try await cluster.createProject("elsewhere", token: admin)
            let created = try await cluster.http.send(.POST, "/api/v1/projects/\(project)/api-keys", token: admin, json: ["name": "socket", "role": "ROLE_VIEWER"])
            let key = try #require(created.json["key"] as? String)

            let keyed = try await Socket.converse(cluster, "/api/v1/ws") { socket in
                try await socket.send(["type": "auth", "token": key])
                #expect(try await socket.receive()["type"] as? String == "ready")
                try await socket.send(["type": "subscribe", "topic": "runs", "projectId": project])
                #expect(try await socket.receive()["type"] as? String == "subscribed")
                // The key is scoped to its project: another project of the same owner is not found.
                try await socket.send(["type": "subscribe", "topic": "runs", "projectId": other])
                #expect(try await socket.receive()["code"] as? String == "NOT_FOUND")
            }
            #expect(keyed.serverCloseCode == nil || keyed.serverCloseCode == 1000)

            let bad = try await Socket.converse(cluster, "/api/v1/ws") { socket in
                try await socket.send(["type": "auth", "token": "sk_definitely-not-a-key"])
                #expect(try await socket.receive()["code"] as? String == "UNAUTHENTICATED")
                #expect(try await socket.receive().isEmpty)
            }
            #expect(bad.serverCloseCode == 1008)

            let unauthenticated = try await Socket.converse(cluster, "/api/v1/ws") { socket in
                try await socket.send(["type": "subscribe", "topic": "runs", "projectId": project])
                #expect(try await socket.receive()["code"] as? String == "UNAUTHENTICATED")
                #expect(try await socket.receive().isEmpty)
            }
            #expect(unauthenticated.serverCloseCode == 1008)
        }
    }

    @Test("a socket that never authenticates is closed after the timeout")
    func authenticationTimeout() async throws {
        try await TestCluster.run(backend: .sqlite, overrides: ["gateway.webSocketAuthTimeoutSeconds": "1"]) { cluster in
            let started = ContinuousClock.now
            let silent = try await Socket.converse(cluster, "/api/v1/ws") { socket in
                let closing = try await socket.receive()
                #expect(closing["code"] as? String == "UNAUTHENTICATED")
                // The close frame follows the error; waiting for it keeps the client's own
                // close (1000) from racing the server's (1008).
                #expect(try await socket.receive().isEmpty)
            }
            #expect(silent.serverCloseCode == 1008)
            #expect(ContinuousClock.now - started >= .milliseconds(900))
        }
    }

    @Test("handshakes from foreign origins and with credentials in the URL are refused")
    func handshakeChecks() async throws {
        try await TestCluster.run(backend: .sqlite) { cluster in
            let admin = try await cluster.adminToken()
            let port = cluster.gatewayPort
            func handshake(_ target: String, _ extra: [String]) async throws -> RawHTTP.Reply {
                try await RawHTTP.exchange(
                    port: port,
                    head: ["GET \(target) HTTP/1.1", "Host: 127.0.0.1:\(port)", "Connection: Upgrade", "Upgrade: websocket",
                           "Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="] + extra,
                    untilClose: true)
            }

            // A refused socket carries one error naming the field, then closes with 1008.
            func expectRefused(_ target: String, _ extra: [String], code: String, field: String, mentioning: String? = nil) async throws {
                let reply = try await handshake(target, extra)
                #expect(reply.status == 101)
                #expect(reply.textMessages.count == 1)
                let error = reply.textMessages.first ?? [:]
                #expect(error["type"] as? String == "error")
                #expect(error["code"] as? String == code)
                #expect(error["field"] as? String == field)
                if let mentioning { #expect((error["message"] as? String)?.contains(mentioning) == true) }
                #expect(reply.closeCode == 1008)
            }
            // A page from another site may not open a socket; nor may an ambiguous handshake.
            try await expectRefused("/api/v1/ws", ["Origin: https://evil.example"], code: "PERMISSION_DENIED", field: "Origin", mentioning: "https://evil.example")
            try await expectRefused("/api/v1/ws", ["Origin: null"], code: "PERMISSION_DENIED", field: "Origin")
            try await expectRefused("/api/v1/ws", ["Origin: http://localhost:\(port)", "Origin: https://evil.example"], code: "INVALID_ARGUMENT", field: "Origin")
            // Credentials never travel in URLs, where logs and proxies keep them.
            try await expectRefused("/api/v1/ws?token=\(admin)", [], code: "INVALID_ARGUMENT", field: "token")
            try await expectRefused("/api/v1/ws?access_token=\(admin)", [], code: "INVALID_ARGUMENT", field: "token")

            // The gateway's own origin (the dashboard) and non-browser clients are served: the
            // socket stays open, waiting for authentication, until the client closes it.
            for origin in ["Origin: http://localhost:\(port)", "Origin: ws://127.0.0.1:\(port)"] {
                let served = try await RawHTTP.exchange(
                    port: port,
                    head: ["GET /api/v1/ws HTTP/1.1", "Host: 127.0.0.1:\(port)", "Connection: Upgrade", "Upgrade: websocket",
                           "Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", origin])
                #expect(served.status == 101)
                #expect(served.header("Sec-WebSocket-Accept") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
            }
            let client = try await Socket.converse(cluster, "/api/v1/ws") { socket in
                try await socket.send(["type": "auth", "token": admin])
                #expect(try await socket.receive()["type"] as? String == "ready")
            }
            #expect(client.serverCloseCode == nil || client.serverCloseCode == 1000)
        }
    }
}

/// One WebSocket conversation with the gateway: JSON messages out, JSON messages in.
enum Socket {
    static func converse(
        _ cluster: TestCluster,
        _ path: String,
        _ script: (WebSocketTestClient) async throws -> Void
    ) async throws -> WebSocketTestClient.Outcome {
        try await WebSocketTestClient.converse(port: cluster.gatewayPort, path: path, script)
    }
}
