import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// A real HTTP/1.1 server on a loopback address, for the http tool's tests and benchmarks. It
/// answers every request with what it received, as JSON (`method`, `path`, `query`, `headers`,
/// `body`), except:
///
/// - `/status/<code>` answers that status (with the same JSON);
/// - `/redirect?to=<url>` answers 302 to the URL;
/// - `/bytes?n=<count>` answers `count` bytes of `x` as text/plain;
/// - `/slow?ms=<milliseconds>` answers after that long;
/// - `/searxng?q=<words>&format=json` answers as a SearXNG instance does, with three results
///   naming the words;
/// - `/html?img=<url>` answers a small HTML page (title "Test page") whose script adds a
///   paragraph, with an image from `img` when given.
///
/// ```swift
/// let server = try await HTTPEchoServer.start()
/// defer { Task { try? await server.stop() } }
/// // http://127.0.0.1:\(server.port)/anything
/// ```
public final class HTTPEchoServer: Sendable {
    public let host: String
    public let port: Int
    let channel: any Channel
    let counter: RequestCounter

    /// How many requests it has received.
    public var requests: Int { self.counter.value.load(ordering: .relaxed) }

    /// How many requests it has received for each URI (path and query).
    public var requestsByURI: [String: Int] { self.counter.byURI.withLock { $0 } }
    public var baseURL: String { "http://\(self.host):\(self.port)" }

    init(host: String, port: Int, channel: any Channel, counter: RequestCounter) {
        self.host = host
        self.port = port
        self.channel = channel
        self.counter = counter
    }

    public static func start(host: String = "127.0.0.1", port: Int = 0) async throws -> HTTPEchoServer {
        let counter = RequestCounter()
        let channel = try await LoopbackHTTP.bind(host: host, port: port) { head, body in
            counter.value.wrappingAdd(1, ordering: .relaxed)
            counter.byURI.withLock { $0[head.uri, default: 0] += 1 }
            return Self.answer(head, body)
        }
        return HTTPEchoServer(host: host, port: channel.localAddress?.port ?? port, channel: channel, counter: counter)
    }

    public func stop() async throws {
        try await self.channel.close()
    }

    final class RequestCounter: Sendable {
        let value = Atomic<Int>(0)
        let byURI = Mutex<[String: Int]>([:])
    }
}

extension HTTPEchoServer {
    static func answer(_ head: HTTPRequestHead, _ body: [UInt8]) -> LoopbackHTTP.Answer {
        let components = URLComponents(string: head.uri)
        let path = components?.path ?? head.uri
        let query = Dictionary((components?.queryItems ?? []).map { ($0.name, $0.value ?? "") }, uniquingKeysWith: { first, _ in first })
        var answer = LoopbackHTTP.Answer()
        if path.hasPrefix("/redirect"), let target = query["to"] {
            answer.status = .found
            answer.headers = [("Location", target)]
        } else if path.hasPrefix("/searxng"), query["format"] == "json" {
            let words = query["q"] ?? ""
            let results: [[String: Any]] = (1 ... 3).map { index in
                ["title": "\(words) \(index)", "url": "https://example.org/\(index)", "content": "About \(words), part \(index)", "engine": "fake", "score": 1.0 / Double(index)]
            }
            answer.body = Array((try? JSONSerialization.data(withJSONObject: ["query": words, "number_of_results": 3, "results": results], options: [.sortedKeys])) ?? Data())
            answer.headers = [("Content-Type", "application/json")]
        } else if path.hasPrefix("/html") {
            let image = query["img"].map { "<img src=\"\($0)\">" } ?? ""
            let page = """
                <!doctype html><html><head><title>Test page</title>
                <style>h1 { color: #c00 }</style>
                <script>document.addEventListener("DOMContentLoaded", () => document.body.insertAdjacentHTML("beforeend", "<p>added by script</p>"))</script>
                </head><body><h1>Hello &amp; welcome</h1><p>Second paragraph</p>\(image)</body></html>
                """
            answer.body = Array(page.utf8)
            answer.headers = [("Content-Type", "text/html; charset=utf-8")]
        } else if path.hasPrefix("/bytes") {
            answer.body = [UInt8](repeating: UInt8(ascii: "x"), count: Int(query["n"] ?? "0") ?? 0)
            answer.headers = [("Content-Type", "text/plain")]
        } else {
            if path.hasPrefix("/status/"), let code = Int(path.dropFirst("/status/".count)) {
                answer.status = HTTPResponseStatus(statusCode: code)
            }
            if path.hasPrefix("/slow"), let milliseconds = Int64(query["ms"] ?? "") {
                answer.delay = .milliseconds(milliseconds)
            }
            let echo: [String: Any] = [
                "method": head.method.rawValue,
                "path": path,
                "query": query,
                "headers": Dictionary(head.headers.map { ($0.name.lowercased(), $0.value) }, uniquingKeysWith: { first, second in "\(first), \(second)" }),
                "body": String(decoding: body, as: UTF8.self),
            ]
            answer.body = Array((try? JSONSerialization.data(withJSONObject: echo, options: [.sortedKeys])) ?? Data())
            answer.headers = [("Content-Type", "application/json")]
        }
        return answer
    }
}
