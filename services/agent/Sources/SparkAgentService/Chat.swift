import SparkExpr

/// A conversation with a model, independent of the provider's API.
struct ChatMessage: Sendable, Hashable {
    enum Role: String, Sendable { case user, assistant, tool }

    var role: Role
    var text: String
    /// An assistant's calls of tools.
    var toolCalls: [ChatToolCall] = []
    /// A tool result: the call it answers, and whether it is an error.
    var toolCallID: String = ""
    var isError: Bool = false

    static func user(_ text: String) -> ChatMessage { ChatMessage(role: .user, text: text) }

    /// A rough count of the tokens the message costs: 4 characters a token, and a little for the
    /// message itself. The loop scales it by what the provider reported for earlier calls.
    var estimatedTokens: Int {
        var characters = self.text.utf8.count
        for call in self.toolCalls { characters += call.name.utf8.count + call.arguments.utf8.count + 16 }
        return characters / 4 + 8
    }
}

struct ChatToolCall: Sendable, Hashable {
    var id: String
    var name: String
    /// The arguments as the model wrote them: JSON text, which may not parse.
    var arguments: String
}

/// A tool offered to the model.
struct ChatTool: Sendable, Hashable {
    var name: String
    var description: String
    /// A JSON Schema object.
    var parameters: ExprValue

    var estimatedTokens: Int { (self.name.utf8.count + self.description.utf8.count + self.parameters.jsonText.utf8.count) / 4 + 8 }
}

struct ChatRequest: Sendable {
    var model: String
    var system: String
    var messages: [ChatMessage]
    var tools: [ChatTool]
    var maxTokens: Int
    var temperature: Double?
}

struct ChatResponse: Sendable {
    var text: String
    var toolCalls: [ChatToolCall]
    /// stop, tool_calls, length, or the provider's own word.
    var finishReason: String
    var inputTokens: Int64
    var outputTokens: Int64
}

/// Why a call of a model failed.
enum LLMError: Error, Sendable, CustomStringConvertible {
    /// The prompt does not fit the model's window (the provider said so).
    case contextLength(String)
    /// An answer the caller should not retry (400, 401, 403, 404, …), or retries ran out.
    case failed(status: Int, message: String)
    /// The provider answered something that is not its API.
    case malformed(String)
    /// The step's deadline came first.
    case deadline(String)

    var description: String {
        switch self {
        case .contextLength(let message): return "the prompt is longer than the model's context window: \(message)"
        case .failed(let status, let message): return status == 0 ? message : "HTTP \(status): \(message)"
        case .malformed(let message): return "the provider's answer is not its API: \(message)"
        case .deadline(let message): return message
        }
    }
}
