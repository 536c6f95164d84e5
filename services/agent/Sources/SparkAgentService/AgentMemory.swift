import SparkExpr
import SparkKit
import SparkWorkflow

/// An agent's memory, as the model sees it: built-in tools that read and write the facts and
/// conversation summaries the agent service keeps per agent.
struct AgentMemory: Sendable {
    let store: AgentStore
    let projectID: String
    let agentID: String
    let executionID: String

    static let keyRule = "1–200 printable characters"

    static func validateKey(_ key: String, field: String) throws {
        guard !key.isEmpty else { throw SparkError.invalid(field, "is required") }
        guard key.unicodeScalars.count <= 200, key.unicodeScalars.allSatisfy({ $0.value >= 0x20 && $0.value != 0x7F }) else {
            throw SparkError.invalid(field, "must be \(Self.keyRule)")
        }
    }

    static func validateValue(_ json: String, field: String) throws {
        guard json.utf8.count <= 16 * 1024 else { throw SparkError.invalid(field, "is longer than 16 KiB of JSON") }
    }

    /// The tools offered to a model of an agent with `memory: true`.
    static let tools: [ChatTool] = [
        ChatTool(name: "memory_set", description: "Remember a fact for later steps of this agent: a key and a JSON value (replaces the key's value).", parameters: Self.schema([
            "key": .map(["type": "string", "minLength": .int(1), "maxLength": .int(200)]),
            "value": .map([:]),
        ], required: ["key", "value"])),
        ChatTool(name: "memory_get", description: "Read a fact remembered earlier, by its key (null when there is none).", parameters: Self.schema([
            "key": .map(["type": "string"]),
        ], required: ["key"])),
        ChatTool(name: "memory_delete", description: "Forget a fact, by its key.", parameters: Self.schema([
            "key": .map(["type": "string"]),
        ], required: ["key"])),
        ChatTool(name: "memory_list", description: "Every fact remembered, with its key and value.", parameters: Self.schema([:], required: [])),
        ChatTool(name: "memory_save_summary", description: "Keep a summary of this conversation for later steps of this agent.", parameters: Self.schema([
            "text": .map(["type": "string", "minLength": .int(1), "maxLength": .int(16384)]),
        ], required: ["text"])),
        ChatTool(name: "memory_summaries", description: "The latest conversation summaries kept, newest first.", parameters: Self.schema([
            "limit": .map(["type": "integer", "minimum": .int(1), "maximum": .int(50)]),
        ], required: [])),
    ]

    static func schema(_ properties: [String: ExprValue], required: [String]) -> ExprValue {
        .map(["type": "object", "properties": .map(properties), "required": .list(required.map(ExprValue.string)), "additionalProperties": .bool(false)])
    }

    static func isMemoryTool(_ name: String) -> Bool { Self.tools.contains { $0.name == name } }

    /// Runs a memory tool; its output, or an error for the model.
    func call(_ name: String, _ arguments: ExprValue) async throws -> ExprValue {
        guard let tool = Self.tools.first(where: { $0.name == name }) else { throw SparkError.invalid("tool", "no memory tool \(name)") }
        let problems = (try JSONSchema(tool.parameters)).problems(arguments)
        if !problems.isEmpty {
            throw SparkError.invalid("arguments", problems.map { "\($0.path): \($0.message)" }.joined(separator: "; "))
        }
        guard case .map(let fields) = arguments else { return .null }
        let key: String = if case .string(let key) = fields["key"] { key } else { "" }
        switch name {
        case "memory_set":
            try Self.validateKey(key, field: "key")
            let value = (fields["value"] ?? .null).jsonText
            try Self.validateValue(value, field: "value")
            let fact = MemoryRow(key: key, value: value, updatedAt: AgentStore.now(), updatedBy: self.executionID)
            try await self.store.store.transaction { try await self.store.put(fact, projectID: self.projectID, agentID: self.agentID, on: $0) }
            return .map(["saved": .string(key)])
        case "memory_get":
            let fact = try await self.store.store.sql { try await self.store.fact(projectID: self.projectID, agentID: self.agentID, key: key, on: $0) }
            return try fact.map { try ExprValue(jsonText: $0.value) } ?? .null
        case "memory_delete":
            let deleted = try await self.store.store.transaction { try await self.store.deleteFact(projectID: self.projectID, agentID: self.agentID, key: key, on: $0) }
            return .map(["deleted": .bool(deleted)])
        case "memory_list":
            let facts = try await self.store.store.sql { try await self.store.facts(projectID: self.projectID, agentID: self.agentID, on: $0) }
            return .map(try Dictionary(facts.map { ($0.key, try ExprValue(jsonText: $0.value)) }, uniquingKeysWith: { first, _ in first }))
        case "memory_save_summary":
            guard case .string(let text) = fields["text"] else { return .null }
            let summary = SummaryRow(id: SparkID.make("sum"), text: text, executionID: self.executionID, createdAt: AgentStore.now())
            try await self.store.store.transaction { try await self.store.addSummary(summary, projectID: self.projectID, agentID: self.agentID, on: $0) }
            return .map(["saved": .bool(true)])
        default:
            let limit = if case .int(let limit) = fields["limit"] { Int(limit) } else { 5 }
            let summaries = try await self.store.store.sql { try await self.store.summaries(projectID: self.projectID, agentID: self.agentID, limit: limit, on: $0) }
            return .list(summaries.map { .string($0.text) })
        }
    }

    /// A line for the system prompt: the keys remembered, so that the model knows to read them.
    func briefing() async throws -> String {
        let facts = try await self.store.store.sql { try await self.store.facts(projectID: self.projectID, agentID: self.agentID, on: $0) }
        let keys = facts.prefix(50).map(\.key.debugDescription).joined(separator: ", ")
        let listed = facts.isEmpty ? "nothing yet" : "facts under the keys \(keys)\(facts.count > 50 ? " and \(facts.count - 50) more" : "")"
        return "You have a memory that lasts between tasks (tools memory_*). It holds \(listed)."
    }
}
