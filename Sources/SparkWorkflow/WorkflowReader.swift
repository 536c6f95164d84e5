import SparkExpr

extension WorkflowDefinition {
    /// Reads a definition from YAML or JSON and validates it: its fields and their types, the DAG
    /// (ids, `needs`, cycles), durations, retry bounds, and every expression (syntax, names, types),
    /// each problem with its line, column and field. Tools and agents are checked by name only;
    /// whether the project has them is the workflow service's check.
    ///
    /// With `references`, the tools and agents its steps name must be among those given (the
    /// project's), each unknown one a problem at its step's `tool` or `agent` field.
    public static func read(_ source: String, limits: WorkflowLimits = .default, references: WorkflowReferences = .unchecked) throws(WorkflowValidationError) -> WorkflowDefinition {
        var tree = SourceTreeReader(limits: limits)
        guard let root = tree.read(source) else { throw WorkflowValidationError(problems: tree.problems) }
        var reader = WorkflowReader(limits: limits)
        reader.problems = tree.problems
        let definition = reader.definition(root)
        if let definition {
            reader.validate(definition)
            reader.checkReferences(definition, references)
        }
        guard reader.problems.isEmpty, let definition else { throw WorkflowValidationError(problems: reader.problems) }
        return definition
    }
}

/// The tools and agents a project has, to check a definition's steps against; nil checks none.
public struct WorkflowReferences: Sendable {
    public var tools: Set<String>?
    public var agents: Set<String>?

    public init(tools: Set<String>? = nil, agents: Set<String>? = nil) {
        self.tools = tools
        self.agents = agents
    }

    public static let unchecked = WorkflowReferences()
}

extension WorkflowDefinition {
    /// The tools the steps name, each once.
    public var toolNames: Set<String> {
        Set(self.steps.compactMap { if case .tool(let name) = $0.kind { name } else { nil } })
    }

    /// The agents the steps name, each once.
    public var agentNames: Set<String> {
        Set(self.steps.compactMap { if case .agent(let name) = $0.kind { name } else { nil } })
    }
}

/// Turns the source tree into a definition, noting every problem and where, then checks the whole.
struct WorkflowReader {
    let limits: WorkflowLimits
    var problems: [WorkflowProblem] = []
    /// Where each field was written, by its path, for problems found after reading.
    var locations: [String: SourceLocation] = [:]

    init(limits: WorkflowLimits) {
        self.limits = limits
    }

    /// Letters, digits and `_`, not starting with a digit: names expressions can use.
    static func isIdentifier(_ text: String) -> Bool {
        guard let first = text.unicodeScalars.first, first == "_" || ("a"..."z").contains(first) || ("A"..."Z").contains(first) else { return false }
        return text.count <= 100 && text.unicodeScalars.allSatisfy { $0 == "_" || ("a"..."z").contains($0) || ("A"..."Z").contains($0) || ("0"..."9").contains($0) }
    }

    /// 1–100 letters, digits, `_ . -`, starting with a letter or digit: tool and agent names.
    static func isResourceName(_ text: String) -> Bool {
        guard let first = text.unicodeScalars.first, ("a"..."z").contains(first) || ("A"..."Z").contains(first) || ("0"..."9").contains(first) else { return false }
        return text.unicodeScalars.count <= 100
            && text.unicodeScalars.allSatisfy { "_.-".unicodeScalars.contains($0) || ("a"..."z").contains($0) || ("A"..."Z").contains($0) || ("0"..."9").contains($0) }
    }

    mutating func problem(_ field: String, _ message: String, at location: SourceLocation) {
        self.problems.append(WorkflowProblem(line: location.line, column: location.column, field: field, message: message))
    }

