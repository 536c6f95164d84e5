extension Expr {
    /// Evaluates the expression over `environment` (the root names: `inputs`, `steps`, …).
    ///
    /// Errors carry the location of the node at fault: a missing field, a type mismatch, division
    /// by zero, an index out of range, or a limit (steps, value size, regular-expression work).
    public func evaluate(in environment: [String: ExprValue], limits: ExprLimits = .default) throws(ExprError) -> ExprValue {
        var evaluator = Evaluator(environment: environment, limits: limits)
        return try evaluator.evaluate(self)
    }
}

struct Evaluator {
    let environment: [String: ExprValue]
    let limits: ExprLimits
    var steps = 0

    init(environment: [String: ExprValue], limits: ExprLimits) {
        self.environment = environment
        self.limits = limits
    }

    mutating func evaluate(_ expr: Expr) throws(ExprError) -> ExprValue {
        self.steps += 1
        guard self.steps <= self.limits.maxSteps else {
            throw ExprError(.limit, "evaluation took more than \(self.limits.maxSteps) steps", at: expr.location)
        }
        let at = expr.location
        switch expr.kind {
        case .literal(let value):
            return value
        case .identifier(let name):
            guard let value = self.environment[name] else {
                throw ExprError(.evaluation, "unknown name \(name.debugDescription)", at: at)
            }
            return value
        case .member(let target, let name):
            let value = try self.evaluate(target)
            guard case .map(let fields) = value else {
                throw ExprError(.type, "cannot read .\(name) of a \(value.typeName)", at: at)
            }
            guard let field = fields[name] else {
                throw ExprError(.evaluation, "no field \(name.debugDescription) in \(ExprPrinter.print(target))", at: at)
            }
            return field
        case .index(let target, let indexExpr):
            let value = try self.evaluate(target)
            let index = try Self.arithmetic(try self.evaluate(indexExpr), at: at)
            switch (value, index) {
            case (.list(let elements), .int(let position)):
                guard position >= 0 && position < elements.count else {
                    throw ExprError(.evaluation, "index \(position) is out of range for a list of \(elements.count)", at: at)
                }
                return elements[Int(position)]
            case (.map(let fields), .string(let key)):
                guard let field = fields[key] else {
                    throw ExprError(.evaluation, "no key \(key.debugDescription) in \(ExprPrinter.print(target))", at: at)
                }
                return field
            default:
                throw ExprError(.type, "cannot index a \(value.typeName) with a \(index.typeName)", at: at)
            }
        case .list(let elements):
            var values: [ExprValue] = []
            values.reserveCapacity(elements.count)
            for element in elements { values.append(try self.evaluate(element)) }
            return .list(values)
        case .conditional(let condition, let then, let otherwise):
            let test = try self.evaluate(condition)
            guard case .bool(let flag) = test else {
                throw ExprError(.type, "the condition of ?: is a \(test.typeName), not a bool", at: at)
            }
            return try self.evaluate(flag ? then : otherwise)
        case .unary(let op, let operandExpr):
            let operand = try Self.arithmetic(try self.evaluate(operandExpr), at: at)
            switch (op, operand) {
            case (.not, .bool(let flag)): return .bool(!flag)
            case (.negate, .int(let value)):
                guard value != .min else { throw ExprError(.evaluation, "integer overflow", at: at) }
                return .int(-value)
            case (.negate, .double(let value)): return .double(-value)
            default:
                throw ExprError(.type, "\(op.rawValue) does not apply to a \(operand.typeName)", at: at)
            }
        case .binary(let op, let leftExpr, let rightExpr):
            return try self.binary(op, leftExpr, rightExpr, at: at)
        case .call(let target, let function, let arguments):
            var values: [ExprValue] = []
            if let target { values.append(try self.evaluate(target)) }
            for argument in arguments { values.append(try self.evaluate(argument)) }
            return try self.call(function, values, at: at)
        }
    }

