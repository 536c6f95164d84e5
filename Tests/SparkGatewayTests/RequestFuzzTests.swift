import Foundation
import NIOHTTP1
import SparkTesting
import Testing

/// A fuzzer over the gateway's request parsing, kept in the suite: requests built at random from
/// every header the gateway reads (with empty, blank, lone-separator, huge, repeated and non-ASCII
/// values) and from bodies that are not what a route expects, sent byte for byte. No request may
/// crash the process or earn a 5xx, and the gateway must still serve the next request.
///
/// The cases are drawn from a seeded generator: `SPARKOPS_FUZZ_SEED` replays a run (every failure
/// prints its seed and case), `SPARKOPS_FUZZ_CASES` sets how many (default 240).
@Suite("Gateway request fuzzing")
struct RequestFuzzTests {
    @Test("random headers and bodies never crash the gateway or earn a 5xx")
    func fuzzHeadersAndBodies() async throws {
        let environment = ProcessInfo.processInfo.environment
        let seed = environment["SPARKOPS_FUZZ_SEED"].flatMap(UInt64.init) ?? 0x5EED_2026
        let cases = environment["SPARKOPS_FUZZ_CASES"].flatMap(Int.init) ?? 240
        try await TestCluster.run(backend: .sqlite, overrides: Self.unlimited) { cluster in
            let token = try await cluster.adminToken()
            let project = try await cluster.createProject("fuzz", token: token)
            var generator = SplitMix64(seed: seed)
            let requests = (0..<cases).map { _ in RequestFuzzer.request(using: &generator, token: token, project: project) }
            // Sixteen at a time: a request that waits for bytes that never come (a Content-Length
            // longer than its body) holds its connection until the bound.
            var answered = 0
            for batch in stride(from: 0, to: cases, by: 16) {
                let replies = try await withThrowingTaskGroup(of: (Int, RawHTTP.Reply?).self) { group in
                    for index in batch..<min(batch + 16, cases) {
                        group.addTask {
                            (index, try await RawHTTP.exchange(port: cluster.gatewayPort, bytes: requests[index], within: .seconds(2)))
                        }
                    }
                    var replies: [(Int, RawHTTP.Reply?)] = []
                    for try await reply in group { replies.append(reply) }
                    return replies.sorted { $0.0 < $1.0 }
                }
                for (index, reply) in replies {
                    guard let reply else { continue }
                    answered += 1
                    #expect(reply.status < 500, "seed \(seed) case \(index): \(reply.status) \(reply.body.prefix(200))\n\(RequestFuzzer.describe(requests[index]))")
                }
                // The gateway still serves: a crash of the process ends the test run here.
                let health = try await cluster.http.send(.GET, "/api/v1/projects/\(project)", token: token)
                #expect(health.status == 200, "after cases \(batch)…: \(health.status)")
            }
            // Most cases are HTTP a parser accepts; only malformed ones may be closed unanswered.
            #expect(answered > cases / 3, "only \(answered) of \(cases) answered")
        }
    }

    @Test("an empty, `;` or blank Content-Type on public and authenticated routes is 415, not a crash")
    func emptyContentTypes() async throws {
        try await TestCluster.run(backend: .sqlite, overrides: Self.unlimited) { cluster in
            let token = try await cluster.adminToken()
            let body = #"{"email":"a@b.c","password":"x"}"#
            for contentType in ["", ";", " ", " ; ", "\t", ";charset=utf-8", ",", "application/json\u{00e9}"] {
                for (path, bearer) in [("/api/v1/auth/login", nil), ("/api/v1/auth/refresh", nil), ("/api/v1/projects", token)] as [(String, String?)] {
                    var head = ["POST \(path) HTTP/1.1", "Host: x", "Content-Type: \(contentType)"]
                    if let bearer { head.append("Authorization: Bearer \(bearer)") }
                    let reply = try await RawHTTP.exchange(port: cluster.gatewayPort, head: head, body: body)
                    #expect(reply.status == 415, "\(path) with \(contentType.debugDescription): \(reply.status) \(reply.body)")
                    #expect(reply.errorField == "Content-Type")
                }
            }
            // Still serving.
            #expect(try await cluster.http.send(.GET, "/api/v1/projects", token: token).status == 200)
        }
    }

    /// The fuzzer sends hundreds of requests from one address: rate limits are not what it tests.
    static let unlimited = [
        "gateway.rateLimit.ipPerMinute": "1000000", "gateway.rateLimit.ipBurst": "100000",
        "gateway.rateLimit.authPerMinute": "1000000", "gateway.rateLimit.authBurst": "100000",
        "gateway.rateLimit.principalPerMinute": "1000000", "gateway.rateLimit.principalBurst": "100000",
    ]
}