    /// The mapping's pairs, refusing keys outside `allowed` (with the nearest allowed one).
    mutating func fields(_ node: SourceNode, _ path: String, allowed: [String]) -> [String: (SourceNode, SourceLocation)]? {
        guard case .mapping(let pairs, _) = node else {
            self.problem(path, "must be a mapping, not \(node.kindName)", at: node.location)
            return nil
        }
        var fields: [String: (SourceNode, SourceLocation)] = [:]
        for pair in pairs {
            let field = path.isEmpty ? pair.key : "\(path).\(pair.key)"
            guard allowed.contains(pair.key) else {
                let hint = Self.closest(pair.key, allowed).map { "; did you mean \($0.debugDescription)?" } ?? "; known: \(allowed.joined(separator: ", "))"
                self.problem(field, "unknown field \(pair.key.debugDescription)\(hint)", at: pair.keyAt)
                continue
            }
            fields[pair.key] = (pair.value, pair.keyAt)
            self.locations[field] = pair.value.location
        }
        return fields
    }

    mutating func string(_ node: SourceNode?, _ field: String, required: Bool = false) -> String? {
        guard let node else {
            if required { self.problem(field, "is required", at: .start) }
            return nil
        }
        guard case .scalar(let text, _, _) = node, !(node.value == .null && required) else {
            self.problem(field, required && node.value == .null ? "is required" : "must be a string, not \(node.kindName)", at: node.location)
            return nil
        }
        return text
    }

    mutating func name(_ node: SourceNode?, _ field: String, pattern: (String) -> Bool, rule: String, at fallback: SourceLocation) -> String? {
        guard let node else {
            self.problem(field, "is required", at: fallback)
            return nil
        }
        guard let text = self.string(node, field) else { return nil }
        guard pattern(text) else {
            self.problem(field, "\(text.debugDescription) is not a valid name (\(rule))", at: node.location)
            return nil
        }
        return text
    }

    mutating func duration(_ node: SourceNode?, _ field: String) -> WorkflowDuration? {
        guard let node else { return nil }
        guard case .scalar(let text, _, _) = node, let duration = WorkflowDuration(parsing: text) else {
            self.problem(field, "\(node.value.templateText.debugDescription) is not a duration; write 500ms, 30s, 5m, 1h30m", at: node.location)
            return nil
        }
        guard duration <= .maximum else {
            self.problem(field, "\(text) is longer than 30 days", at: node.location)
            return nil
        }
        return duration
    }

    mutating func stringList(_ node: SourceNode?, _ field: String) -> [String] {
        guard let node else { return [] }
        if case .scalar(let text, _, _) = node, node.value != .null { return [text] }
        guard case .sequence(let items, _) = node else {
            self.problem(field, "must be a list of names, not \(node.kindName)", at: node.location)
            return []
        }
        var names: [String] = []
        for (index, item) in items.enumerated() {
            self.locations["\(field)[\(index)]"] = item.location
            if let text = self.string(item, "\(field)[\(index)]") { names.append(text) }
        }
        return names
    }

    /// Notes where every value under `node` was written, for problems found in them later.
    mutating func recordLocations(of node: SourceNode, at path: String) {
        self.locations[path] = node.location
        switch node {
        case .scalar: break
        case .mapping(let pairs, _):
            for pair in pairs { self.recordLocations(of: pair.value, at: "\(path).\(pair.key)") }
        case .sequence(let items, _):
            for (index, item) in items.enumerated() { self.recordLocations(of: item, at: "\(path)[\(index)]") }
        }
    }

    // MARK: The definition

