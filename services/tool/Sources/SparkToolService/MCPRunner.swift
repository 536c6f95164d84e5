import Foundation
import Logging
import MCP
import NIOHTTP1
import SparkExpr
import SparkKit
import SparkWorkflow

/// Talks to a Model Context Protocol server through the MCP Swift SDK's client: over stdio with
/// a program run in the sandbox (``CodeSandbox/session(_:limits:_:)``), or over streamable HTTP
/// through the guarded HTTP client (so that the outbound guard checks the server's address, and
/// every connection goes to the address it checked). Each call is one conversation: initialize,
/// then `tools/list` or `tools/call`.
struct MCPRunner: Sendable {
    let sandbox: CodeSandbox
    let http: GuardedHTTPClient

    /// One of the server's tools.
    struct Function: Sendable {
        var name: String
        var description: String
        var inputSchema: ExprValue
    }

    struct Failure: Error, Sendable {
        var reason: String
        var message: String
        var logs: String = ""
    }

    /// The server's tools, those of `spec.tools` only when it names some.
    func list(_ spec: ToolDefinition.MCP, timeout: Duration, maxBytes: Int, secret: @escaping ToolRunner.SecretOpener) async throws(Failure) -> [Function] {
        let tools = try await self.converse(spec, timeout: timeout, maxBytes: maxBytes, secret: secret) { client in
            var found: [MCP.Tool] = []
            var cursor: String?
            repeat {
                let page = try await client.listTools(cursor: cursor)
                found += page.tools
                cursor = page.nextCursor
            } while cursor != nil && found.count < 1000
            return found
        }
        return tools
            .filter { spec.tools.isEmpty || spec.tools.contains($0.name) }
            .map { Function(name: $0.name, description: $0.description ?? "", inputSchema: Self.value($0.inputSchema) ?? .map(["type": "object"])) }
    }

    /// Calls one of the server's tools: `{content, text}` (its content blocks, and their text
    /// joined), or a failure `tool_error` when the server says the call failed.
    func call(_ spec: ToolDefinition.MCP, tool: String, arguments: ExprValue, timeout: Duration, maxBytes: Int, secret: @escaping ToolRunner.SecretOpener) async throws(Failure) -> ExprValue {
        guard spec.tools.isEmpty || spec.tools.contains(tool) else {
            throw Failure(reason: "unknown_tool", message: "the server's tool \(tool.debugDescription) is not among this tool's mcp.tools")
        }
        let mcpArguments: [String: Value]?
        do {
            mcpArguments = try JSONDecoder().decode([String: Value].self, from: Data(arguments.jsonText.utf8))
        } catch {
            throw Failure(reason: "invalid_request", message: "arguments must be a JSON object")
        }
        let (content, isError) = try await self.converse(spec, timeout: timeout, maxBytes: maxBytes, secret: secret) { client in
            try await client.callTool(name: tool, arguments: mcpArguments)
        }
        let blocks = content.compactMap { block -> ExprValue? in
            guard let data = try? JSONEncoder().encode(block) else { return nil }
            return try? ExprValue(jsonText: String(decoding: data, as: UTF8.self))
        }
        let text = content.compactMap { block -> String? in if case .text(let text, _, _) = block { text } else { nil } }.joined(separator: "\n")
        if isError == true {
            throw Failure(reason: "tool_error", message: text.isEmpty ? "the server's tool \(tool) failed" : String(text.prefix(2000)))
        }
        return .map(["content": .list(blocks), "text": .string(text)])
    }

    static func value(_ value: Value) -> ExprValue? {
        guard let data = try? JSONEncoder().encode(value) else { return nil }
        return try? ExprValue(jsonText: String(decoding: data, as: UTF8.self))
    }

