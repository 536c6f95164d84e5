import Foundation
import NIOHTTP1
import SparkKit
import SparkProto
import SparkTesting
import SQLKit
import SwiftProtobuf
import Testing

/// What every response and every body goes through: security headers, methods, media types,
/// partial updates, authentication before validation, and cheap refusals.
@Suite("HTTP hygiene")
struct HTTPHygieneTests {
    @Test("security headers on every response; no-store everywhere; HSTS when configured")
    func securityHeaders() async throws {
        try await TestCluster.run(backend: .sqlite, overrides: ["gateway.hstsMaxAgeSeconds": "31536000"]) { cluster in
            let login = try await cluster.http.send(.POST, "/api/v1/auth/login", json: ["email": TestCluster.adminEmail, "password": TestCluster.adminPassword])
            let token = login.json["accessToken"] as! String
            let replies = [
                login,
                try await cluster.http.send(.GET, "/api/v1/projects", token: token),
                try await cluster.http.send(.GET, "/api/v1/projects"),
                try await cluster.http.send(.GET, "/api/v1/nothing"),
                try await cluster.http.send(.POST, "/api/v1/ws/tickets", token: token),
                try await cluster.http.send(.GET, "/api/v1/openapi.json"),
            ]
            for reply in replies {
                let label = "\(reply.status) \(reply.text.prefix(60))"
                #expect(reply.headers.first(name: "X-Content-Type-Options") == "nosniff", "\(label)")
                #expect(reply.headers.first(name: "Referrer-Policy") == "no-referrer", "\(label)")
                #expect(reply.headers.first(name: "Content-Security-Policy") == "frame-ancestors 'none'", "\(label)")
                #expect(reply.headers.first(name: "Cache-Control") == "no-store", "\(label)")
                #expect(reply.headers.first(name: "Strict-Transport-Security") == "max-age=31536000; includeSubDomains", "\(label)")
            }
        }
        try await TestCluster.run(backend: .sqlite) { cluster in
            let reply = try await cluster.http.send(.GET, "/api/v1/openapi.json")
            #expect(reply.headers.first(name: "Strict-Transport-Security") == nil)
        }
    }

    @Test("a request with both Content-Length and chunked encoding gets 400 at once; a silent connection is closed")
    func ambiguousFraming() async throws {
        try await TestCluster.run(backend: .sqlite, overrides: ["gateway.idleTimeoutSeconds": "2"]) { cluster in
            let token = try await cluster.adminToken()
            let body = #"{"name":"x"}"#
            let started = ContinuousClock.now
            let reply = try await RawHTTP.exchange(
                port: cluster.gatewayPort,
                bytes: Array(([
                    "POST /api/v1/projects HTTP/1.1", "Host: x", "Authorization: Bearer \(token)", "Content-Type: application/json",
                    "Content-Length: \(body.utf8.count)", "Transfer-Encoding: chunked", "", "\(String(body.utf8.count, radix: 16))", body, "0", "", "",
                ].joined(separator: "\r\n")).utf8),
                within: .seconds(10)
            )
            #expect(reply?.status == 400, "\(String(describing: reply))")
            #expect(ContinuousClock.now - started < .seconds(5))
            // Nothing created by it.
            let projects = try await cluster.http.send(.GET, "/api/v1/projects", token: token)
            #expect((projects.json["projects"] as? [[String: Any]] ?? []).isEmpty, "\(projects.text)")

            // A connection that sends nothing, or half a request head, is closed after the idle
            // timeout (2 s here), not kept for ever.
            for bytes in [[UInt8](), Array("GET /api/v1/projects HTTP/1.1\r\nHost: x\r\n".utf8)] {
                let opened = ContinuousClock.now
                let answer = try await RawHTTP.exchange(port: cluster.gatewayPort, bytes: bytes, within: .seconds(20))
                #expect(answer == nil)
                let lived = ContinuousClock.now - opened
                #expect(lived >= .seconds(1) && lived < .seconds(15), "the connection lived \(lived)")
            }
        }
    }

