/// One thing wrong with a workflow definition, where it is, and which field.
public struct WorkflowProblem: Sendable, Hashable, CustomStringConvertible {
    public var line: Int
    public var column: Int
    /// The field at fault, as a path: `steps[2].needs[0]`, `outputs.brief`.
    public var field: String
    public var message: String

    public init(line: Int, column: Int, field: String, message: String) {
        self.line = line
        self.column = column
        self.field = field
        self.message = message
    }

    /// `12:9: steps[1].needs[0]: unknown step "serch"; did you mean "search"?`
    public var description: String { "\(self.line):\(self.column): \(self.field): \(self.message)" }
}

/// A definition that cannot be used, with every problem found, in source order.
public struct WorkflowValidationError: Error, Sendable, CustomStringConvertible {
    public var problems: [WorkflowProblem]

    public init(problems: [WorkflowProblem]) {
        self.problems = problems.sorted { ($0.line, $0.column, $0.field) < ($1.line, $1.column, $1.field) }
    }

    public var description: String { self.problems.map(\.description).joined(separator: "\n") }

    /// `N problems: line:column: field: message; …`, the first 20: the message of the
    /// INVALID_ARGUMENT a service answers on `source`.
    public var summary: String {
        let count = self.problems.count
        let listed = self.problems.prefix(20).map(\.description).joined(separator: "; ")
        return "\(count) problem\(count == 1 ? "" : "s"): \(listed)\(count > 20 ? "; …" : "")"
    }
}

/// Bounds on what a definition may be, so that a hostile file (a billion laughs of YAML aliases,
/// nesting a thousand deep) is refused before it costs anything.
public struct WorkflowLimits: Sendable, Hashable {
    /// Bytes of source.
    public var maxSourceBytes: Int
    /// Nodes of the YAML tree, counted with aliases expanded.
    public var maxNodes: Int
    /// Nesting of mappings and sequences.
    public var maxDepth: Int
    /// Steps in one workflow.
    public var maxSteps: Int

    public init(maxSourceBytes: Int = 512 * 1024, maxNodes: Int = 50_000, maxDepth: Int = 32, maxSteps: Int = 500) {
        self.maxSourceBytes = maxSourceBytes
        self.maxNodes = maxNodes
        self.maxDepth = maxDepth
        self.maxSteps = maxSteps
    }

    public static let `default` = WorkflowLimits()
}