    mutating func definition(_ root: SourceNode) -> WorkflowDefinition? {
        guard let top = self.fields(root, "", allowed: ["name", "description", "inputs", "steps", "outputs", "timeout", "estimated_cost"]) else { return nil }
        let name = self.name(top["name"]?.0, "name", pattern: Self.isResourceName, rule: "1–100 letters, digits, _ . -, starting with a letter or digit", at: root.location)
        // A name in the shape of a workflow id (`wf_…`) could not be told from one.
        if let taken = name, taken.hasPrefix("wf_") || ["apply", "validate"].contains(taken) {
            self.problem("name", "\(taken.debugDescription) is reserved (workflow ids start with wf_); choose another name", at: top["name"]?.0.location ?? root.location)
        }
        let description = self.string(top["description"]?.0, "description") ?? ""
        let inputs = self.inputs(top["inputs"]?.0)
        var steps: [WorkflowStep] = []
        if let node = top["steps"]?.0 {
            if case .sequence(let items, _) = node {
                if items.count > self.limits.maxSteps {
                    self.problem("steps", "more than \(self.limits.maxSteps) steps", at: node.location)
                }
                for (index, item) in items.prefix(self.limits.maxSteps).enumerated() {
                    if let step = self.step(item, "steps[\(index)]") { steps.append(step) }
                }
            } else {
                self.problem("steps", "must be a list of steps, not \(node.kindName)", at: node.location)
            }
        } else {
            self.problem("steps", "is required: a workflow has at least one step", at: root.location)
        }
        var outputs: [(name: String, template: String)] = []
        if let node = top["outputs"]?.0, node.value != .null {
            if case .mapping(let pairs, _) = node {
                for pair in pairs {
                    let field = "outputs.\(pair.key)"
                    self.locations[field] = pair.value.location
                    guard Self.isIdentifier(pair.key) else {
                        self.problem(field, "\(pair.key.debugDescription) is not a valid output name (letters, digits and _)", at: pair.keyAt)
                        continue
                    }
                    if let template = self.string(pair.value, field) { outputs.append((pair.key, template)) }
                }
            } else {
                self.problem("outputs", "must be a mapping of names to templates, not \(node.kindName)", at: node.location)
            }
        }
        let timeout = self.duration(top["timeout"]?.0, "timeout")
        let estimate = self.dollars(top["estimated_cost"]?.0, "estimated_cost")
        guard let name else { return nil }
        return WorkflowDefinition(name: name, description: description, inputs: inputs, steps: steps, outputs: outputs, timeout: timeout, estimatedCostMicros: estimate)
    }

    /// An amount of US dollars, more than 0 and at most 1,000,000, to the micro-dollar: a number
    /// (`0.25`) or the same as a string (`"0.25"`), in micro-dollars.
    mutating func dollars(_ node: SourceNode?, _ field: String) -> Int64? {
        guard let node, node.value != .null else { return nil }
        let rule = "is not an amount of dollars: write a number more than 0 and at most 1000000, such as 0.25"
        guard case .scalar(let text, _, _) = node else {
            self.problem(field, rule, at: node.location)
            return nil
        }
        let isDigit: (Character) -> Bool = { ("0"..."9").contains($0) }
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard (1...2).contains(parts.count), let whole = parts.first, !whole.isEmpty, whole.count <= 7, whole.allSatisfy(isDigit),
            parts.count == 1 || (1...6).contains(parts[1].count) && parts[1].allSatisfy(isDigit),
            let dollars = Int64(whole)
        else {
            self.problem(field, "\(text.debugDescription) \(rule), to the micro-dollar (6 decimals at most)", at: node.location)
            return nil
        }
        let fraction = parts.count == 2 ? String(parts[1]) + String(repeating: "0", count: 6 - parts[1].count) : "0"
        let micros = dollars * 1_000_000 + Int64(fraction)!
        guard micros > 0, micros <= 1_000_000_000_000 else {
            self.problem(field, "\(text) \(rule)", at: node.location)
            return nil
        }
        return micros
    }