/// Builds one request from the pieces the gateway reads.
enum RequestFuzzer {
    static func request(using generator: inout SplitMix64, token: String, project: String) -> [UInt8] {
        let targets: [(method: String, path: String, authenticated: Bool)] = [
            ("POST", "/api/v1/auth/login", false),
            ("POST", "/api/v1/auth/refresh", false),
            ("POST", "/api/v1/projects", true),
            ("GET", "/api/v1/projects", true),
            ("PATCH", "/api/v1/projects/\(project)", true),
            ("POST", "/api/v1/projects/\(project)/runs", true),
            ("POST", "/api/v1/ws/tickets", true),
            ("GET", "/api/v1/ws", false),
            ("OPTIONS", "/api/v1/projects", false),
            ("GET", "/api/v1/projects?pageSize=\(generator.pick(Self.values))", true),
        ]
        let target = generator.pick(targets)
        var lines = ["\(target.method) \(target.path) HTTP/1.1", "Host: \(generator.chance(8) ? generator.pick(Self.values) : "127.0.0.1")"]
        if target.authenticated && !generator.chance(6) {
            lines.append("Authorization: Bearer \(token)")
        }
        // Headers the gateway reads, each absent or present once or more with a value from the list.
        for name in Self.headers where generator.chance(3) {
            let count = generator.chance(6) ? 2 + Int(generator.next() % 3) : 1
            for _ in 0..<count {
                let value = generator.chance(2) ? generator.pick(Self.values) : generator.pick(Self.typicalValues[name] ?? Self.values)
                lines.append("\(name): \(value)")
            }
        }
        var body = generator.pick(Self.bodies)
        if generator.chance(4) {
            body += String(repeating: generator.pick(["[", "{\"a\":", "\u{00e9}", "\\u", "9"]), count: Int(generator.next() % 5000))
        }
        let hasLength = lines.contains { $0.lowercased().hasPrefix("content-length:") }
        let chunked = lines.contains { $0.lowercased().hasPrefix("transfer-encoding:") && $0.lowercased().contains("chunked") }
        if !hasLength && !chunked && !body.isEmpty && !generator.chance(8) {
            lines.append("Content-Length: \(body.utf8.count)")
        }
        var bytes = Array((lines.joined(separator: "\r\n") + "\r\n\r\n").utf8)
        if chunked && !generator.chance(4) {
            bytes += Array("\(String(body.utf8.count, radix: 16))\r\n\(body)\r\n0\r\n\r\n".utf8)
        } else {
            bytes += Array(body.utf8)
        }
        // Now and then bytes that are not UTF-8 at all, in the head or the body.
        if generator.chance(10) {
            let position = Int(generator.next() % UInt64(bytes.count))
            bytes.insert(contentsOf: [0xFF, 0xC3, 0x28, 0x80], at: position)
        }
        return bytes
    }

    static func describe(_ request: [UInt8]) -> String {
        String(decoding: request.prefix(600), as: UTF8.self).debugDescription
    }

    static let headers = [
        "Content-Type", "Content-Length", "Transfer-Encoding", "Authorization", "Origin", "X-Forwarded-For",
        "X-Request-Id", "traceparent", "User-Agent", "Access-Control-Request-Method", "Access-Control-Request-Headers",
        "Connection", "Upgrade", "Sec-WebSocket-Key", "Sec-WebSocket-Version", "Accept", "Expect",
    ]

    static let values = [
        "", " ", "\t", ";", " ; ", ";;", ",", ", ,", "=", "\"", "\u{00e9}\u{2603}", "\u{1F600}", "0", "-1",
        "18446744073709551616", "1e400", "NaN", String(repeating: "a", count: 6000), String(repeating: ";", count: 700),
        "Bearer", "Bearer ", "bearer\t\t", "Basic YTpi", "null", "application/json;", "application/json ; ;",
    ]

    static let typicalValues: [String: [String]] = [
        "Content-Type": ["application/json", "application/json; charset=utf-8", "APPLICATION/JSON", "text/plain", "application/json; charset=\u{00e9}"],
        "Content-Length": ["0", "5", "1048577", "99999999999999999999", " 12", "12, 12"],
        "Transfer-Encoding": ["chunked", "gzip, chunked", "identity", "chunked, chunked"],
        "Authorization": ["Bearer sk_nothing", "Bearer \u{00e9}", "Bearer " + String(repeating: "x", count: 5000)],
        "Origin": ["http://localhost:8000", "null", "ws://127.0.0.1", "wss://", "http://evil.example"],
        "X-Forwarded-For": ["127.0.0.1", "::1", "1.2.3.4, 5.6.7.8", "not-an-ip"],
        "traceparent": ["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "00-xyz", "ff-" + String(repeating: "0", count: 60)],
        "Connection": ["Upgrade", "close", "keep-alive, Upgrade"],
        "Upgrade": ["websocket", "h2c", "WebSocket, foo"],
        "Sec-WebSocket-Version": ["13", "8", "999"],
        "Sec-WebSocket-Key": ["dGhlIHNhbXBsZSBub25jZQ==", "short"],
        "Expect": ["100-continue", "200-ok"],
    ]

    static let bodies = [
        "", "{}", "[]", "null", "1e400", "\"text\"", "{", "}", "{\"email\":\"a@b.c\",\"password\":\"pw-123456\"}",
        "{\"refreshToken\":\"\"}", "{\"name\":\"p\",\"name\":\"q\"}", "{\"name\":\"\u{0000}\"}", "{\"name\":1e400}",
        "{\"name\":-0}", "{\"name\":9007199254740993}", "{\"workflowId\":\"wf_x\",\"input\":{\"n\":[[[[[[1]]]]]]}}",
        "{\"updateMask\":\"\"}", "\u{FEFF}{}", "{\"a\":\"\\ud800\"}",
    ]
}
