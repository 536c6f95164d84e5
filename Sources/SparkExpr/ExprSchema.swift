/// What an expression may refer to, declared when it is written: the names at its root and,
/// for the ones whose shape is known, their fields and types. ``Expr/check(against:)`` refuses
/// a name the schema does not have (`steps.serch.output`) and operands of the wrong type, at
/// write time, with the line and column.
///
/// ```swift
/// let schema = ExprSchema.object([
///     "inputs": .object(["topic": .string]),
///     "steps": .object(["search": .object(["output": .any])]),
/// ])
/// let problems = try Expr.parse("steps.serch.output").check(against: schema)
/// // 1:6: unknown name "serch" in steps; known: search
/// ```
public indirect enum ExprSchema: Sendable, Hashable {
    /// Anything: no checks below this point (a step's output, free-form JSON).
    case any
    case null
    case bool
    case int
    case double
    case string
    case list(ExprSchema)
    /// A map with any string keys, each value of the given type.
    case map(ExprSchema)
    /// Exactly these fields: another name is refused.
    case object([String: ExprSchema])

    var typeName: String {
        switch self {
        case .any: return "any"
        case .null: return "null"
        case .bool: return "bool"
        case .int: return "int"
        case .double: return "double"
        case .string: return "string"
        case .list: return "list"
        case .map, .object: return "map"
        }
    }

    var isNumber: Bool { self == .int || self == .double }
}

extension Expr {
    /// Every problem with the expression against `schema` (the root is an `.object` of names), in
    /// source order; empty when it may be evaluated over data of that shape.
    public func check(against schema: ExprSchema) -> [ExprError] {
        var checker = ExprChecker()
        _ = checker.type(of: self, in: schema)
        return checker.problems
    }

    /// Every problem against `schema`, and one more when the expression's type is known and is
    /// not `expected` (a condition that is an int, say).
    public func check(against schema: ExprSchema, expecting expected: ExprSchema) -> [ExprError] {
        var checker = ExprChecker()
        let type = checker.type(of: self, in: schema)
        if checker.problems.isEmpty, type != .any, type != expected {
            checker.fail(.type, "must be a \(expected.typeName), not a \(type.typeName)", at: self.location)
        }
        return checker.problems
    }
}

struct ExprChecker {
    var problems: [ExprError] = []

    mutating func type(of expr: Expr, in root: ExprSchema) -> ExprSchema {
        let at = expr.location
        switch expr.kind {
        case .literal(let value):
            return Self.schema(of: value)
        case .identifier(let name):
            return self.field(name, of: root, path: nil, at: at)
        case .member(let target, let name):
            let base = self.type(of: target, in: root)
            return self.field(name, of: base, path: ExprPrinter.print(target), at: at)
        case .index(let target, let index):
            let base = self.type(of: target, in: root)
            let key = self.type(of: index, in: root)
            switch base {
            case .list(let element):
                if key != .any && key != .int { self.fail(.type, "a list index is an int, not a \(key.typeName)", at: index.location) }
                return element
            case .map(let value):
                if key != .any && key != .string { self.fail(.type, "a map key is a string, not a \(key.typeName)", at: index.location) }
                return value
            case .object(let fields):
                if case .literal(.string(let name)) = index.kind { return self.field(name, of: base, path: ExprPrinter.print(target), at: index.location) }
                if key != .any && key != .string { self.fail(.type, "a map key is a string, not a \(key.typeName)", at: index.location) }
                return fields.count == 1 ? fields.first!.value : .any
            case .any: return .any
            default:
                self.fail(.type, "cannot index a \(base.typeName)", at: at)
                return .any
            }
        case .list(let elements):
            let types = elements.map { self.type(of: $0, in: root) }
            return .list(Set(types).count == 1 ? types[0] : .any)
        case .conditional(let condition, let then, let otherwise):
            self.expect(.bool, self.type(of: condition, in: root), "the condition of ?:", at: at)
            let a = self.type(of: then, in: root)
            let b = self.type(of: otherwise, in: root)
            return a == b ? a : .any
        case .unary(let op, let operand):
            let type = self.type(of: operand, in: root)
            switch op {
            case .not:
                self.expect(.bool, type, "!", at: at)
                return .bool
            case .negate:
                if type != .any && !type.isNumber { self.fail(.type, "- does not apply to a \(type.typeName)", at: at) }
                return type.isNumber ? type : .any
            }
        case .binary(let op, let left, let right):
            let a = self.type(of: left, in: root)
            let b = self.type(of: right, in: root)
            return self.binary(op, a, b, at: at)
        case .call(let target, let function, let arguments):
            var types: [ExprSchema] = []
            if let target { types.append(self.type(of: target, in: root)) }
            for argument in arguments { types.append(self.type(of: argument, in: root)) }
            return self.call(function, types, at: at)
        }
    }

    mutating func field(_ name: String, of base: ExprSchema, path: String?, at: SourceLocation) -> ExprSchema {
        switch base {
        case .any: return .any
        case .map(let value): return value
        case .object(let fields):
            if let field = fields[name] { return field }
            let known = fields.keys.sorted()
            var message = path.map { "unknown name \(name.debugDescription) in \($0)" } ?? "unknown name \(name.debugDescription)"
            if let suggestion = NameSuggestion.closest(to: name, in: known) {
                message += "; did you mean \(suggestion.debugDescription)?"
            } else if !known.isEmpty {
                message += "; known: \(known.prefix(20).joined(separator: ", "))"
            }
            self.fail(.unknownName, message, at: at)
            return .any
        default:
            self.fail(.type, "cannot read .\(name) of a \(base.typeName)", at: at)
            return .any
        }
    }

