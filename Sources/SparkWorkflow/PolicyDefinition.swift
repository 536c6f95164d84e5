public import SparkExpr

/// A policy, as written in YAML or JSON (docs/policies.md): ordered rules that decide allow,
/// deny or require_approval at the points where SparkOps asks.
///
/// ```yaml
/// policy: payments
/// default: allow
/// points: [tool.invoke]
/// rules:
///   - name: large-payment
///     effect: require_approval
///     when: tool.name == "pay" && tool.arguments.amount > 100
///     message: Payments above 100 need an approver.
/// ```
public struct PolicyDefinition: Sendable, Hashable {
    /// What a rule or a policy decides, ordered by strength: deny wins over require_approval,
    /// which wins over allow.
    public enum Effect: String, Sendable, Hashable, CaseIterable, Comparable {
        case allow
        case requireApproval = "require_approval"
        case deny

        var strength: Int {
            switch self {
            case .allow: return 0
            case .requireApproval: return 1
            case .deny: return 2
            }
        }

        public static func < (lhs: Effect, rhs: Effect) -> Bool { lhs.strength < rhs.strength }
    }

    /// Where SparkOps asks for a decision.
    public enum Point: String, Sendable, Hashable, CaseIterable {
        case runCreate = "run.create"
        case stepStart = "step.start"
        case toolInvoke = "tool.invoke"
        case llmCall = "llm.call"
    }

    public struct Rule: Sendable, Hashable {
        public var name: String
        public var effect: Effect
        /// The condition as written; empty matches always.
        public var when: String
        /// The condition, parsed; nil matches always.
        public var condition: Expr?
        public var message: String
        /// Empty: every point of the policy.
        public var points: [Point]
        /// A require_approval rule's hold needs an approver other than the run's starter.
        public var excludeStarter = false
    }

    public var name: String
    public var description: String = ""
    public var defaultEffect: Effect = .allow
    /// Empty: every point.
    public var points: [Point] = []
    public var rules: [Rule] = []

    public init(name: String) {
        self.name = name
    }

    /// Whether the policy applies at `point`.
    public func applies(at point: Point) -> Bool {
        self.points.isEmpty || self.points.contains(point)
    }

    /// Rules in one policy, at most; a longer policy is refused when it is written.
    public static let maxRules = 1000

    /// Reads a policy from YAML or JSON; every problem with its line, column and field, the
    /// rules' conditions checked against ``PolicyContextSchema/schema`` (syntax, unknown names,
    /// operands of the wrong type, a condition that is not a bool).
    public static func read(_ source: String, limits: WorkflowLimits = .policy) throws(WorkflowValidationError) -> PolicyDefinition {
        var tree = SourceTreeReader(limits: limits)
        guard let root = tree.read(source) else { throw WorkflowValidationError(problems: tree.problems) }
        var reader = WorkflowReader(limits: limits)
        reader.problems = tree.problems
        let definition = reader.policy(root)
        guard reader.problems.isEmpty, let definition else { throw WorkflowValidationError(problems: reader.problems) }
        return definition
    }

    // MARK: Canonical form

    public var canonicalValue: ExprValue {
        .map([
            "policy": .string(self.name),
            "description": .string(self.description),
            "default": .string(self.defaultEffect.rawValue),
            "points": .list(self.points.map { .string($0.rawValue) }),
            "rules": .list(self.rules.map { rule in
                .map([
                    "name": .string(rule.name),
                    "effect": .string(rule.effect.rawValue),
                    "when": .string(rule.when),
                    "message": .string(rule.message),
                    "points": .list(rule.points.map { .string($0.rawValue) }),
                ].merging(rule.excludeStarter ? ["exclude_starter": .bool(true)] : [:]) { first, _ in first })
            }),
        ])
    }

    /// Compact JSON of the canonical value, numbers as written: what is stored and shown.
    public var canonicalJSON: String { self.canonicalValue.jsonText }

    /// Over the value's stable text (``ExprValue/stableJSONText``), which has not changed since
    /// the first version: a definition keeps its hash.
    public var contentHash: String { ContentHash.of(self.canonicalValue.stableJSONText) }
}

extension WorkflowLimits {
    /// Policies may be long (a thousand rules): larger source and tree than a workflow.
    public static let policy = WorkflowLimits(maxSourceBytes: 2 * 1024 * 1024, maxNodes: 200_000, maxDepth: 32, maxSteps: 500)
}

