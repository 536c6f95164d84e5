public import SparkExpr

/// A workflow as its author wrote it (YAML or JSON, DESIGN §7): typed inputs, a DAG of agent, tool
/// and approval steps, and outputs. Read with ``WorkflowDefinition/read(_:)``, which reports every
/// problem with its line, column and field.
///
/// ```yaml
/// name: research-brief
/// inputs: { topic: { type: string, required: true } }
/// steps:
///   - id: search
///     tool: web-search
///     with: { query: "${{ inputs.topic }}" }
///   - id: draft
///     agent: writer
///     needs: [search]
///     retry: { max_attempts: 3, backoff: exponential, initial: 2s, max: 1m }
///     timeout: 2m
/// outputs: { brief: "${{ steps.draft.output.text }}" }
/// ```
public struct WorkflowDefinition: Sendable, Hashable {
    public var name: String
    public var description: String
    public var inputs: [WorkflowInput]
    public var steps: [WorkflowStep]
    /// Output name → template (`${{ … }}` text), in the order written.
    public var outputs: [(name: String, template: String)]
    /// `timeout`: the longest a run may take from its creation; past it, the run ends `timed_out`.
    public var timeout: WorkflowDuration?
    /// `estimated_cost` (USD), in micro-dollars: what a run is expected to spend at most, held on
    /// the project's budgets from its creation to its end.
    public var estimatedCostMicros: Int64?

    public init(
        name: String, description: String = "", inputs: [WorkflowInput] = [], steps: [WorkflowStep] = [], outputs: [(name: String, template: String)] = [],
        timeout: WorkflowDuration? = nil, estimatedCostMicros: Int64? = nil
    ) {
        self.name = name
        self.description = description
        self.inputs = inputs
        self.steps = steps
        self.outputs = outputs
        self.timeout = timeout
        self.estimatedCostMicros = estimatedCostMicros
    }

    public static func == (lhs: WorkflowDefinition, rhs: WorkflowDefinition) -> Bool {
        lhs.canonicalJSON == rhs.canonicalJSON
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(self.canonicalJSON)
    }

    /// The step with this id.
    public func step(_ id: String) -> WorkflowStep? {
        self.steps.first { $0.id == id }
    }
}

/// A declared input.
public struct WorkflowInput: Sendable, Hashable {
    public enum ValueType: String, Sendable, Hashable, CaseIterable {
        case string, integer, number, boolean, object, array, any

        /// What expressions may assume of the value.
        var schema: ExprSchema {
            switch self {
            case .string: return .string
            case .integer: return .int
            case .number: return .any  // an int or a double
            case .boolean: return .bool
            case .object: return .map(.any)
            case .array: return .list(.any)
            case .any: return .any
            }
        }

        /// Whether `value` is of this type.
        public func admits(_ value: ExprValue) -> Bool {
            switch (self, value) {
            case (.any, _), (.string, .string), (.integer, .int), (.number, .int), (.number, .double), (.number, .number), (.boolean, .bool),
                (.object, .map), (.array, .list):
                return true
            case (.integer, .number(let text)):
                // An integer beyond 64 bits is still an integer, kept as written.
                return ExprNumber.isIntegral(text)
            default:
                return false
            }
        }
    }

    public var name: String
    public var type: ValueType
    public var required: Bool
    public var defaultValue: ExprValue?
    public var description: String

    public init(name: String, type: ValueType, required: Bool = false, defaultValue: ExprValue? = nil, description: String = "") {
        self.name = name
        self.type = type
        self.required = required
        self.defaultValue = defaultValue
        self.description = description
    }
}

/// One node of the DAG.
public struct WorkflowStep: Sendable, Hashable {
    public enum Kind: Sendable, Hashable {
        /// A tool of the project, by name.
        case tool(String)
        /// An agent of the project, by name.
        case agent(String)
        /// A human decision.
        case approval(Approval)
    }

    public struct Approval: Sendable, Hashable {
        /// Roles or user ids who may decide; empty means anyone with `approval.decide`.
        public var approvers: [String]
        public var message: String
        /// Past this the step is rejected (the safe default); nil waits as long as the run may.
        public var timeout: WorkflowDuration?
        /// Separation of duties: the person who started the run (as a user, or through an API
        /// key they created) may not decide (`exclude_starter: true`); false by default.
        public var excludeStarter: Bool