    @Test("a known path with another method is 405 with Allow; HEAD answers on GET routes")
    func methods() async throws {
        try await TestCluster.run(backend: .sqlite) { cluster in
            let token = try await cluster.adminToken()
            let project = try await cluster.createProject("methods", token: token)
            let trace = try await RawHTTP.exchange(port: cluster.gatewayPort, head: ["TRACE /api/v1/projects HTTP/1.1", "Host: x"])
            #expect(trace.status == 405)
            #expect(trace.header("Allow") == "GET, HEAD, POST")
            let put = try await cluster.http.send(.PUT, "/api/v1/projects/\(project)", token: token, json: [:])
            #expect(put.status == 405)
            #expect(put.headers.first(name: "Allow") == "GET, HEAD, PATCH, DELETE")
            #expect(put.errorCode == "UNIMPLEMENTED")
            // A literal segment is its own route: /documents/search takes POST only, though
            // /documents/{document_id} takes PUT.
            let shadowed = try await cluster.http.send(.PUT, "/api/v1/projects/\(project)/documents/search", token: token, json: ["text": "t"])
            #expect(shadowed.status == 405)
            #expect(shadowed.headers.first(name: "Allow") == "POST")
            #expect(try await cluster.http.send(.PUT, "/api/v1/projects/\(project)/documents/other", token: token, json: ["text": "t"]).status == 200)
            // An unknown path stays 404.
            #expect(try await cluster.http.send(.PUT, "/api/v1/nothing", token: token).status == 404)

            let head = try await cluster.http.send(.HEAD, "/api/v1/projects/\(project)", token: token)
            #expect(head.status == 200)
            #expect(head.text.isEmpty)
            #expect(head.headers.first(name: "Content-Type") == "application/json")
            #expect(try await cluster.http.send(.HEAD, "/api/v1/projects/\(project)").status == 401)
        }
    }

    @Test("bodies: 415 unless application/json, 400 when missing, on every route with a body")
    func mediaTypes() async throws {
        try await TestCluster.run(backend: .sqlite) { cluster in
            let token = try await cluster.adminToken()
            let project = try await cluster.createProject("media", token: token)
            let body = #"{"name": "x"}"#
            for contentType in ["text/plain", "application/x-www-form-urlencoded", "application/jsonp"] {
                let reply = try await RawHTTP.exchange(
                    port: cluster.gatewayPort,
                    head: ["POST /api/v1/projects HTTP/1.1", "Host: x", "Authorization: Bearer \(token)", "Content-Type: \(contentType)"],
                    body: body
                )
                #expect(reply.status == 415, "\(contentType): \(reply.body)")
                #expect(reply.body.contains(#""field":"Content-Type""#), "\(reply.body)")
            }
            let unlabelled = try await RawHTTP.exchange(port: cluster.gatewayPort, head: ["POST /api/v1/projects HTTP/1.1", "Host: x", "Authorization: Bearer \(token)"], body: body)
            #expect(unlabelled.status == 415)
            let charset = try await RawHTTP.exchange(
                port: cluster.gatewayPort,
                head: ["POST /api/v1/projects HTTP/1.1", "Host: x", "Authorization: Bearer \(token)", "Content-Type: application/json; charset=utf-8"],
                body: #"{"name": "with-charset"}"#
            )
            #expect(charset.status == 201, "\(charset.body)")

            // Every route whose OpenAPI body is required refuses a request without one.
            for route in SparkHTTPRoute.all where route.hasBody {
                var path = route.path.replacingOccurrences(of: "{project_id}", with: project)
                path = path.replacingOccurrences(of: "{user_id}", with: SparkID.make("usr"))
                path = path.replacingOccurrences(of: "{workflow_id}", with: SparkID.make("wf"))
                path = path.replacingOccurrences(of: "{run_id}", with: SparkID.make("run"))
                path = path.replacingOccurrences(of: "{approval_id}", with: SparkID.make("apr"))
                path = path.replacingOccurrences(of: "{step_id}", with: "a")
                let reply = try await cluster.http.send(HTTPMethod(rawValue: route.verb.rawValue), path, token: route.isPublic ? nil : token)
                #expect(reply.status == 400, "\(route.verb.rawValue) \(route.path): \(reply.status) \(reply.text)")
                #expect(reply.errorField == "body", "\(route.path)")
            }
            let logout = try await cluster.http.send(.POST, "/api/v1/auth/logout", token: token)
            #expect(logout.status == 400)
        }
    }