/// The names a rule's condition can read, and their types (docs/policies.md).
public enum PolicyContextSchema {
    public static let schema: ExprSchema = .object([
        "point": .string,
        "principal": .object(["id": .string, "kind": .string, "role": .string, "user_id": .string]),
        "project": .object(["id": .string]),
        "workflow": .object(["id": .string, "name": .string, "version": .int]),
        "run": .object(["id": .string]),
        "step": .object(["id": .string, "kind": .string, "attempt": .int]),
        "agent": .object(["name": .string]),
        "tool": .object([
            "name": .string, "kind": .string, "host": .string, "side_effects": .string, "cost_micros": .int, "arguments": .any,
        ]),
        "model": .object(["provider": .string, "name": .string, "input_tokens": .int, "max_tokens": .int]),
        "cost": .object(["estimated_micros": .int]),
        "budget": .object([
            "id": .string, "limit_micros": .int, "spent_micros": .int, "reserved_micros": .int, "remaining_micros": .int,
            "percent_used": .double,
        ]),
        "time": .object(["hour": .int, "minute": .int, "weekday": .string, "weekday_number": .int, "date": .string, "zone": .string]),
        "labels": .map(.string),
    ])

    /// The names a condition reads, as `root.field` (`principal.role`), or as the bare root when it
    /// reads the whole of it (`principal["role"]`, `size(budget)`), to fetch only what a rule needs.
    public static func roots(of expr: Expr) -> Set<String> {
        var found: Set<String> = []
        func walk(_ expr: Expr) {
            switch expr.kind {
            case .literal: break
            case .identifier(let name): found.insert(name)
            case .member(let target, let name):
                // `principal.kind` reads principal.kind, not the whole of principal.
                if case .identifier(let root) = target.kind { found.insert("\(root).\(name)") } else { walk(target) }
            case .index(let target, let index):
                walk(target)
                walk(index)
            case .list(let items): items.forEach(walk)
            case .conditional(let a, let b, let c):
                walk(a)
                walk(b)
                walk(c)
            case .unary(_, let operand): walk(operand)
            case .binary(_, let a, let b):
                walk(a)
                walk(b)
            case .call(let target, _, let arguments):
                if let target { walk(target) }
                arguments.forEach(walk)
            }
        }
        walk(expr)
        return found
    }
}

extension WorkflowReader {
    static let policyFields = ["policy", "description", "default", "points", "rules"]
    static let ruleFields = ["name", "effect", "when", "message", "points", "exclude_starter"]

    mutating func effect(_ node: SourceNode?, _ field: String, required: Bool) -> PolicyDefinition.Effect? {
        guard let node else {
            if required { self.problem(field, "is required: allow, deny or require_approval", at: .start) }
            return nil
        }
        guard let text = self.string(node, field) else { return nil }
        guard let effect = PolicyDefinition.Effect(rawValue: text) else {
            self.problem(field, "\(text.debugDescription) is not an effect; write allow, deny or require_approval", at: node.location)
            return nil
        }
        return effect
    }

    mutating func points(_ node: SourceNode?, _ field: String) -> [PolicyDefinition.Point] {
        var points: [PolicyDefinition.Point] = []
        for (index, name) in self.stringList(node, field).enumerated() {
            let path = "\(field)[\(index)]"
            guard let point = PolicyDefinition.Point(rawValue: name) else {
                let known = PolicyDefinition.Point.allCases.map(\.rawValue)
                let hint = Self.closest(name, known).map { "; did you mean \($0.debugDescription)?" } ?? "; known: \(known.joined(separator: ", "))"
                self.problem(path, "\(name.debugDescription) is not a point\(hint)", at: self.locations[path] ?? node?.location ?? .start)
                continue
            }
            if !points.contains(point) { points.append(point) }
        }
        return points
    }

