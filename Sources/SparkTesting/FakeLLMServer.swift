import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// A model provider on a loopback address that speaks both real HTTP APIs the agent service
/// calls: OpenAI chat completions (`POST /v1/chat/completions`) and Anthropic Messages
/// (`POST /v1/messages`). Each request takes the next scripted reply, whichever API asked, and
/// the server keeps every request it received for the test to read.
///
/// ```swift
/// let llm = try await FakeLLMServer.start()
/// llm.enqueue(.toolCalls([.init(name: "lookup", arguments: #"{"q":"x"}"#)]), .text("done"))
/// // a catalog provider with base_url \(llm.baseURL)
/// ```
public final class FakeLLMServer: Sendable {
    public struct ToolCall: Sendable {
        public var name: String
        /// JSON text, or anything else to test malformed arguments.
        public var arguments: String

        public init(name: String, arguments: String) {
            self.name = name
            self.arguments = arguments
        }
    }

    public indirect enum Reply: Sendable {
        case text(String, inputTokens: Int = 100, outputTokens: Int = 20)
        case toolCalls([ToolCall], inputTokens: Int = 100, outputTokens: Int = 20)
        /// An error status, with the provider's error body and an optional `Retry-After`.
        case status(Int, retryAfter: String? = nil, message: String = "scripted error")
        /// The provider's context-length refusal (400).
        case contextLength
        /// A reply sent after a pause.
        case slow(milliseconds: Int, Reply)
    }

    /// A request as it arrived.
    public struct Received: Sendable {
        public var path: String
        public var headers: [String: String]
        public var body: String

        /// The body as JSON.
        public var json: [String: Any] {
            (try? JSONSerialization.jsonObject(with: Data(self.body.utf8))) as? [String: Any] ?? [:]
        }
    }

    struct State {
        var replies: [Reply] = []
        var received: [Received] = []
    }

    public let port: Int
    let channel: any Channel
    let state: Mutex<State>

    /// `http://127.0.0.1:<port>/v1`: a catalog provider's `base_url`, for either API.
    public var baseURL: String { "http://127.0.0.1:\(self.port)/v1" }
    public var requests: [Received] { self.state.withLock { $0.received } }

    init(port: Int, channel: any Channel) {
        self.port = port
        self.channel = channel
        self.state = Mutex(State())
    }

    public static func start() async throws -> FakeLLMServer {
        let box = StateBox()
        let channel = try await LoopbackHTTP.bind { head, body in
            guard let server = box.server.withLock({ $0 }) else { return LoopbackHTTP.Answer(status: .serviceUnavailable) }
            return server.respond(head, body)
        }
        let server = FakeLLMServer(port: channel.localAddress?.port ?? 0, channel: channel)
        box.server.withLock { $0 = server }
        return server
    }

    func respond(_ head: HTTPRequestHead, _ body: [UInt8]) -> LoopbackHTTP.Answer {
        let path = head.uri.split(separator: "?").first.map(String.init) ?? head.uri
        let received = Received(
            path: path,
            headers: Dictionary(head.headers.map { ($0.name.lowercased(), $0.value) }, uniquingKeysWith: { first, _ in first }),
            body: String(decoding: body, as: UTF8.self)
        )
        guard head.method == .POST, path == "/v1/chat/completions" || path == "/v1/messages" else {
            return LoopbackHTTP.Answer(status: .notFound, headers: [("Content-Type", "application/json")], body: Array(#"{"error":{"message":"no such path"}}"#.utf8))
        }
        let reply = self.take(received)
        let (status, headers, payload) = Self.answer(reply, anthropic: path == "/v1/messages", model: received.json["model"] as? String ?? "")
        var delay: TimeAmount?
        if case .slow(let milliseconds, _) = reply { delay = .milliseconds(Int64(milliseconds)) }
        return LoopbackHTTP.Answer(status: HTTPResponseStatus(statusCode: status), headers: headers + [("Content-Type", "application/json")], body: Array(payload), delay: delay)
    }

    /// Adds replies, answered in order.
    public func enqueue(_ replies: Reply...) {
        self.state.withLock { $0.replies += replies }
    }

    public func stop() async throws {
        try await self.channel.close()
    }

    /// The next reply for a request, recording it; a 500 when the script ran out.
    func take(_ received: Received) -> Reply {
        self.state.withLock { state in
            state.received.append(received)
            guard !state.replies.isEmpty else { return .status(500, message: "the fake LLM server has no reply scripted") }
            return state.replies.removeFirst()
        }
    }

    final class StateBox: Sendable {
        let server = Mutex<FakeLLMServer?>(nil)
    }

    // MARK: Bodies

    static func answer(_ reply: Reply, anthropic: Bool, model: String) -> (Int, [(String, String)], Data) {
        func json(_ object: Any) -> Data { (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data() }
        switch reply {
        case .slow(_, let inner):
            return Self.answer(inner, anthropic: anthropic, model: model)
        case .status(let code, let retryAfter, let message):
            let headers = retryAfter.map { [("Retry-After", $0)] } ?? []
            let anthropicError: [String: Any] = ["type": code == 429 ? "rate_limit_error" : "api_error", "message": message]
            let openAIError: [String: Any] = ["message": message, "type": code == 429 ? "rate_limit_exceeded" : "server_error", "code": NSNull()]
            let body: [String: Any] = anthropic ? ["type": "error", "error": anthropicError] : ["error": openAIError]
            return (code, headers, json(body))
        case .contextLength:
            let anthropicError: [String: Any] = ["type": "invalid_request_error", "message": "prompt is too long: 210000 tokens > 200000 maximum"]
            let openAIError: [String: Any] = ["message": "This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens.", "type": "invalid_request_error", "code": "context_length_exceeded"]
            let body: [String: Any] = anthropic ? ["type": "error", "error": anthropicError] : ["error": openAIError]
            return (400, [], json(body))
        case .text(let text, let input, let output):
            if anthropic {
                return (200, [], json([
                    "id": "msg_fake", "type": "message", "role": "assistant", "model": model,
                    "content": [["type": "text", "text": text]], "stop_reason": "end_turn",
                    "usage": ["input_tokens": input, "output_tokens": output],
                ]))
            }
            return (200, [], json([
                "id": "chatcmpl-fake", "object": "chat.completion", "model": model,
                "choices": [["index": 0, "message": ["role": "assistant", "content": text], "finish_reason": "stop"]],
                "usage": ["prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output],
            ]))
        case .toolCalls(let calls, let input, let output):
            if anthropic {
                let blocks: [[String: Any]] = calls.enumerated().map { index, call in
                    let parsed = (try? JSONSerialization.jsonObject(with: Data(call.arguments.utf8), options: [.fragmentsAllowed])) ?? call.arguments
                    return ["type": "tool_use", "id": "toolu_\(index + 1)", "name": call.name, "input": parsed]
                }
                return (200, [], json([
                    "id": "msg_fake", "type": "message", "role": "assistant", "model": model, "content": blocks,
                    "stop_reason": "tool_use", "usage": ["input_tokens": input, "output_tokens": output],
                ]))
            }
            let toolCalls: [[String: Any]] = calls.enumerated().map { index, call in
                ["id": "call_\(index + 1)", "type": "function", "function": ["name": call.name, "arguments": call.arguments]]
            }
            return (200, [], json([
                "id": "chatcmpl-fake", "object": "chat.completion", "model": model,
                "choices": [["index": 0, "message": ["role": "assistant", "content": NSNull(), "tool_calls": toolCalls], "finish_reason": "tool_calls"]],
                "usage": ["prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output],
            ]))
        }
    }
}
