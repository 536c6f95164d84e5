/// Text with `${{ expression }}` in it, as workflow `with:` values and outputs are written.
///
/// A template that is one expression and nothing else keeps the expression's type
/// (`"${{ steps.count.output }}"` is a number); otherwise each expression's value is put into the
/// text (strings as they are, null as nothing, anything else as JSON).
///
/// ```swift
/// let template = try ExprTemplate.parse("Write a brief on ${{ inputs.topic }}")
/// let text = try template.render(in: ["inputs": .map(["topic": .string("SparkOps")])])
/// ```
public struct ExprTemplate: Sendable, Hashable {
    public enum Part: Sendable, Hashable {
        case text(String)
        case expression(Expr)
    }

    public var parts: [Part]

    /// The expressions in the template, in order.
    public var expressions: [Expr] {
        self.parts.compactMap { if case .expression(let expr) = $0 { return expr } else { return nil } }
    }

    /// Parses `source`; locations in errors and nodes are within `source`, starting at `base`.
    public static func parse(_ source: String, base: SourceLocation = .start, limits: ExprLimits = .default) throws(ExprError) -> ExprTemplate {
        let scalars = Array(source.unicodeScalars)
        var parts: [Part] = []
        var text = ""
        var index = 0
        var line = 1
        var column = 1
        func step(_ count: Int) {
            for _ in 0 ..< count {
                if scalars[index] == "\n" {
                    line += 1
                    column = 1
                } else {
                    column += 1
                }
                index += 1
            }
        }
        while index < scalars.count {
            guard scalars[index] == "$", index + 2 < scalars.count, scalars[index + 1] == "{", scalars[index + 2] == "{" else {
                text.unicodeScalars.append(scalars[index])
                step(1)
                continue
            }
            let open = SourceLocation(line: line, column: column).offset(by: base)
            step(3)
            let start = SourceLocation(line: line, column: column)
            // The closing braces, skipping over string literals (which may hold "}}").
            var end = index
            var quote: Unicode.Scalar?
            while end < scalars.count {
                let scalar = scalars[end]
                if let open = quote {
                    if scalar == "\\" { end += 1 } else if scalar == open { quote = nil }
                } else if scalar == "\"" || scalar == "'" {
                    quote = scalar
                } else if scalar == "}", end + 1 < scalars.count, scalars[end + 1] == "}" {
                    break
                }
                end += 1
            }
            guard end < scalars.count else {
                throw ExprError(.syntax, "${{ has no closing }}", at: open)
            }
            var inner = ""
            inner.unicodeScalars.append(contentsOf: scalars[index ..< end])
            if !text.isEmpty {
                parts.append(.text(text))
                text = ""
            }
            let expr: Expr
            do {
                expr = try Expr.parse(inner, limits: limits)
            } catch {
                var located = error
                located.location = error.location.offset(by: start.offset(by: base))
                throw located
            }
            parts.append(.expression(expr.relocated(by: start.offset(by: base))))
            step(end - index + 2)
        }
        if !text.isEmpty { parts.append(.text(text)) }
        return ExprTemplate(parts: parts)
    }

    /// The template's value over `environment`.
    public func render(in environment: [String: ExprValue], limits: ExprLimits = .default) throws(ExprError) -> ExprValue {
        if self.parts.count == 1, case .expression(let expr) = self.parts[0] {
            return try expr.evaluate(in: environment, limits: limits)
        }
        var out = ""
        for part in self.parts {
            switch part {
            case .text(let text): out += text
            case .expression(let expr): out += try expr.evaluate(in: environment, limits: limits).templateText
            }
            guard out.unicodeScalars.count <= limits.maxValueSize else {
                throw ExprError(.limit, "the rendered text is longer than \(limits.maxValueSize) characters", at: .start)
            }
        }
        return .string(out)
    }

    /// Every problem of every expression against `schema`.
    public func check(against schema: ExprSchema) -> [ExprError] {
        self.expressions.flatMap { $0.check(against: schema) }
    }
}

extension Expr {
    /// The same tree, its locations read as relative to `base` (where its source starts in a
    /// larger text, such as a YAML file).
    public func relocated(by base: SourceLocation) -> Expr {
        var copy = self
        copy.location = self.location.offset(by: base)
        switch self.kind {
        case .literal, .identifier: break
        case .member(let target, let name): copy.kind = .member(target.relocated(by: base), name)
        case .index(let target, let index): copy.kind = .index(target.relocated(by: base), index.relocated(by: base))
        case .call(let target, let function, let arguments):
            copy.kind = .call(target: target?.relocated(by: base), function: function, arguments: arguments.map { $0.relocated(by: base) })
        case .unary(let op, let operand): copy.kind = .unary(op, operand.relocated(by: base))
        case .binary(let op, let left, let right): copy.kind = .binary(op, left.relocated(by: base), right.relocated(by: base))
        case .list(let elements): copy.kind = .list(elements.map { $0.relocated(by: base) })
        case .conditional(let a, let b, let c): copy.kind = .conditional(a.relocated(by: base), b.relocated(by: base), c.relocated(by: base))
        }
        return copy
    }
}