    mutating func binary(_ op: BinaryOperator, _ a: ExprSchema, _ b: ExprSchema, at: SourceLocation) -> ExprSchema {
        let known = a != .any && b != .any
        switch op {
        case .and, .or:
            self.expect(.bool, a, op.rawValue, at: at)
            self.expect(.bool, b, op.rawValue, at: at)
            return .bool
        case .equal, .notEqual:
            if known, a != .null, b != .null, !(a.isNumber && b.isNumber), a.typeName != b.typeName {
                self.fail(.type, "\(op.rawValue) compares a \(a.typeName) and a \(b.typeName), which are never equal", at: at)
            }
            return .bool
        case .less, .lessOrEqual, .greater, .greaterOrEqual:
            if known && !((a.isNumber && b.isNumber) || (a == .string && b == .string)) {
                self.fail(.type, "\(op.rawValue) does not compare a \(a.typeName) and a \(b.typeName)", at: at)
            }
            return .bool
        case .in:
            switch b {
            case .any, .list: break
            case .map, .object: if a != .any && a != .string { self.fail(.type, "a map's keys are strings, not a \(a.typeName)", at: at) }
            default: self.fail(.type, "in needs a list or a map on its right, not a \(b.typeName)", at: at)
            }
            return .bool
        case .add:
            if !known { return .any }
            if a == .int && b == .int { return .int }
            if a.isNumber && b.isNumber { return .double }
            if a == .string && b == .string { return .string }
            if case .list(let x) = a, case .list(let y) = b { return .list(x == y ? x : .any) }
            self.fail(.type, "+ does not apply to a \(a.typeName) and a \(b.typeName)", at: at)
            return .any
        case .subtract, .multiply, .divide, .remainder:
            for side in [a, b] where side != .any && !side.isNumber {
                self.fail(.type, "\(op.rawValue) does not apply to a \(side.typeName)", at: at)
                return .any
            }
            if op == .remainder && (a == .double || b == .double) {
                self.fail(.type, "% takes ints", at: at)
            }
            if !known { return .any }
            return a == .int && b == .int ? .int : .double
        }
    }

    mutating func call(_ function: ExprFunction, _ types: [ExprSchema], at: SourceLocation) -> ExprSchema {
        let subject = types[0]
        func require(_ allowed: [String], _ type: ExprSchema) {
            guard type != .any, !allowed.contains(type.typeName) else { return }
            self.fail(.type, "\(function.rawValue)() does not apply to a \(type.typeName)", at: at)
        }
        switch function {
        case .size:
            require(["string", "list", "map"], subject)
            return .int
        case .startsWith, .endsWith, .matches:
            require(["string"], subject)
            require(["string"], types[1])
            return .bool
        case .contains:
            require(["string", "list"], subject)
            if subject == .string { require(["string"], types[1]) }
            return .bool
        case .lower, .upper:
            require(["string"], subject)
            return .string
        case .string:
            return .string
        case .int, .double:
            require(["int", "double", "string"], subject)
            return function == .int ? .int : .double
        }
    }

    mutating func expect(_ wanted: ExprSchema, _ got: ExprSchema, _ what: String, at: SourceLocation) {
        guard got != .any, got != wanted else { return }
        self.fail(.type, "\(what) takes a \(wanted.typeName), not a \(got.typeName)", at: at)
    }

    mutating func fail(_ code: ExprError.Code, _ message: String, at: SourceLocation) {
        self.problems.append(ExprError(code, message, at: at))
    }

    static func schema(of value: ExprValue) -> ExprSchema {
        switch value {
        case .null: return .null
        case .bool: return .bool
        case .int: return .int
        case .double: return .double
        case .number(let text): return ExprNumber.isIntegral(text) ? .int : .double
        case .string: return .string
        case .list(let elements):
            let types = Set(elements.map(Self.schema(of:)))
            return .list(types.count == 1 ? types.first! : .any)
        case .map: return .map(.any)
        }
    }
}

/// "Did you mean …?": the known name nearest to a mistyped one.
public enum NameSuggestion {
    /// The name in `known` nearest to `name` by edit distance, if it is near enough to be a typo
    /// (at most a third of its letters, and at least one, differ).
    public static func closest(to name: String, in known: [String]) -> String? {
        let scored = known.map { ($0, Self.distance(Array(name), Array($0))) }
        guard let best = scored.min(by: { $0.1 < $1.1 }), best.1 <= max(1, name.count / 3) else { return nil }
        return best.0
    }

    /// Levenshtein distance.
    static func distance(_ a: [Character], _ b: [Character]) -> Int {
        guard !a.isEmpty else { return b.count }
        guard !b.isEmpty else { return a.count }
        var previous = Array(0 ... b.count)
        for (i, x) in a.enumerated() {
            var row = [i + 1]
            for (j, y) in b.enumerated() {
                row.append(min(previous[j + 1] + 1, row[j] + 1, previous[j] + (x == y ? 0 : 1)))
            }
            previous = row
        }
        return previous[b.count]
    }
}