    @Test("PATCH changes only the fields the body names or the mask lists, on every PATCH route", arguments: TestBackend.all)
    func partialUpdates(backend: TestBackend) async throws {
        // Every PATCH route's request has update_mask (protoc-gen-sparkops refuses one without).
        let patches = SparkHTTPRoute.all.filter { $0.verb == .patch }
        #expect(!patches.isEmpty)
        for route in patches {
            #expect(throws: Never.self, "\(route.path)") { _ = try route.decodeRequest(Array(#"{"updateMask": ["x"]}"#.utf8), .init()) }
        }
        try await TestCluster.run(backend: backend) { cluster in
            let token = try await cluster.adminToken()
            let created = try await cluster.http.send(.POST, "/api/v1/projects", token: token, json: ["name": "patched", "description": "keep me"])
            let id = created.json["id"] as! String
            let path = "/api/v1/projects/\(id)"

            let renamed = try await cluster.http.send(.PATCH, path, token: token, json: ["name": "renamed"])
            #expect(renamed.status == 200)
            #expect(renamed.json["name"] as? String == "renamed")
            #expect(renamed.json["description"] as? String == "keep me")

            let nothing = try await cluster.http.send(.PATCH, path, token: token, json: [:])
            #expect(nothing.status == 200)
            #expect(nothing.json["name"] as? String == "renamed")
            #expect(nothing.json["description"] as? String == "keep me")

            let noBody = try await cluster.http.send(.PATCH, path, token: token)
            #expect(noBody.status == 400)
            #expect(noBody.errorField == "body")

            // An explicit mask wins: the description given but not listed is left alone.
            let masked = try await cluster.http.send(.PATCH, path, token: token, json: ["updateMask": ["name"], "name": "masked", "description": "ignored"])
            #expect(masked.json["name"] as? String == "masked")
            #expect(masked.json["description"] as? String == "keep me")
            // Clearing is explicit: named and empty.
            let cleared = try await cluster.http.send(.PATCH, path, token: token, json: ["description": ""])
            #expect(cleared.json["description"] == nil)  // proto3 JSON leaves out an empty string
            #expect(cleared.json["name"] as? String == "masked")
            // JSON names in a mask are accepted too.
            let camel = try await cluster.http.send(.PATCH, path, token: token, json: ["updateMask": ["description"], "description": "back"])
            #expect(camel.json["description"] as? String == "back")

            let stored = try await cluster.http.send(.GET, path, token: token)
            #expect(stored.json["name"] as? String == "masked")
            #expect(stored.json["description"] as? String == "back")
            // Nothing changed means nothing audited.
            let events = try await cluster.http.send(.GET, "\(path)/audit-events?action=project.update", token: token)
            #expect((events.json["events"] as! [[String: Any]]).count == 4)
        }
    }

    @Test("the caller is known before any input is checked: no or a bad credential with a malformed id is 401")
    func authenticationFirst() async throws {
        try await TestCluster.run(backend: .sqlite) { cluster in
            let paths: [(HTTPMethod, String)] = [
                (.GET, "/api/v1/projects/not-an-id"), (.DELETE, "/api/v1/projects/not-an-id"),
                (.GET, "/api/v1/projects/prj_x'1/members"), (.DELETE, "/api/v1/projects/x/api-keys/y"),
            ]
            for (method, path) in paths {
                let none = try await cluster.http.send(method, path)
                #expect(none.status == 401, "\(path): \(none.text)")
                let bad = try await cluster.http.send(method, path, token: "spk_not-a-real-key")
                #expect(bad.status == 401, "\(path): \(bad.text)")
                let garbage = try await cluster.http.send(method, path, token: "a.b.c")
                #expect(garbage.status == 401, "\(path): \(garbage.text)")
            }
            let token = try await cluster.adminToken()
            let known = try await cluster.http.send(.GET, "/api/v1/projects/not-an-id", token: token)
            #expect(known.status == 400)
            #expect(known.errorField == "projectId")
        }
    }

