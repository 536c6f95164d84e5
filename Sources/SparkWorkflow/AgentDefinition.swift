public import SparkExpr

/// An agent of a project, as written in YAML or JSON (docs/agents.md):
///
/// ```yaml
/// agent: researcher
/// provider: openai            # a provider of the agent service's model catalog
/// model: gpt-4o-mini
/// system_prompt: You answer from the handbook, citing the documents you used.
/// tools: [search-handbook]
/// memory: true
/// max_iterations: 6
/// ```
public struct AgentDefinition: Sendable, Hashable {
    public var name: String
    public var description: String = ""
    /// A provider the agent service's model catalog names (`openai`, `anthropic`, `ollama`, …).
    public var provider: String
    public var model: String
    public var systemPrompt: String = ""
    /// The project's tools the model may call, by name.
    public var tools: [String] = []
    /// Offers the memory_* built-in tools: facts and conversation summaries kept per agent.
    public var memory: Bool = false
    /// LLM calls in one step, at most.
    public var maxIterations: Int = 8
    /// Tokens one LLM call may write.
    public var maxTokens: Int = 1024
    /// Nil leaves the provider's default.
    public var temperature: Double?
    /// The JSON Schema the answer must satisfy; the answer is then parsed as JSON.
    public var outputSchema: ExprValue?
    /// The whole step, every call included.
    public var timeout: WorkflowDuration = .seconds(300)
    /// The project secret holding the provider's API key; empty takes the provider's own setting.
    public var apiKeySecret: String = ""

    public init(name: String, provider: String, model: String) {
        self.name = name
        self.provider = provider
        self.model = model
    }

    /// The built-in tools an agent with `memory: true` is offered, which no project tool may be named.
    public static let memoryToolPrefix = "memory_"

    /// The output schema, compiled; nil without one.
    public var schema: JSONSchema? {
        self.outputSchema.flatMap { try? JSONSchema($0) }
    }

    /// Reads an agent definition from YAML or JSON, every problem with its line, column and field.
    ///
    /// With `tools`, every tool the agent names must be among them (the project's tools).
    public static func read(_ source: String, limits: WorkflowLimits = .default, tools: Set<String>? = nil) throws(WorkflowValidationError) -> AgentDefinition {
        var tree = SourceTreeReader(limits: limits)
        guard let root = tree.read(source) else { throw WorkflowValidationError(problems: tree.problems) }
        var reader = WorkflowReader(limits: limits)
        reader.problems = tree.problems
        let definition = reader.agent(root)
        if let definition, let tools {
            for (index, tool) in definition.tools.enumerated() where !tools.contains(tool) {
                let hint = WorkflowReader.closest(tool, Array(tools)).map { "; did you mean \($0.debugDescription)?" } ?? ""
                reader.problem("tools[\(index)]", "the project has no tool \(tool.debugDescription)\(hint)", at: reader.at("tools[\(index)]"))
            }
        }
        guard reader.problems.isEmpty, let definition else { throw WorkflowValidationError(problems: reader.problems) }
        return definition
    }

    /// The `provider` and `model` a source names at its top, with where: read even when the rest
    /// of the definition is not valid, so that a check of the catalog reports beside the other
    /// problems. Nil when the source is not a mapping or names neither.
    public static func declaredModel(in source: String) -> (provider: String, model: String, line: Int, column: Int)? {
        var tree = SourceTreeReader(limits: .default)
        guard let root = tree.read(source), case .mapping(let pairs, _) = root else { return nil }
        func scalar(_ key: String) -> (String, SourceLocation)? {
            guard let pair = pairs.first(where: { $0.key == key }), case .scalar(let text, _, let at) = pair.value else { return nil }
            return (text, at)
        }
        guard let provider = scalar("provider"), let model = scalar("model") else { return nil }
        return (provider.0, model.0, model.1.line, model.1.column)
    }

    // MARK: Canonical form

    public var canonicalValue: ExprValue {
        var fields: [String: ExprValue] = [
            "agent": .string(self.name),
            "description": .string(self.description),
            "provider": .string(self.provider),
            "model": .string(self.model),
            "system_prompt": .string(self.systemPrompt),
            "tools": .list(self.tools.map(ExprValue.string)),
            "memory": .bool(self.memory),
            "max_iterations": .int(Int64(self.maxIterations)),
            "max_tokens": .int(Int64(self.maxTokens)),
            "timeout": .string(self.timeout.description),
            "api_key_secret": .string(self.apiKeySecret),
        ]
        if let temperature = self.temperature { fields["temperature"] = .double(temperature) }
        if let schema = self.outputSchema { fields["output_schema"] = schema }
        return .map(fields)
    }

    /// Compact JSON of the canonical value, numbers as written: what is stored and shown.
    public var canonicalJSON: String { self.canonicalValue.jsonText }

    /// Over the value's stable text (``ExprValue/stableJSONText``), which has not changed since
    /// the first version: a definition keeps its hash.
    public var contentHash: String { ContentHash.of(self.canonicalValue.stableJSONText) }
}

extension WorkflowReader {
    static let agentFields = [
        "agent", "description", "provider", "model", "system_prompt", "tools", "memory", "max_iterations",
        "max_tokens", "temperature", "output_schema", "timeout", "api_key_secret",
    ]

