/// A place in an expression's source: line and column from 1, counted in characters.
public struct SourceLocation: Sendable, Hashable, CustomStringConvertible {
    public var line: Int
    public var column: Int

    public init(line: Int, column: Int) {
        self.line = line
        self.column = column
    }

    public static let start = SourceLocation(line: 1, column: 1)

    public var description: String { "\(self.line):\(self.column)" }

    /// This location, read as relative to `base` (where the expression starts in a larger text,
    /// such as a template in a YAML file).
    public func offset(by base: SourceLocation) -> SourceLocation {
        self.line == 1
            ? SourceLocation(line: base.line, column: base.column + self.column - 1)
            : SourceLocation(line: base.line + self.line - 1, column: self.column)
    }
}

/// Why an expression was refused or could not be evaluated, and where.
///
/// `code` says which stage refused it; the message names what is at fault (the unknown name, the
/// types, the limit).
public struct ExprError: Error, Sendable, Hashable, CustomStringConvertible {
    public struct Code: Sendable, Hashable, CustomStringConvertible {
        public let name: String
        /// The text does not parse.
        public static let syntax = Code(name: "syntax")
        /// A name the schema does not declare (`steps.serch`).
        public static let unknownName = Code(name: "unknown_name")
        /// Operands or arguments of the wrong type.
        public static let type = Code(name: "type")
        /// Source length, nesting depth, evaluation steps or value size over its limit.
        public static let limit = Code(name: "limit")
        /// A failure while evaluating: a missing field, division by zero, an index out of range.
        public static let evaluation = Code(name: "evaluation")

        public var description: String { self.name }
    }

    public var code: Code
    public var message: String
    public var location: SourceLocation

    public init(_ code: Code, _ message: String, at location: SourceLocation) {
        self.code = code
        self.message = message
        self.location = location
    }

    /// `3:14: unknown name "serch" in steps; did you mean "search"?`
    public var description: String { "\(self.location): \(self.message)" }
}

/// The bounds every expression is held to, so that no input can make parsing or evaluation
/// run away. Each has its own error.
public struct ExprLimits: Sendable, Hashable {
    /// Characters of source.
    public var maxSourceLength: Int
    /// Nesting of operators, calls, brackets and parentheses.
    public var maxDepth: Int
    /// Nodes evaluated, in all.
    public var maxSteps: Int
    /// Characters of a string, or elements of a list, that evaluation may build.
    public var maxValueSize: Int
    /// Regular-expression work (pattern states × input characters) for `matches`.
    public var maxRegexWork: Int

    public init(maxSourceLength: Int = 4096, maxDepth: Int = 64, maxSteps: Int = 10_000, maxValueSize: Int = 1 << 20, maxRegexWork: Int = 2_000_000) {
        self.maxSourceLength = maxSourceLength
        self.maxDepth = maxDepth
        self.maxSteps = maxSteps
        self.maxValueSize = maxValueSize
        self.maxRegexWork = maxRegexWork
    }

    public static let `default` = ExprLimits()
}