    mutating func policy(_ root: SourceNode) -> PolicyDefinition? {
        guard let top = self.fields(root, "", allowed: Self.policyFields) else { return nil }
        let name = self.name(top["policy"]?.0, "policy", pattern: Self.isResourceName, rule: "1–100 letters, digits, _ . -, starting with a letter or digit", at: root.location)
        var policy = PolicyDefinition(name: name ?? "")
        if let taken = name, ["apply", "validate", "test"].contains(taken) || taken.hasPrefix("pol_") {
            self.problem("policy", "\(taken.debugDescription) is reserved; choose another name", at: top["policy"]?.0.location ?? root.location)
        }
        policy.description = self.string(top["description"]?.0, "description") ?? ""
        policy.defaultEffect = self.effect(top["default"]?.0, "default", required: false) ?? .allow
        policy.points = self.points(top["points"]?.0, "points")
        guard let rulesNode = top["rules"]?.0, rulesNode.value != .null else {
            self.problem("rules", "is required: a policy has at least one rule", at: root.location)
            return nil
        }
        guard case .sequence(let items, _) = rulesNode else {
            self.problem("rules", "must be a list of rules, not \(rulesNode.kindName)", at: rulesNode.location)
            return nil
        }
        guard !items.isEmpty else {
            self.problem("rules", "is empty: a policy has at least one rule", at: rulesNode.location)
            return nil
        }
        guard items.count <= PolicyDefinition.maxRules else {
            self.problem("rules", "has \(items.count) rules; a policy has at most \(PolicyDefinition.maxRules) (split it into several policies)", at: rulesNode.location)
            return nil
        }
        var names: Set<String> = []
        for (index, item) in items.enumerated() {
            let path = "rules[\(index)]"
            guard let fields = self.fields(item, path, allowed: Self.ruleFields) else { continue }
            let ruleName = self.name(fields["name"]?.0, "\(path).name", pattern: Self.isResourceName, rule: "1–100 letters, digits, _ . -, starting with a letter or digit", at: item.location)
            if let ruleName, !names.insert(ruleName).inserted {
                self.problem("\(path).name", "another rule is named \(ruleName.debugDescription)", at: fields["name"]?.0.location ?? item.location)
            }
            let effect = self.effect(fields["effect"]?.0, "\(path).effect", required: false)
            if fields["effect"] == nil { self.problem("\(path).effect", "is required: allow, deny or require_approval", at: item.location) }
            var when = ""
            var condition: Expr?
            if let node = fields["when"]?.0 {
                switch node.value {
                case .bool(let flag): when = flag ? "true" : "false"
                case .string(let text): when = text
                default: self.problem("\(path).when", "must be an expression", at: node.location)
                }
                if !when.isEmpty { condition = self.condition(when, field: "\(path).when", at: node.location) }
            }
            let message = self.string(fields["message"]?.0, "\(path).message") ?? ""
            if message.utf8.count > 1024 { self.problem("\(path).message", "is longer than 1024 bytes", at: fields["message"]?.0.location ?? item.location) }
            let points = self.points(fields["points"]?.0, "\(path).points")
            for point in points where !policy.applies(at: point) {
                self.problem("\(path).points", "\(point.rawValue) is not among the policy's points", at: fields["points"]?.0.location ?? item.location)
            }
            var excludeStarter = false
            if let flag = fields["exclude_starter"]?.0 {
                if case .bool(let value) = flag.value { excludeStarter = value } else { self.problem("\(path).exclude_starter", "must be true or false", at: flag.location) }
                if excludeStarter, let effect, effect != .requireApproval {
                    self.problem("\(path).exclude_starter", "applies to a require_approval rule only", at: flag.location)
                }
            }
            guard let ruleName, let effect else { continue }
            var rule = PolicyDefinition.Rule(name: ruleName, effect: effect, when: when, condition: condition, message: message, points: points)
            rule.excludeStarter = excludeStarter
            policy.rules.append(rule)
        }
        guard name != nil else { return nil }
        return policy
    }

    /// A rule's condition, with or without `${{ }}`, checked against the policy context: nil with
    /// its problems when it is not a bool over known names.
    mutating func condition(_ source: String, field: String, at base: SourceLocation) -> Expr? {
        let limits = ExprLimits(maxSourceLength: 4096, maxDepth: 32, maxSteps: 2_000)
        guard let expr = self.parseCondition(source, field: field, at: base, limits: limits) else { return nil }
        let problems = expr.check(against: PolicyContextSchema.schema, expecting: .bool)
        for problem in problems { self.problem(field, problem.message, at: problem.location) }
        return problems.isEmpty ? expr : nil
    }
}