    /// Names a model can call: providers accept 1–64 letters, digits, `_` and `-`.
    static func isModelToolName(_ text: String) -> Bool {
        !text.isEmpty && text.unicodeScalars.count <= 64
            && text.unicodeScalars.allSatisfy { "_-".unicodeScalars.contains($0) || ("a"..."z").contains($0) || ("A"..."Z").contains($0) || ("0"..."9").contains($0) }
    }

    /// Provider and model names: printable, no spaces, at most 200 characters.
    static func isModelName(_ text: String) -> Bool {
        !text.isEmpty && text.unicodeScalars.count <= 200 && text.unicodeScalars.allSatisfy { $0.isASCII && $0.value > 0x20 && $0.value < 0x7F }
    }

    mutating func agent(_ root: SourceNode) -> AgentDefinition? {
        guard let top = self.fields(root, "", allowed: Self.agentFields) else { return nil }
        var name = self.name(top["agent"]?.0, "agent", pattern: Self.isResourceName, rule: "1–100 letters, digits, _ . -, starting with a letter or digit", at: root.location)
        // Route names, and the shape of agent ids (`agt_…`), which a reference by name could not
        // be told from.
        if let taken = name, ["apply", "validate"].contains(taken) || taken.hasPrefix("agent_") || taken.hasPrefix("agt_") {
            self.problem("agent", "\(taken.debugDescription) is reserved; choose another name", at: top["agent"]?.0.location ?? root.location)
            name = nil
        }
        let provider = self.name(top["provider"]?.0, "provider", pattern: Self.isModelName, rule: "a provider of the model catalog, such as openai, anthropic or ollama", at: root.location)
        let model = self.name(top["model"]?.0, "model", pattern: Self.isModelName, rule: "the provider's model name, without spaces", at: root.location)
        guard let name, let provider, let model else { return nil }
        var agent = AgentDefinition(name: name, provider: provider, model: model)
        agent.description = self.string(top["description"]?.0, "description") ?? ""
        if let node = top["system_prompt"]?.0, let prompt = self.string(node, "system_prompt") {
            if prompt.utf8.count > 256 * 1024 {
                self.problem("system_prompt", "is longer than 256 KiB", at: node.location)
            }
            agent.systemPrompt = prompt
        }
        agent.tools = self.stringList(top["tools"]?.0, "tools")
        var seen: Set<String> = []
        for (index, tool) in agent.tools.enumerated() {
            let field = "tools[\(index)]"
            if tool.hasPrefix(AgentDefinition.memoryToolPrefix) {
                self.problem(field, "memory_* tools are built in: write memory: true to offer them", at: self.at(field))
            } else if !Self.isModelToolName(tool) {
                self.problem(field, "\(tool.debugDescription) cannot be offered to a model: its tools are named by 1–64 letters, digits, _ and -", at: self.at(field))
            } else if !seen.insert(tool).inserted {
                self.problem(field, "\(tool.debugDescription) is listed twice", at: self.at(field))
            }
        }
        if agent.tools.count > 128 {
            self.problem("tools", "lists \(agent.tools.count) tools; at most 128", at: top["tools"]?.0.location ?? root.location)
        }
        if let node = top["memory"]?.0 {
            if case .bool(let on) = node.value { agent.memory = on } else {
                self.problem("memory", "must be true or false", at: node.location)
            }
        }
        func bounded(_ key: String, _ range: ClosedRange<Int64>, _ assign: (Int) -> Void) {
            guard let node = top[key]?.0 else { return }
            if case .int(let number) = node.value, range.contains(number) { assign(Int(number)) } else {
                self.problem(key, "must be a whole number from \(range.lowerBound) to \(range.upperBound)", at: node.location)
            }
        }
        bounded("max_iterations", 1 ... 100) { agent.maxIterations = $0 }
        bounded("max_tokens", 1 ... 1_000_000) { agent.maxTokens = $0 }
        if let node = top["temperature"]?.0 {
            switch node.value {
            case .int(let number) where (0 ... 2).contains(number): agent.temperature = Double(number)
            case .double(let number) where (0 ... 2).contains(number): agent.temperature = number
            default: self.problem("temperature", "must be a number from 0 to 2", at: node.location)
            }
        }
        if let node = top["output_schema"]?.0 {
            self.recordLocations(of: node, at: "output_schema")
            do {
                _ = try JSONSchema(node.value)
                agent.outputSchema = node.value
            } catch {
                for problem in error.problems {
                    let field = problem.path.isEmpty ? "output_schema" : "output_schema.\(problem.path)"
                    self.problem(field, problem.message, at: self.nearest(field, fallback: node.location))
                }
            }
        }
        if let timeout = self.duration(top["timeout"]?.0, "timeout") {
            if timeout < .seconds(1) || timeout > .seconds(3600) {
                self.problem("timeout", "must be from 1s to 1h", at: top["timeout"]!.0.location)
            } else {
                agent.timeout = timeout
            }
        }
        if let node = top["api_key_secret"]?.0, node.value != .string(""), node.value != .null {
            agent.apiKeySecret = self.name(node, "api_key_secret", pattern: Self.isSecretName, rule: "the name of a secret of the project: letters, digits, _ . -", at: root.location) ?? ""
        }
        return agent
    }
}
