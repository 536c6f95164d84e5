import AsyncHTTPClient
import Foundation
import Logging
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import SparkExpr

/// Calls a provider's chat API over HTTP (async-http-client): OpenAI chat completions or
/// Anthropic Messages, with tool calling. 429, 5xx (and Anthropic's 529) and failed connections
/// are retried with exponential backoff and jitter, waiting what `Retry-After` asks when it asks,
/// never past the step's deadline.
struct LLMClient: Sendable {
    let http: HTTPClient
    let logger: Logger
    /// The longest answer body read.
    static let maxResponseBytes = 16 << 20

    struct Outcome: Sendable {
        var response: ChatResponse
        var attempts: Int
    }

    /// `sent` counts the requests made, answered or not, so that a call that fails after its
    /// retries records how many it took.
    func complete(_ request: ChatRequest, provider: ModelCatalog.Provider, apiKey: String?, deadline: ContinuousClock.Instant, sent: inout Int) async throws(LLMError) -> Outcome {
        let (url, headers, body) = Self.encode(request, provider: provider, apiKey: apiKey)
        var attempt = 0
        while true {
            attempt += 1
            sent += 1
            let remaining = ContinuousClock.now.duration(to: deadline)
            guard remaining > .milliseconds(50) else { throw .deadline("the step's deadline passed before the model answered") }
            let timeout = min(remaining, .seconds(provider.timeoutSeconds))
            let status: Int
            let text: String
            var retryAfter: Duration?
            do {
                var http = HTTPClientRequest(url: url)
                http.method = .POST
                http.headers = headers
                http.body = .bytes(ByteBuffer(string: body))
                let response = try await self.http.execute(http, timeout: .milliseconds(timeout.milliseconds))
                let bytes = try await response.body.collect(upTo: Self.maxResponseBytes)
                status = Int(response.status.code)
                text = String(buffer: bytes)
                retryAfter = response.headers.first(name: "retry-after").flatMap(Self.retryAfter)
            } catch is CancellationError {
                throw .deadline("the step was cancelled")
            } catch {
                if Task.isCancelled { throw .deadline("the step was cancelled") }
                if timeout < .seconds(provider.timeoutSeconds), ContinuousClock.now.advanced(by: .milliseconds(50)) >= deadline {
                    throw .deadline("the step's deadline passed while the model was answering")
                }
                // A connection that failed or timed out: retried like a 503.
                status = 0
                text = "\(error)"
            }
            if (200 ..< 300).contains(status) {
                do {
                    let response = try Self.decode(text, api: provider.api)
                    return Outcome(response: response, attempts: attempt)
                } catch {
                    throw .malformed("\(error)")
                }
            }
            let message = Self.errorMessage(text, status: status)
            if Self.isContextLength(status: status, body: text) { throw .contextLength(message) }
            let retryable = status == 0 || status == 408 || status == 409 || status == 429 || status >= 500
            guard retryable, attempt <= provider.maxRetries else {
                let retried = attempt > 1 ? " (after \(attempt) attempts)" : ""
                throw .failed(status: status, message: message + retried)
            }
            let backoff = Duration.milliseconds(Int64(500 * (1 << min(attempt - 1, 6))))
            let jittered = backoff * Double.random(in: 0.5 ... 1.0)
            let delay = min(retryAfter ?? jittered, .seconds(300))
            guard ContinuousClock.now.advanced(by: delay) < deadline else {
                let wait = retryAfter.map { "the provider asks to wait \($0.milliseconds / 1000) s (Retry-After)" } ?? "the next attempt would start"
                throw .failed(status: status, message: "\(message); \(wait) after the step's deadline")
            }
            self.logger.info("retrying an LLM call", metadata: ["provider": "\(provider.name)", "status": "\(status)", "attempt": "\(attempt)", "delay_ms": "\(delay.milliseconds)"])
            do { try await Task.sleep(for: delay) } catch { throw .deadline("the step was cancelled") }
        }
    }