        public init(approvers: [String] = [], message: String = "", timeout: WorkflowDuration? = nil, excludeStarter: Bool = false) {
            self.approvers = approvers
            self.message = message
            self.timeout = timeout
            self.excludeStarter = excludeStarter
        }
    }

    public enum OnError: String, Sendable, Hashable {
        /// The run fails (after retries).
        case fail
        /// The step is marked failed and its dependents still run.
        case `continue`
    }

    public struct Retry: Sendable, Hashable {
        public enum Backoff: String, Sendable, Hashable {
            case exponential, fixed
        }

        public var maxAttempts: Int
        public var backoff: Backoff
        public var initial: WorkflowDuration
        public var maximum: WorkflowDuration

        public init(maxAttempts: Int = 1, backoff: Backoff = .exponential, initial: WorkflowDuration = .seconds(1), maximum: WorkflowDuration = .seconds(60)) {
            self.maxAttempts = maxAttempts
            self.backoff = backoff
            self.initial = initial
            self.maximum = maximum
        }
    }

    public var id: String
    public var kind: Kind
    public var needs: [String]
    /// An expression; the step is skipped when it is false.
    public var when: String?
    /// Arguments: JSON whose strings may hold `${{ … }}` templates.
    public var with: ExprValue
    public var retry: Retry
    public var timeout: WorkflowDuration?
    public var onError: OnError

    public init(
        id: String,
        kind: Kind,
        needs: [String] = [],
        when: String? = nil,
        with: ExprValue = .map([:]),
        retry: Retry = Retry(),
        timeout: WorkflowDuration? = nil,
        onError: OnError = .fail
    ) {
        self.id = id
        self.kind = kind
        self.needs = needs
        self.when = when
        self.with = with
        self.retry = retry
        self.timeout = timeout
        self.onError = onError
    }
}

/// A duration as workflows write it: `500ms`, `2s`, `1m`, `1h30m`.
public struct WorkflowDuration: Sendable, Hashable, Comparable, CustomStringConvertible {
    public var milliseconds: Int64

    public init(milliseconds: Int64) {
        self.milliseconds = milliseconds
    }

    public static func seconds(_ seconds: Int64) -> WorkflowDuration { WorkflowDuration(milliseconds: seconds * 1000) }

    /// At most 30 days.
    public static let maximum = WorkflowDuration(milliseconds: 30 * 86_400_000)

    public static func < (lhs: WorkflowDuration, rhs: WorkflowDuration) -> Bool { lhs.milliseconds < rhs.milliseconds }

    /// Parses `1h30m`, `2s`, `250ms`; nil for anything else (no unit, a unit twice, zero parts).
    public init?(parsing text: String) {
        let units: [(String, Int64)] = [("ms", 1), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("d", 86_400_000)]
        var rest = Substring(text.trimmingCharacters())
        var total: Int64 = 0
        var seen: Set<String> = []
        guard !rest.isEmpty else { return nil }
        while !rest.isEmpty {
            let digits = rest.prefix { ("0"..."9").contains($0) }
            guard !digits.isEmpty, digits.count <= 9, let amount = Int64(digits) else { return nil }
            rest = rest.dropFirst(digits.count)
            guard let (unit, scale) = units.first(where: { rest.hasPrefix($0.0) }), seen.insert(unit).inserted else { return nil }
            rest = rest.dropFirst(unit.count)
            total += amount * scale
        }
        guard total > 0 else { return nil }
        self.milliseconds = total
    }

    /// The shortest text that parses back: `1h30m`, `2s`, `250ms`.
    public var description: String {
        var rest = self.milliseconds
        var out = ""
        for (unit, scale) in [("d", Int64(86_400_000)), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)] where rest >= scale {
            out += "\(rest / scale)\(unit)"
            rest %= scale
        }
        return out.isEmpty ? "0ms" : out
    }
}

extension String {
    func trimmingCharacters() -> String {
        var slice = self[...]
        while let first = slice.first, first.isWhitespace { slice = slice.dropFirst() }
        while let last = slice.last, last.isWhitespace { slice = slice.dropLast() }
        return String(slice)
    }
}

extension WorkflowDefinition {
    /// The ids of the steps that need `step`, directly or through others, and `step` itself.
    public func downstream(of step: String) -> Set<String> {
        var found: Set<String> = [step]
        var moved = true
        while moved {
            moved = false
            for candidate in self.steps where !found.contains(candidate.id) && candidate.needs.contains(where: found.contains) {
                found.insert(candidate.id)
                moved = true
            }
        }
        return found
    }
}