    @Test("a large body on a sign-in route is refused by its 16 KiB limit from its headers, before any hashing")
    func cheapRefusals() async throws {
        try await TestCluster.run(backend: .sqlite) { cluster in
            // Under the gateway's 1 MiB default, so that the route's own limit is what refuses them.
            let big = #"{"email": "a@b.c", "password": "\#(String(repeating: "p", count: (1 << 20) - 100))"}"#
            let numbers = #"{"email": [\#(Array(repeating: "1", count: 1 << 18).joined(separator: ","))]}"#
            for body in [big, numbers] {
                let reply = try await cluster.http.send(.POST, "/api/v1/auth/login", body: body)
                #expect(reply.status == 413, "\(reply.text)")
                #expect(reply.errorField == "body")
            }
            // The refusal comes from the headers alone: the megabyte they announce is never sent,
            // and the answer comes all the same.
            let headOnly = try await RawHTTP.exchange(
                port: cluster.gatewayPort,
                head: ["POST /api/v1/auth/login HTTP/1.1", "Host: x", "Content-Type: application/json", "Content-Length: \(big.utf8.count)"]
            )
            #expect(headOnly.status == 413)
            // A chunked body without a length is cut off at the limit too.
            let chunk = String(repeating: "x", count: 20_000)
            let chunked = try await RawHTTP.exchange(
                port: cluster.gatewayPort,
                head: ["POST /api/v1/auth/login HTTP/1.1", "Host: x", "Content-Type: application/json", "Transfer-Encoding: chunked"],
                rawBody: "\(String(chunk.utf8.count, radix: 16))\r\n\(chunk)\r\n0\r\n\r\n"
            )
            #expect(chunked.status == 413)
            #expect(SparkHTTPRoute.all.first { $0.path == "/api/v1/auth/login" }?.maxBodyBytes == 16384)

            // Over-long fields within the limit are refused before bcrypt, naming the field.
            let longPassword = try await cluster.http.send(.POST, "/api/v1/auth/login", json: ["email": TestCluster.adminEmail, "password": String(repeating: "p", count: 100)])
            #expect(longPassword.status == 400)
            #expect(longPassword.errorField == "password")
            let longEmail = try await cluster.http.send(.POST, "/api/v1/auth/login", json: ["email": String(repeating: "e", count: 300) + "@x.io", "password": "whatever-password"])
            #expect(longEmail.status == 400)
            #expect(longEmail.errorField == "email")
            // Neither counted as a failed sign-in.
            let failures = try await cluster.withProjectStore { store in
                try await store.sql { try await $0.raw("SELECT COUNT(*) AS n FROM login_failures").first()?.decode(column: "n", as: Int.self) ?? 0 }
            }
            #expect(failures == 0)
        }
    }

    @Test("the OpenAPI document describes the WebSocket endpoints and their messages, and route body limits")
    func openAPIDocument() throws {
        let document = try #require(try JSONSerialization.jsonObject(with: Data(SparkOpenAPI.json.utf8)) as? [String: Any])
        let paths = try #require(document["paths"] as? [String: [String: Any]])
        let tickets = try #require(paths["/api/v1/ws/tickets"]?["post"] as? [String: Any])
        #expect((tickets["responses"] as? [String: Any])?["201"] != nil)
        let socket = try #require(paths["/api/v1/ws"]?["get"] as? [String: Any])
        #expect((socket["responses"] as? [String: Any])?["101"] != nil)
        #expect(socket["x-sparkops-websocket"] != nil)
        let schemas = try #require((document["components"] as? [String: Any])?["schemas"] as? [String: Any])
        for name in ["sparkops.gateway.WebSocketClientMessage", "sparkops.gateway.WebSocketServerMessage", "sparkops.gateway.WebSocketTicket"] {
            #expect(schemas[name] != nil, "\(name)")
        }
        let clientTypes = ((schemas["sparkops.gateway.WebSocketClientMessage"] as? [String: Any])?["oneOf"] as? [[String: Any]] ?? []).compactMap {
            (($0["properties"] as? [String: Any])?["type"] as? [String: Any])?["const"] as? String
        }
        #expect(Set(clientTypes) == ["auth", "subscribe", "unsubscribe", "ping"])
        let login = try #require(paths["/api/v1/auth/login"]?["post"] as? [String: Any])
        #expect(login["x-sparkops-max-body-bytes"] as? Int == 16384)
    }
}
