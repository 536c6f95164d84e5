/// A parsed expression: a tree of nodes, each remembering where in the source it was read.
///
/// Equality and hashing are structural: two expressions are equal when their trees are, wherever
/// their nodes were read (so `parse(print(e)) == e`).
///
/// ```swift
/// let expr = try Expr.parse("steps.draft.output.words > 200 && inputs.topic.startsWith(\"ai\")")
/// let value = try expr.evaluate(in: ["steps": …, "inputs": …])
/// ```
public struct Expr: Sendable, Hashable, CustomStringConvertible {
    public indirect enum Kind: Sendable, Hashable {
        case literal(ExprValue)
        /// A name at the root: `inputs`, `steps`, `principal`.
        case identifier(String)
        /// `target.name`
        case member(Expr, String)
        /// `target[index]`
        case index(Expr, Expr)
        /// `name(arguments)`, or `target.name(arguments)` with a target.
        case call(target: Expr?, function: ExprFunction, arguments: [Expr])
        case unary(UnaryOperator, Expr)
        case binary(BinaryOperator, Expr, Expr)
        case list([Expr])
        /// `condition ? then : else`
        case conditional(Expr, Expr, Expr)
    }

    public var kind: Kind
    public var location: SourceLocation

    public init(_ kind: Kind, at location: SourceLocation = .start) {
        self.kind = kind
        self.location = location
    }

    public static func == (lhs: Expr, rhs: Expr) -> Bool { lhs.kind == rhs.kind }
    public func hash(into hasher: inout Hasher) { hasher.combine(self.kind) }

    /// The expression as source text that parses back to the same tree.
    public var description: String { ExprPrinter.print(self) }
}

public enum UnaryOperator: String, Sendable, Hashable, CaseIterable {
    case not = "!"
    case negate = "-"
}

public enum BinaryOperator: String, Sendable, Hashable, CaseIterable {
    case or = "||"
    case and = "&&"
    case equal = "=="
    case notEqual = "!="
    case less = "<"
    case lessOrEqual = "<="
    case greater = ">"
    case greaterOrEqual = ">="
    case `in` = "in"
    case add = "+"
    case subtract = "-"
    case multiply = "*"
    case divide = "/"
    case remainder = "%"

    /// Binding strength: higher binds tighter.
    var precedence: Int {
        switch self {
        case .or: return 1
        case .and: return 2
        case .equal, .notEqual, .less, .lessOrEqual, .greater, .greaterOrEqual, .in: return 3
        case .add, .subtract: return 4
        case .multiply, .divide, .remainder: return 5
        }
    }
}

/// The functions expressions may call: global (`size(x)`, `int(x)`) or on a value
/// (`x.startsWith("a")`, `x.size()`).
public enum ExprFunction: String, Sendable, Hashable, CaseIterable {
    case size, startsWith, endsWith, contains, matches, lower, upper, string, int, double

    /// Arguments besides the target, for the method form.
    var methodArity: Int {
        switch self {
        case .startsWith, .endsWith, .contains, .matches: return 1
        case .size, .lower, .upper, .string, .int, .double: return 0
        }
    }
}

/// Source text of an expression: the fewest parentheses that keep the tree, strings in double
/// quotes with escapes, doubles in their shortest exact form.
enum ExprPrinter {
    static let conditionalPrecedence = 0
    static let unaryPrecedence = 6
    static let postfixPrecedence = 7

    static func print(_ expr: Expr) -> String {
        var out = ""
        self.write(expr, into: &out)
        return out
    }

    static func precedence(_ expr: Expr) -> Int {
        switch expr.kind {
        case .conditional: return self.conditionalPrecedence
        case .binary(let op, _, _): return op.precedence
        case .unary: return self.unaryPrecedence
        case .literal(.int(let value)) where value < 0: return self.unaryPrecedence
        case .literal(.double(let value)) where value < 0 || (value == 0 && value.sign == .minus): return self.unaryPrecedence
        default: return self.postfixPrecedence
        }
    }

    static func write(_ expr: Expr, minimum: Int, into out: inout String) {
        if self.precedence(expr) < minimum {
            out += "("
            self.write(expr, into: &out)
            out += ")"
        } else {
            self.write(expr, into: &out)
        }
    }

    static func write(_ expr: Expr, into out: inout String) {
        switch expr.kind {
        case .literal(let value):
            self.writeLiteral(value, into: &out)
        case .identifier(let name):
            out += name
        case .member(let target, let name):
            self.write(target, minimum: self.postfixPrecedence, into: &out)
            out += "." + name
        case .index(let target, let index):
            self.write(target, minimum: self.postfixPrecedence, into: &out)
            out += "["
            self.write(index, into: &out)
            out += "]"
        case .call(let target, let function, let arguments):
            if let target {
                self.write(target, minimum: self.postfixPrecedence, into: &out)
                out += "."
            }
            out += function.rawValue + "("
            for (offset, argument) in arguments.enumerated() {
                if offset > 0 { out += ", " }
                self.write(argument, into: &out)
            }
            out += ")"
        case .unary(let op, let operand):
            out += op.rawValue
            // `-5` reads as the literal -5 and `--x` would not read at all: keep such operands apart.
            var needsParentheses = self.precedence(operand) < self.unaryPrecedence
            var operandText = ""
            self.write(operand, into: &operandText)
            if op == .negate, let first = operandText.unicodeScalars.first, first == "-" || ("0"..."9").contains(first) {
                needsParentheses = true
            }
            out += needsParentheses ? "(" + operandText + ")" : operandText
        case .binary(let op, let left, let right):
            // Left-associative; comparisons do not chain, so both their sides bind tighter.
            let isRelation = op.precedence == 3
            self.write(left, minimum: isRelation ? op.precedence + 1 : op.precedence, into: &out)
            out += " \(op.rawValue) "
            self.write(right, minimum: op.precedence + 1, into: &out)
        case .list(let elements):
            out += "["
            for (offset, element) in elements.enumerated() {
                if offset > 0 { out += ", " }
                self.write(element, into: &out)
            }
            out += "]"
        case .conditional(let condition, let then, let otherwise):
            self.write(condition, minimum: 1, into: &out)
            out += " ? "
            self.write(then, minimum: 1, into: &out)
            out += " : "
            self.write(otherwise, minimum: 0, into: &out)
        }
    }

    static func writeLiteral(_ value: ExprValue, into out: inout String) {
        switch value {
        case .null: out += "null"
        case .bool(let flag): out += flag ? "true" : "false"
        case .int(let number): out += String(number)
        case .double(let number):
            var text = "\(number)"
            if !text.contains(".") && !text.contains("e") && !text.contains("n") && !text.contains("i") { text += ".0" }
            out += text
        case .number(let text): out += text
        case .string(let text): out += self.quoted(text)
        case .list(let values):
            out += "["
            for (offset, element) in values.enumerated() {
                if offset > 0 { out += ", " }
                self.writeLiteral(element, into: &out)
            }
            out += "]"
        case .map(let values):
            // Maps have no literal form; they only come from the data.
            out += "<map of \(values.count)>"
        }
    }

    static func quoted(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\t": out += "\\t"
            case "\r": out += "\\r"
            default:
                if scalar.value < 0x20 || scalar.value == 0x7F {
                    let hex = String(scalar.value, radix: 16, uppercase: true)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out + "\""
    }
}
