import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// A tiny Model Context Protocol server, for the mcp tool's tests: over stdio as a Python program
/// (``python``, the source of an mcp tool's `mcp.python`), or over streamable HTTP on a loopback
/// address (``start()``). Both offer the same tools:
///
/// - `add {a, b}`: `a + b` as text;
/// - `shout {text}`: the text in capitals;
/// - `fail {}`: a tool error (`isError: true`).
public final class MCPTestServer: Sendable {
    /// The stdio server: JSON-RPC, one message a line.
    public static let python = #"""
        import json, sys

        TOOLS = [
            {"name": "add", "description": "Adds two integers.",
             "inputSchema": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}},
            {"name": "shout", "description": "Says the text louder.",
             "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}},
            {"name": "fail", "description": "Always fails.", "inputSchema": {"type": "object", "properties": {}}},
        ]

        def call(name, args):
            if name == "add":
                return {"content": [{"type": "text", "text": str(args["a"] + args["b"])}]}
            if name == "shout":
                return {"content": [{"type": "text", "text": args["text"].upper()}]}
            return {"content": [{"type": "text", "text": "this tool always fails"}], "isError": True}

        for line in sys.stdin:
            message = json.loads(line)
            if "id" not in message:
                continue
            method = message.get("method")
            if method == "initialize":
                result = {"protocolVersion": message["params"]["protocolVersion"], "capabilities": {"tools": {}},
                          "serverInfo": {"name": "sparkops-test", "version": "1.0"}}
            elif method == "tools/list":
                result = {"tools": TOOLS}
            elif method == "tools/call":
                result = call(message["params"]["name"], message["params"].get("arguments") or {})
            elif method == "ping":
                result = {}
            else:
                print(json.dumps({"jsonrpc": "2.0", "id": message["id"], "error": {"code": -32601, "message": "no method " + str(method)}}), flush=True)
                continue
            print(json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": result}), flush=True)
        """#

    public let port: Int
    let channel: any Channel
    let counter: Counter

    /// `http://127.0.0.1:<port>/mcp`.
    public var url: String { "http://127.0.0.1:\(self.port)/mcp" }
    /// How many HTTP requests it received.
    public var requests: Int { self.counter.value.load(ordering: .relaxed) }

    init(port: Int, channel: any Channel, counter: Counter) {
        self.port = port
        self.channel = channel
        self.counter = counter
    }

    final class Counter: Sendable {
        let value = Atomic<Int>(0)
    }

    public static func start() async throws -> MCPTestServer {
        let counter = Counter()
        let channel = try await LoopbackHTTP.bind { head, body in
            counter.value.wrappingAdd(1, ordering: .relaxed)
            return Self.respond(head, body)
        }
        return MCPTestServer(port: channel.localAddress?.port ?? 0, channel: channel, counter: counter)
    }

    static func respond(_ head: HTTPRequestHead, _ body: [UInt8]) -> LoopbackHTTP.Answer {
        var answer = LoopbackHTTP.Answer(headers: [("Mcp-Session-Id", "session-1")])
        guard head.method == .POST, head.uri == "/mcp", let message = (try? JSONSerialization.jsonObject(with: Data(body))) as? [String: Any] else {
            answer.status = .notFound
            return answer
        }
        guard let reply = Self.answer(message) else {
            answer.status = .accepted
            return answer
        }
        // Answers go as server-sent events, as a streamable HTTP server may send them.
        let json = String(decoding: (try? JSONSerialization.data(withJSONObject: reply)) ?? Data(), as: UTF8.self)
        answer.body = Array("event: message\ndata: \(json)\n\n".utf8)
        answer.headers.append(("Content-Type", "text/event-stream"))
        return answer
    }

    public func stop() async throws {
        try await self.channel.close()
    }

    /// The answer to one JSON-RPC message, nil for a notification.
    static func answer(_ message: [String: Any]) -> [String: Any]? {
        guard let id = message["id"] else { return nil }
        let method = message["method"] as? String ?? ""
        let params = message["params"] as? [String: Any] ?? [:]
        let tools: [[String: Any]] = [
            ["name": "add", "description": "Adds two integers.", "inputSchema": ["type": "object", "properties": ["a": ["type": "integer"], "b": ["type": "integer"]], "required": ["a", "b"]]],
            ["name": "shout", "description": "Says the text louder.", "inputSchema": ["type": "object", "properties": ["text": ["type": "string"]], "required": ["text"]]],
            ["name": "fail", "description": "Always fails.", "inputSchema": ["type": "object", "properties": [String: Any]()]],
        ]
        let result: [String: Any]
        switch method {
        case "initialize":
            result = ["protocolVersion": params["protocolVersion"] ?? "2025-06-18", "capabilities": ["tools": [String: Any]()], "serverInfo": ["name": "sparkops-test", "version": "1.0"]]
        case "tools/list":
            result = ["tools": tools]
        case "tools/call":
            let arguments = params["arguments"] as? [String: Any] ?? [:]
            switch params["name"] as? String {
            case "add": result = ["content": [["type": "text", "text": "\(((arguments["a"] as? Int) ?? 0) + ((arguments["b"] as? Int) ?? 0))"]]]
            case "shout": result = ["content": [["type": "text", "text": ((arguments["text"] as? String) ?? "").uppercased()]]]
            default: result = ["content": [["type": "text", "text": "this tool always fails"]], "isError": true]
            }
        case "ping":
            result = [:]
        default:
            return ["jsonrpc": "2.0", "id": id, "error": ["code": -32601, "message": "no method \(method)"]]
        }
        return ["jsonrpc": "2.0", "id": id, "result": result]
    }
}