    mutating func inputs(_ node: SourceNode?) -> [WorkflowInput] {
        guard let node, node.value != .null else { return [] }
        guard case .mapping(let pairs, _) = node else {
            self.problem("inputs", "must be a mapping of input names, not \(node.kindName)", at: node.location)
            return []
        }
        var inputs: [WorkflowInput] = []
        for pair in pairs {
            let field = "inputs.\(pair.key)"
            guard Self.isIdentifier(pair.key) else {
                self.problem(field, "\(pair.key.debugDescription) is not a valid input name (letters, digits and _, not starting with a digit)", at: pair.keyAt)
                continue
            }
            // `topic: string` is short for `topic: { type: string }`.
            var typeNode: SourceNode? = pair.value
            var fields: [String: (SourceNode, SourceLocation)] = [:]
            if case .mapping = pair.value {
                fields = self.fields(pair.value, field, allowed: ["type", "required", "default", "description"]) ?? [:]
                typeNode = fields["type"]?.0
            }
            var type = WorkflowInput.ValueType.any
            if let typeNode {
                let text = self.string(typeNode, "\(field).type") ?? ""
                if let known = WorkflowInput.ValueType(rawValue: text) {
                    type = known
                } else {
                    self.problem("\(field).type", "unknown type \(text.debugDescription); one of \(WorkflowInput.ValueType.allCases.map(\.rawValue).joined(separator: ", "))", at: typeNode.location)
                }
            }
            var required = false
            if let requiredNode = fields["required"]?.0 {
                if case .bool(let flag) = requiredNode.value { required = flag } else {
                    self.problem("\(field).required", "must be true or false", at: requiredNode.location)
                }
            }
            let defaultValue = fields["default"].map { $0.0.value }
            if let defaultValue, let node = fields["default"]?.0, !type.admits(defaultValue) {
                self.problem("\(field).default", "a \(defaultValue.typeName) is not a \(type.rawValue)", at: node.location)
            }
            let description = self.string(fields["description"]?.0, "\(field).description") ?? ""
            inputs.append(WorkflowInput(name: pair.key, type: type, required: required, defaultValue: defaultValue, description: description))
        }
        return inputs
    }

    static let stepFields = ["id", "tool", "agent", "approval", "needs", "when", "with", "retry", "timeout", "on_error"]
    /// The arguments of an agent step (`with`).
    static let agentArguments = ["prompt", "input"]