    mutating func binary(_ op: BinaryOperator, _ leftExpr: Expr, _ rightExpr: Expr, at: SourceLocation) throws(ExprError) -> ExprValue {
        // && and || look at their right side only when they must.
        if op == .and || op == .or {
            let left = try self.evaluate(leftExpr)
            guard case .bool(let first) = left else {
                throw ExprError(.type, "\(op.rawValue) takes bools, not a \(left.typeName)", at: leftExpr.location)
            }
            if op == .and && !first { return .bool(false) }
            if op == .or && first { return .bool(true) }
            let right = try self.evaluate(rightExpr)
            guard case .bool(let second) = right else {
                throw ExprError(.type, "\(op.rawValue) takes bools, not a \(right.typeName)", at: rightExpr.location)
            }
            return .bool(second)
        }
        let left = try self.evaluate(leftExpr)
        let right = try self.evaluate(rightExpr)
        let mismatch = ExprError(.type, "\(op.rawValue) does not apply to a \(left.typeName) and a \(right.typeName)", at: at)
        switch op {
        case .equal: return .bool(left.equals(right))
        case .notEqual: return .bool(!left.equals(right))
        case .less, .lessOrEqual, .greater, .greaterOrEqual:
            let order: Int
            switch (left, right) {
            case (.int(let a), .int(let b)): order = a < b ? -1 : (a == b ? 0 : 1)
            case (.string(let a), .string(let b)): order = a < b ? -1 : (a == b ? 0 : 1)
            default:
                guard left.number != nil, right.number != nil else { throw mismatch }
                // Integers compare exactly at any size; NaN is neither below nor above anything.
                guard let compared = ExprNumber.compare(left, right) else { return .bool(false) }
                order = compared
            }
            switch op {
            case .less: return .bool(order < 0)
            case .lessOrEqual: return .bool(order <= 0)
            case .greater: return .bool(order > 0)
            default: return .bool(order >= 0)
            }
        case .in:
            switch right {
            case .list(let elements): return .bool(elements.contains { $0.equals(left) })
            case .map(let fields):
                guard case .string(let key) = left else { throw mismatch }
                return .bool(fields[key] != nil)
            default: throw mismatch
            }
        case .add:
            let left = try Self.arithmetic(left, at: at)
            let right = try Self.arithmetic(right, at: at)
            switch (left, right) {
            case (.int(let a), .int(let b)):
                let (sum, overflow) = a.addingReportingOverflow(b)
                guard !overflow else { throw ExprError(.evaluation, "integer overflow", at: at) }
                return .int(sum)
            case (.string(let a), .string(let b)):
                guard a.unicodeScalars.count + b.unicodeScalars.count <= self.limits.maxValueSize else {
                    throw ExprError(.limit, "a string longer than \(self.limits.maxValueSize) characters", at: at)
                }
                return .string(a + b)
            case (.list(let a), .list(let b)):
                guard a.count + b.count <= self.limits.maxValueSize else {
                    throw ExprError(.limit, "a list longer than \(self.limits.maxValueSize) elements", at: at)
                }
                return .list(a + b)
            default:
                guard let a = left.number, let b = right.number else { throw mismatch }
                return .double(a + b)
            }
        case .subtract, .multiply, .divide, .remainder:
            let left = try Self.arithmetic(left, at: at)
            let right = try Self.arithmetic(right, at: at)
            if case .int(let a) = left, case .int(let b) = right {
                let result: (Int64, Bool)
                switch op {
                case .subtract: result = a.subtractingReportingOverflow(b)
                case .multiply: result = a.multipliedReportingOverflow(by: b)
                case .divide:
                    guard b != 0 else { throw ExprError(.evaluation, "division by zero", at: at) }
                    result = a.dividedReportingOverflow(by: b)
                default:
                    guard b != 0 else { throw ExprError(.evaluation, "division by zero", at: at) }
                    result = a.remainderReportingOverflow(dividingBy: b)
                }
                guard !result.1 else { throw ExprError(.evaluation, "integer overflow", at: at) }
                return .int(result.0)
            }
            guard op != .remainder, let a = left.number, let b = right.number else { throw mismatch }
            switch op {
            case .subtract: return .double(a - b)
            case .multiply: return .double(a * b)
            default:
                guard b != 0 else { throw ExprError(.evaluation, "division by zero", at: at) }
                return .double(a / b)
            }
        case .and, .or:
            fatalError("handled above")
        }
    }