    /// Connects, runs `body` with an initialized client, and disconnects.
    private func converse<T: Sendable>(
        _ spec: ToolDefinition.MCP, timeout: Duration, maxBytes: Int, secret: @escaping ToolRunner.SecretOpener,
        _ body: @escaping @Sendable (Client) async throws -> T
    ) async throws(Failure) -> T {
        let run: @Sendable (any Transport) async throws -> T = { transport in
            let client = Client(name: "sparkops", version: "1.0")
            do {
                try await client.connect(transport: transport)
                let value = try await body(client)
                await client.disconnect()
                return value
            } catch {
                await client.disconnect()
                throw error
            }
        }
        switch spec.server {
        case .code(_, let limits), .command(_, let limits):
            let sandboxLimits = CodeSandbox.Limits(
                memoryMB: limits.memoryMB, cpuSeconds: limits.cpuSeconds, processes: limits.processes, fileMB: limits.fileMB,
                timeout: timeout, maxStdout: maxBytes
            )
            do {
                return try await self.sandbox.session(spec.server, limits: sandboxLimits) { channel in
                    try await run(LineTransport(channel: channel))
                }
            } catch {
                throw Failure(reason: error.reason, message: error.message, logs: error.logs)
            }
        case .url(let url):
            var headers: [(String, String)] = []
            if let auth = spec.auth {
                do {
                    headers.append(try await ToolRunner.header(for: auth, host: URLComponents(string: url)?.host ?? "", secret: secret))
                } catch {
                    throw Failure(reason: error.reason, message: error.message)
                }
            }
            let transport = StreamableHTTPTransport(http: self.http, url: url, headers: headers, allow: spec.allow, maxBytes: maxBytes, deadline: .now + timeout)
            do {
                return try await withThrowingTaskGroup(of: T?.self) { group in
                    group.addTask { try await run(transport) }
                    group.addTask {
                        try await Task.sleep(for: timeout)
                        return nil
                    }
                    defer { group.cancelAll() }
                    guard let first = try await group.next(), let value = first else {
                        throw Failure(reason: "timeout", message: "the server did not answer within \(timeout)")
                    }
                    return value
                }
            } catch let error as Failure {
                throw error
            } catch let error as GuardedHTTPClient.Failure {
                throw Self.failure(error, timeout: timeout)
            } catch {
                if let refusal = await transport.failure { throw Self.failure(refusal, timeout: timeout) }
                throw Failure(reason: "mcp_error", message: "\(error)")
            }
        }
    }

    static func failure(_ error: GuardedHTTPClient.Failure, timeout: Duration) -> Failure {
        switch error {
        case .refused(let refusal): return Failure(reason: "outbound_refused", message: refusal.message)
        case .hostNotAllowed(let host): return Failure(reason: "outbound_refused", message: "\(host) is not among the hosts this tool may reach (mcp.allow)")
        case .tooLarge(let cap): return Failure(reason: "output_limit", message: "the server's answer is larger than \(cap) bytes")
        case .timeout: return Failure(reason: "timeout", message: "the server did not answer within \(timeout)")
        case .tooManyRedirects(let count): return Failure(reason: "mcp_error", message: "more than \(count) redirects")
        case .connection(let text): return Failure(reason: "mcp_error", message: text)
        }
    }
}

/// MCP's stdio transport over a sandboxed program's stdin and stdout: one JSON-RPC message a line.
actor LineTransport: Transport {
    nonisolated let logger = Logger(label: "sparkops.mcp.stdio", factory: { _ in SwiftLogNoOpLogHandler() })
    let channel: CodeSandbox.LineChannel
    let messages: AsyncThrowingStream<Data, any Error>
    let continuation: AsyncThrowingStream<Data, any Error>.Continuation
    var pump: Task<Void, Never>?

    init(channel: CodeSandbox.LineChannel) {
        self.channel = channel
        (self.messages, self.continuation) = AsyncThrowingStream<Data, any Error>.makeStream()
    }

    func connect() async throws {
        let lines = self.channel.lines
        let continuation = self.continuation
        // The stream ends only when the client disconnects: the SDK's client reads it again
        // whenever it ends, so an early end would spin. A server that exits is an error.
        self.pump = Task {
            do {
                for try await line in lines where !line.isEmpty {
                    continuation.yield(Data(line))
                }
                continuation.finish(throwing: MCPRunner.Failure(reason: "mcp_error", message: "the server exited"))
            } catch {
                continuation.finish(throwing: error)
            }
        }
    }

    func disconnect() async {
        self.pump?.cancel()
        self.continuation.finish()
    }

    func send(_ data: Data) async throws {
        try await self.channel.send(Array(data))
    }

    func receive() -> AsyncThrowingStream<Data, any Error> { self.messages }
}