    /// `Retry-After`: seconds, or an HTTP date.
    static func retryAfter(_ value: String) -> Duration? {
        let trimmed = value.trimmingCharacters(in: .whitespaces)
        if let seconds = Double(trimmed), seconds >= 0 { return .milliseconds(Int64(seconds * 1000)) }
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "GMT")
        formatter.dateFormat = "EEE, dd MMM yyyy HH:mm:ss zzz"
        guard let date = formatter.date(from: trimmed) else { return nil }
        return .milliseconds(Int64(max(0, date.timeIntervalSinceNow) * 1000))
    }

    // MARK: Requests

    static func encode(_ request: ChatRequest, provider: ModelCatalog.Provider, apiKey: String?) -> (String, HTTPHeaders, String) {
        var headers = HTTPHeaders([("content-type", "application/json"), ("accept", "application/json")])
        switch provider.api {
        case .openai:
            if let apiKey { headers.add(name: "authorization", value: "Bearer \(apiKey)") }
            return ("\(provider.baseURL)/chat/completions", headers, Self.openAIBody(request, maxTokensField: provider.maxTokensField).jsonText)
        case .anthropic:
            if let apiKey { headers.add(name: "x-api-key", value: apiKey) }
            headers.add(name: "anthropic-version", value: "2023-06-01")
            return ("\(provider.baseURL)/messages", headers, Self.anthropicBody(request).jsonText)
        }
    }

    static func openAIBody(_ request: ChatRequest, maxTokensField: String) -> ExprValue {
        var messages: [ExprValue] = []
        if !request.system.isEmpty { messages.append(.map(["role": "system", "content": .string(request.system)])) }
        for message in request.messages {
            switch message.role {
            case .user:
                messages.append(.map(["role": "user", "content": .string(message.text)]))
            case .assistant:
                var fields: [String: ExprValue] = ["role": "assistant", "content": message.text.isEmpty && !message.toolCalls.isEmpty ? .null : .string(message.text)]
                if !message.toolCalls.isEmpty {
                    fields["tool_calls"] = .list(message.toolCalls.map { call in
                        .map(["id": .string(call.id), "type": "function", "function": .map(["name": .string(call.name), "arguments": .string(call.arguments)])])
                    })
                }
                messages.append(.map(fields))
            case .tool:
                messages.append(.map(["role": "tool", "tool_call_id": .string(message.toolCallID), "content": .string(message.text)]))
            }
        }
        var body: [String: ExprValue] = [
            "model": .string(request.model),
            "messages": .list(messages),
            maxTokensField: .int(Int64(request.maxTokens)),
        ]
        if let temperature = request.temperature { body["temperature"] = .double(temperature) }
        if !request.tools.isEmpty {
            body["tools"] = .list(request.tools.map { tool in
                .map(["type": "function", "function": .map(["name": .string(tool.name), "description": .string(tool.description), "parameters": tool.parameters])])
            })
        }
        return .map(body)
    }

    static func anthropicBody(_ request: ChatRequest) -> ExprValue {
        // Anthropic alternates user and assistant; tool results are user content blocks, and
        // consecutive ones share one message.
        var messages: [(role: String, blocks: [ExprValue])] = []
        func append(_ role: String, _ blocks: [ExprValue]) {
            if let last = messages.last, last.role == role {
                messages[messages.count - 1].blocks += blocks
            } else {
                messages.append((role, blocks))
            }
        }
        for message in request.messages {
            switch message.role {
            case .user:
                append("user", [.map(["type": "text", "text": .string(message.text)])])
            case .assistant:
                var blocks: [ExprValue] = message.text.isEmpty ? [] : [.map(["type": "text", "text": .string(message.text)])]
                for call in message.toolCalls {
                    var input = (try? ExprValue(jsonText: call.arguments)) ?? .map([:])
                    if case .map = input {} else { input = .map([:]) }
                    blocks.append(.map(["type": "tool_use", "id": .string(call.id), "name": .string(call.name), "input": input]))
                }
                append("assistant", blocks.isEmpty ? [.map(["type": "text", "text": "(no answer)"])] : blocks)
            case .tool:
                append("user", [.map(["type": "tool_result", "tool_use_id": .string(message.toolCallID), "content": .string(message.text), "is_error": .bool(message.isError)])])
            }
        }
        var body: [String: ExprValue] = [
            "model": .string(request.model),
            "max_tokens": .int(Int64(request.maxTokens)),
            "messages": .list(messages.map { .map(["role": .string($0.role), "content": .list($0.blocks)]) }),
        ]
        if !request.system.isEmpty { body["system"] = .string(request.system) }
        if let temperature = request.temperature { body["temperature"] = .double(temperature) }
        if !request.tools.isEmpty {
            body["tools"] = .list(request.tools.map { .map(["name": .string($0.name), "description": .string($0.description), "input_schema": $0.parameters]) })
        }
        return .map(body)
    }

    // MARK: Answers

    struct DecodeError: Error, CustomStringConvertible {
        var description: String
    }

    static func decode(_ text: String, api: ModelCatalog.API) throws -> ChatResponse {
        guard case .map(let body) = try ExprValue(jsonText: text) else { throw DecodeError(description: "the body is not a JSON object") }
        switch api {
        case .openai:
            guard case .list(let choices) = body["choices"], case .map(let choice) = choices.first, case .map(let message) = choice["message"] else {
                throw DecodeError(description: "no choices[0].message")
            }
            var calls: [ChatToolCall] = []
            if case .list(let items) = message["tool_calls"] {
                for (index, item) in items.enumerated() {
                    guard case .map(let call) = item, case .map(let function) = call["function"], case .string(let name) = function["name"] else {
                        throw DecodeError(description: "tool_calls[\(index)] has no function.name")
                    }
                    let arguments: String
                    switch function["arguments"] {
                    case .string(let text): arguments = text
                    case .none, .null: arguments = "{}"
                    case .some(let value): arguments = value.jsonText
                    }
                    let id = if case .string(let id) = call["id"], !id.isEmpty { id } else { "call_\(index)" }
                    calls.append(ChatToolCall(id: id, name: name, arguments: arguments))
                }
            }
            let content = if case .string(let text) = message["content"] { text } else { "" }
            let finish = if case .string(let reason) = choice["finish_reason"] { reason } else { calls.isEmpty ? "stop" : "tool_calls" }
            let usage = if case .map(let usage) = body["usage"] { usage } else { [String: ExprValue]() }
            return ChatResponse(text: content, toolCalls: calls, finishReason: finish, inputTokens: Self.count(usage["prompt_tokens"]), outputTokens: Self.count(usage["completion_tokens"]))
        case .anthropic:
            guard case .list(let blocks) = body["content"] else { throw DecodeError(description: "no content") }
            var text = ""
            var calls: [ChatToolCall] = []
            for (index, block) in blocks.enumerated() {
                guard case .map(let fields) = block, case .string(let type) = fields["type"] else { throw DecodeError(description: "content[\(index)] has no type") }
                switch type {
                case "text":
                    if case .string(let part) = fields["text"] { text += part }
                case "tool_use":
                    guard case .string(let name) = fields["name"] else { throw DecodeError(description: "content[\(index)] has no name") }
                    let id = if case .string(let id) = fields["id"], !id.isEmpty { id } else { "toolu_\(index)" }
                    calls.append(ChatToolCall(id: id, name: name, arguments: (fields["input"] ?? .map([:])).jsonText))
                default:
                    continue
                }
            }
            let stop: String
            switch body["stop_reason"] {
            case .string("end_turn"), .string("stop_sequence"): stop = "stop"
            case .string("tool_use"): stop = "tool_calls"
            case .string("max_tokens"): stop = "length"
            case .string(let other): stop = other
            default: stop = calls.isEmpty ? "stop" : "tool_calls"
            }
            let usage = if case .map(let usage) = body["usage"] { usage } else { [String: ExprValue]() }
            let input = Self.count(usage["input_tokens"]) + Self.count(usage["cache_read_input_tokens"]) + Self.count(usage["cache_creation_input_tokens"])
            return ChatResponse(text: text, toolCalls: calls, finishReason: stop, inputTokens: input, outputTokens: Self.count(usage["output_tokens"]))
        }
    }

    static func count(_ value: ExprValue?) -> Int64 {
        if case .int(let number) = value { return max(0, number) }
        return 0
    }

    /// The provider's own words, from `{"error": {"message": …}}` (both APIs), else the body's start.
    static func errorMessage(_ text: String, status: Int) -> String {
        if case .map(let body)? = try? ExprValue(jsonText: text), case .map(let error) = body["error"], case .string(let message) = error["message"] {
            return String(message.prefix(500))
        }
        if status == 0 { return "could not reach the provider: \(text.prefix(300))" }
        return String(text.prefix(300))
    }

    /// OpenAI's `context_length_exceeded`, llama.cpp's and vLLM's wording, Anthropic's "prompt is too long".
    static func isContextLength(status: Int, body: String) -> Bool {
        guard status == 400 || status == 413 else { return false }
        let lowered = body.lowercased()
        return lowered.contains("context_length_exceeded") || lowered.contains("prompt is too long") || lowered.contains("maximum context length")
            || lowered.contains("context window") || lowered.contains("exceed_context_size")
    }
}

extension Duration {
    var milliseconds: Int64 {
        let (seconds, attoseconds) = self.components
        return seconds * 1000 + attoseconds / 1_000_000_000_000_000
    }
}
