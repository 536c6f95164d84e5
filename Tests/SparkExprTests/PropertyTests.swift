import PropertyBased
import SparkExpr
import Testing

/// Properties over generated input: printing then parsing gives the same tree, and no text makes
/// the parser crash or run on.
@Suite("SparkExpr properties")
struct PropertyTests {
    /// Builds an expression tree from a stream of choices, so that the generator's numbers (and
    /// their shrinking) drive the shape.
    struct TreeBuilder {
        var choices: [UInt16]
        var position = 0

        mutating func next(_ bound: Int) -> Int {
            defer { self.position += 1 }
            guard !self.choices.isEmpty else { return 0 }
            return Int(self.choices[self.position % self.choices.count]) % bound
        }

        static let names = ["inputs", "steps", "tool", "principal", "x", "y_2", "_z"]
        static let fields = ["output", "topic", "count", "null", "in", "true", "status"]
        static let strings = ["", "a", "it's", "say \"hi\"", "back\\slash", "line\nbreak", "tab\tand\u{1}", "ünï", "}}"]

        mutating func expression(depth: Int) -> Expr {
            let leaf = depth <= 0 || self.next(4) == 0
            if leaf {
                switch self.next(9) {
                case 0: return Expr(.literal(.null))
                case 1: return Expr(.literal(.bool(self.next(2) == 0)))
                case 2: return Expr(.literal(.int(Int64(self.next(2001)) - 1000)))
                case 3: return Expr(.literal(.int(self.next(2) == 0 ? .max : .min)))
                case 4: return Expr(.literal(.double(Double(self.next(20001) - 10000) / 8)))
                case 5: return Expr(.literal(.string(Self.strings[self.next(Self.strings.count)])))
                default: return Expr(.identifier(Self.names[self.next(Self.names.count)]))
                }
            }
            switch self.next(8) {
            case 0: return Expr(.member(self.expression(depth: depth - 1), Self.fields[self.next(Self.fields.count)]))
            case 1: return Expr(.index(self.expression(depth: depth - 1), self.expression(depth: depth - 1)))
            case 2:
                let function = ExprFunction.allCases[self.next(ExprFunction.allCases.count)]
                let arity = [ExprFunction.startsWith, .endsWith, .contains, .matches].contains(function) ? 1 : 0
                if self.next(2) == 0 {
                    return Expr(.call(target: self.expression(depth: depth - 1), function: function, arguments: (0 ..< arity).map { _ in self.expression(depth: depth - 1) }))
                }
                return Expr(.call(target: nil, function: function, arguments: (0 ... arity).map { _ in self.expression(depth: depth - 1) }))
            case 3: return Expr(.unary(UnaryOperator.allCases[self.next(2)], self.expression(depth: depth - 1)))
            case 4, 5: return Expr(.binary(BinaryOperator.allCases[self.next(BinaryOperator.allCases.count)], self.expression(depth: depth - 1), self.expression(depth: depth - 1)))
            case 6: return Expr(.list((0 ..< self.next(4)).map { _ in self.expression(depth: depth - 1) }))
            default: return Expr(.conditional(self.expression(depth: depth - 1), self.expression(depth: depth - 1), self.expression(depth: depth - 1)))
            }
        }
    }

    static let trees = Gen<UInt16>.value(in: 0 ... 4000).array(of: 1 ... 60).map { choices -> Expr in
        var builder = TreeBuilder(choices: choices)
        return builder.expression(depth: 5)
    }

    @Test("parse(print(e)) == e for generated trees, and printing is stable")
    func printParse() async {
        await propertyCheck(count: 2000, input: Self.trees) { expr in
            let printed = expr.description
            do {
                // Generated trees can print longer than the default source limit; the shape is the point.
                let parsed = try Expr.parse(printed, limits: ExprLimits(maxSourceLength: 1 << 20, maxDepth: 200))
                #expect(parsed == expr, "\(printed)")
                #expect(parsed.description == printed)
            } catch {
                Issue.record("\(printed) does not parse: \(error)")
            }
        }
    }

    static let fragments = [
        "a", "b.c", "1", "-", "2.5e3", "'s'", "\"t", "\\", "(", ")", "[", "]", ",", ".", "?", ":", "!", "&&", "||",
        "==", "<", ">=", "in", "+", "*", "/", "%", "size(", "x.matches(", "null", "true", " ", "\n", "=", "&", "#", "9999999999999999999",
        "'\\u12'", "'\\U0010FFFF'", "${{", "}}", "\u{0}", "ü",
    ]

    static let soups = Gen<String?>.element(of: Self.fragments).map { $0 ?? "" }.array(of: 0 ... 80).map { $0.joined() }

    @Test("no input crashes the parser or runs on: token soups and arbitrary text end in a tree or an error")
    func noCrash() async {
        await propertyCheck(count: 3000, input: Self.soups) { source in
            let started = ContinuousClock.now
            if let expr = try? Expr.parse(source) {
                // What parses prints back to an equal tree, and evaluates or fails cleanly.
                #expect((try? Expr.parse(expr.description)) == expr, "\(source.debugDescription)")
                _ = try? expr.evaluate(in: ["a": .map(["c": .int(1)]), "x": .string("xyz")])
            }
            _ = try? ExprTemplate.parse(source)
            // Each input is small; a parse that took seconds would be a runaway, not load.
            #expect(ContinuousClock.now - started < .seconds(5), "\(source.debugDescription)")
        }
        let text = Gen<UnicodeScalar>.unicodeScalar(in: "\u{0}" ... "\u{2FF}").array(of: 0 ... 200).map { String(String.UnicodeScalarView($0)) }
        await propertyCheck(count: 2000, input: text) { source in
            _ = try? Expr.parse(source)
            _ = try? ExprTemplate.parse(source)
        }
    }

    @Test("evaluating generated trees ends in a value or an ExprError, within the step limit")
    func evaluationTerminates() async {
        let environment: [String: ExprValue] = [
            "inputs": .map(["topic": .string("t"), "count": .int(2)]),
            "steps": .map(["output": .list([.int(1), .string("two")])]),
            "x": .double(1.5), "y_2": .bool(true), "_z": .null,
        ]
        await propertyCheck(count: 2000, input: Self.trees) { expr in
            do {
                _ = try expr.evaluate(in: environment, limits: ExprLimits(maxSteps: 500))
            } catch let error as ExprError {
                #expect(!error.message.isEmpty)
            }
        }
    }
}