/// MCP's streamable HTTP transport over the guarded HTTP client: each message is a POST, answered
/// by JSON or by a stream of server-sent events; the server's `Mcp-Session-Id` goes with every
/// later request.
actor StreamableHTTPTransport: Transport {
    nonisolated let logger = Logger(label: "sparkops.mcp.http", factory: { _ in SwiftLogNoOpLogHandler() })
    let http: GuardedHTTPClient
    let url: String
    let headers: [(String, String)]
    let allow: [String]
    let maxBytes: Int
    let deadline: ContinuousClock.Instant
    let messages: AsyncThrowingStream<Data, any Error>
    let continuation: AsyncThrowingStream<Data, any Error>.Continuation
    var session: String?
    /// Why the last request failed, as the guarded client said.
    var failure: GuardedHTTPClient.Failure?

    init(http: GuardedHTTPClient, url: String, headers: [(String, String)], allow: [String], maxBytes: Int, deadline: ContinuousClock.Instant) {
        self.http = http
        self.url = url
        self.headers = headers
        self.allow = allow
        self.maxBytes = maxBytes
        self.deadline = deadline
        (self.messages, self.continuation) = AsyncThrowingStream<Data, any Error>.makeStream()
    }

    func connect() async throws {}

    func disconnect() async {
        self.continuation.finish()
    }

    func send(_ data: Data) async throws {
        var headers = self.headers + [("Content-Type", "application/json"), ("Accept", "application/json, text/event-stream")]
        if let session = self.session { headers.append(("Mcp-Session-Id", session)) }
        let remaining = ContinuousClock.now.duration(to: self.deadline)
        let response: GuardedHTTPClient.Response
        do {
            response = try await self.http.send(
                .init(method: .POST, url: self.url, headers: headers, body: Array(data)),
                hosts: self.allow, redirects: 0, maxBytes: self.maxBytes, timeout: max(remaining, .milliseconds(1))
            )
        } catch {
            self.failure = error
            self.continuation.finish(throwing: error)
            throw error
        }
        if let session = response.headers.first(where: { $0.0.lowercased() == "mcp-session-id" })?.1 { self.session = session }
        guard (200 ..< 300).contains(response.status) else {
            let error = MCPRunner.Failure(reason: "mcp_error", message: "the server answered HTTP \(response.status): \(String(decoding: response.body.prefix(300), as: UTF8.self))")
            self.continuation.finish(throwing: error)
            throw error
        }
        // 202 to a notification or a response: nothing to read.
        guard !response.body.isEmpty else { return }
        let contentType = response.headers.first { $0.0.lowercased() == "content-type" }?.1.lowercased() ?? ""
        if contentType.contains("text/event-stream") {
            for event in Self.events(response.body) { self.continuation.yield(Data(event.utf8)) }
        } else {
            self.continuation.yield(Data(response.body))
        }
    }

    func receive() -> AsyncThrowingStream<Data, any Error> { self.messages }

    /// The `data` of each server-sent event (several `data:` lines join with new lines).
    static func events(_ body: [UInt8]) -> [String] {
        var events: [String] = []
        var data: [String] = []
        for rawLine in String(decoding: body, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false) {
            let line = rawLine.hasSuffix("\r") ? rawLine.dropLast() : rawLine
            if line.isEmpty {
                if !data.isEmpty { events.append(data.joined(separator: "\n")) }
                data = []
            } else if line.hasPrefix("data:") {
                data.append(String(line.dropFirst(5).drop(while: { $0 == " " })))
            }
        }
        if !data.isEmpty { events.append(data.joined(separator: "\n")) }
        return events
    }
}