    mutating func step(_ node: SourceNode, _ path: String) -> WorkflowStep? {
        guard let fields = self.fields(node, path, allowed: Self.stepFields) else { return nil }
        let id = self.name(fields["id"]?.0, "\(path).id", pattern: Self.isIdentifier, rule: "letters, digits and _, not starting with a digit, so that expressions can name it", at: node.location)
        self.locations["\(path).id"] = fields["id"]?.0.location ?? node.location
        let kinds = ["tool", "agent", "approval"].filter { fields[$0] != nil }
        var kind: WorkflowStep.Kind?
        switch kinds.count {
        case 0: self.problem(path, "a step needs one of tool, agent or approval", at: node.location)
        case 1:
            let field = "\(path).\(kinds[0])"
            let valueNode = fields[kinds[0]]!.0
            switch kinds[0] {
            case "tool", "agent":
                if let name = self.name(valueNode, field, pattern: Self.isResourceName, rule: "the name of a \(kinds[0]) of the project", at: valueNode.location) {
                    kind = kinds[0] == "tool" ? .tool(name) : .agent(name)
                }
            default:
                kind = self.approval(valueNode, field).map(WorkflowStep.Kind.approval)
            }
        default:
            self.problem(path, "a step is one of tool, agent or approval, not \(kinds.joined(separator: " and "))", at: fields[kinds[1]]!.1)
        }
        let needs = self.stringList(fields["needs"]?.0, "\(path).needs")
        var when: String?
        if let whenNode = fields["when"]?.0 {
            switch whenNode.value {
            case .bool(let flag): when = flag ? "true" : "false"
            case .string(let text): when = text
            default: self.problem("\(path).when", "must be an expression", at: whenNode.location)
            }
        }
        let with = fields["with"].map { $0.0.value } ?? .map([:])
        if let node = fields["with"]?.0 { self.recordLocations(of: node, at: "\(path).with") }
        if case .map(let arguments) = with {
            // An agent step takes a prompt and, optionally, an input: anything else is a typo
            // that would otherwise apply and fail only when the step runs.
            if case .agent = kind {
                for key in arguments.keys.sorted() where !Self.agentArguments.contains(key) {
                    let hint = Self.closest(key, Self.agentArguments).map { "; did you mean \($0.debugDescription)?" } ?? ""
                    self.problem("\(path).with.\(key)", "an agent step takes prompt and input, not \(key.debugDescription)\(hint)", at: self.locations["\(path).with.\(key)"] ?? fields["with"]!.0.location)
                }
                switch arguments["prompt"] {
                case .string(let prompt)? where !prompt.isEmpty: break
                case nil: self.problem("\(path).with", "an agent step needs with.prompt (the task, a template)", at: fields["with"]?.0.location ?? node.location)
                default: self.problem("\(path).with.prompt", "must be a non-empty string (a template)", at: self.locations["\(path).with.prompt"] ?? node.location)
                }
            }
        } else {
            self.problem("\(path).with", "must be a mapping of arguments, not \(fields["with"]!.0.kindName)", at: fields["with"]!.0.location)
        }
        var retry = WorkflowStep.Retry()
        if let retryNode = fields["retry"]?.0, let spec = self.fields(retryNode, "\(path).retry", allowed: ["max_attempts", "backoff", "initial", "max"]) {
            if let attempts = spec["max_attempts"]?.0 {
                if case .int(let count) = attempts.value, (1 ... 100).contains(count) { retry.maxAttempts = Int(count) } else {
                    self.problem("\(path).retry.max_attempts", "must be an integer from 1 to 100", at: attempts.location)
                }
            }
            if let backoff = spec["backoff"]?.0 {
                let text = self.string(backoff, "\(path).retry.backoff") ?? ""
                if let known = WorkflowStep.Retry.Backoff(rawValue: text) { retry.backoff = known } else {
                    self.problem("\(path).retry.backoff", "must be exponential or fixed", at: backoff.location)
                }
            }
            if let initial = self.duration(spec["initial"]?.0, "\(path).retry.initial") { retry.initial = initial }
            if let maximum = self.duration(spec["max"]?.0, "\(path).retry.max") { retry.maximum = maximum }
            if retry.initial > retry.maximum {
                self.problem("\(path).retry", "initial (\(retry.initial)) is longer than max (\(retry.maximum))", at: retryNode.location)
            }
        }
        let timeout = self.duration(fields["timeout"]?.0, "\(path).timeout")
        var onError = WorkflowStep.OnError.fail
        if let node = fields["on_error"]?.0 {
            let text = self.string(node, "\(path).on_error") ?? ""
            if let known = WorkflowStep.OnError(rawValue: text) { onError = known } else {
                self.problem("\(path).on_error", "must be fail or continue", at: node.location)
            }
        }
        guard let id, let kind else { return nil }
        return WorkflowStep(id: id, kind: kind, needs: needs, when: when, with: with, retry: retry, timeout: timeout, onError: onError)
    }

    mutating func approval(_ node: SourceNode, _ path: String) -> WorkflowStep.Approval? {
        if node.value == .null || node.value == .bool(true) { return WorkflowStep.Approval() }
        guard let fields = self.fields(node, path, allowed: ["approvers", "message", "timeout", "exclude_starter"]) else { return nil }
        var excludeStarter = false
        if let flag = fields["exclude_starter"]?.0 {
            if case .bool(let value) = flag.value { excludeStarter = value } else {
                self.problem("\(path).exclude_starter", "must be true or false", at: flag.location)
            }
        }
        return WorkflowStep.Approval(
            approvers: self.stringList(fields["approvers"]?.0, "\(path).approvers"),
            message: self.string(fields["message"]?.0, "\(path).message") ?? "",
            timeout: self.duration(fields["timeout"]?.0, "\(path).timeout"),
            excludeStarter: excludeStarter
        )
    }

    static func closest(_ name: String, _ known: [String]) -> String? {
        NameSuggestion.closest(to: name, in: known)
    }
}