    /// A number kept as written, as arithmetic takes it (``ExprNumber/arithmetic(_:)``); any other
    /// value as it is.
    static func arithmetic(_ value: ExprValue, at: SourceLocation) throws(ExprError) -> ExprValue {
        guard case .number(let text) = value else { return value }
        guard let number = ExprNumber.arithmetic(text) else {
            let what = ExprNumber.isIntegral(text) ? "an integer beyond 64 bits" : "a number beyond a double's range"
            throw ExprError(.evaluation, "\(text) is \(what): it is kept and compared as written, but takes part in no arithmetic", at: at)
        }
        return number
    }

    func call(_ function: ExprFunction, _ values: [ExprValue], at: SourceLocation) throws(ExprError) -> ExprValue {
        if function == .string, case .number(let text) = values[0] { return .string(text) }
        let subject = try Self.arithmetic(values[0], at: at)
        let wrong = ExprError(.type, "\(function.rawValue)() does not apply to \(values.map { "a \($0.typeName)" }.joined(separator: " and "))", at: at)
        switch function {
        case .size:
            switch subject {
            case .string(let text): return .int(Int64(text.count))
            case .list(let elements): return .int(Int64(elements.count))
            case .map(let fields): return .int(Int64(fields.count))
            default: throw wrong
            }
        case .startsWith, .endsWith, .contains, .matches:
            guard case .string(let text) = subject, case .string(let other) = values[1] else {
                if function == .contains, case .list(let elements) = subject { return .bool(elements.contains { $0.equals(values[1]) }) }
                throw wrong
            }
            switch function {
            case .startsWith: return .bool(text.hasPrefix(other))
            case .endsWith: return .bool(text.hasSuffix(other))
            case .contains: return .bool(other.isEmpty || text.contains(other))
            default:
                let pattern = try ExprRegex(other, at: at)
                return .bool(try pattern.search(text, budget: self.limits.maxRegexWork, at: at))
            }
        case .lower, .upper:
            guard case .string(let text) = subject else { throw wrong }
            return .string(function == .lower ? text.lowercased() : text.uppercased())
        case .string:
            switch subject {
            case .string: return subject
            case .double(let value): return .string(ExprPrinter.print(Expr(.literal(.double(value)))))
            default: return .string(subject.templateText)
            }
        case .int:
            switch subject {
            case .int: return subject
            case .double(let value):
                guard value.isFinite, let exact = Int64(exactly: value.rounded(.towardZero)) else {
                    throw ExprError(.evaluation, "\(value) does not fit an int", at: at)
                }
                return .int(exact)
            case .string(let text):
                guard let value = Int64(text.trimmingCharactersInSpaces()) else {
                    throw ExprError(.evaluation, "\(text.debugDescription) is not an integer", at: at)
                }
                return .int(value)
            default: throw wrong
            }
        case .double:
            switch subject {
            case .double: return subject
            case .int(let value): return .double(Double(value))
            case .string(let text):
                guard let value = Double(text.trimmingCharactersInSpaces()), value.isFinite else {
                    throw ExprError(.evaluation, "\(text.debugDescription) is not a number", at: at)
                }
                return .double(value)
            default: throw wrong
            }
        }
    }
}

extension String {
    func trimmingCharactersInSpaces() -> Substring {
        var slice = self[...]
        while slice.first == " " { slice = slice.dropFirst() }
        while slice.last == " " { slice = slice.dropLast() }
        return slice
    }
}
