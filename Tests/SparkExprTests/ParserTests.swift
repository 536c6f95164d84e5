import SparkExpr
import Testing

@Suite("SparkExpr parser")
struct ParserTests {
    func parse(_ source: String) throws -> Expr { try Expr.parse(source) }

    func syntaxError(_ source: String, limits: ExprLimits = .default) -> ExprError? {
        do {
            _ = try Expr.parse(source, limits: limits)
            return nil
        } catch {
            return error
        }
    }

    @Test("precedence and associativity: the printed form shows the tree")
    func precedence() throws {
        let cases: [(String, String)] = [
            ("1 + 2 * 3", "1 + 2 * 3"),
            ("(1 + 2) * 3", "(1 + 2) * 3"),
            ("a - b - c", "a - b - c"),
            ("a - (b - c)", "a - (b - c)"),
            ("a || b && c", "a || b && c"),
            ("(a || b) && c", "(a || b) && c"),
            ("!a.b", "!a.b"),
            ("-x.y[0]", "-x.y[0]"),
            ("x in [1, 2, 3]", "x in [1, 2, 3]"),
            ("a ? b : c ? d : e", "a ? b : c ? d : e"),
            ("(a ? b : c) ? d : e", "(a ? b : c) ? d : e"),
            ("size(steps.search.output.results) > 0", "size(steps.search.output.results) > 0"),
            ("inputs.topic.startsWith('ai')", #"inputs.topic.startsWith("ai")"#),
            ("-5", "-5"),
            ("-(5)", "-(5)"),
            ("- - x", "-(-x)"),
            ("(-5).size()", "(-5).size()"),
            ("steps[\"my-step\"].output", #"steps["my-step"].output"#),
            ("1.5e3 + 2.0", "1500.0 + 2.0"),
        ]
        for (source, printed) in cases {
            let expr = try self.parse(source)
            #expect(expr.description == printed, "\(source)")
            #expect(try self.parse(expr.description) == expr, "\(source)")
        }
        let tree = try self.parse("a + b * c")
        guard case .binary(.add, _, let right) = tree.kind, case .binary(.multiply, _, _) = right.kind else {
            Issue.record("a + b * c is not a + (b * c): \(tree)")
            return
        }
        #expect(try self.parse("-9223372036854775808") == Expr(.literal(.int(.min))))
    }

    @Test("syntax errors say what and where, by line and column")
    func errors() {
        let cases: [(String, Int, Int, String)] = [
            ("a +", 1, 4, "ends where a value was expected"),
            ("a ==\n  == b", 2, 3, "unexpected \"==\""),
            ("steps.x.\n  output ++", 2, 11, "unexpected \"+\""),
            ("a = b", 1, 3, "compare with \"==\""),
            ("a & b", 1, 3, "write \"&&\""),
            ("\"open", 1, 1, "no closing"),
            ("'a\\qb'", 1, 3, "unknown escape"),
            ("a < b < c", 1, 7, "do not chain"),
            ("(a + b", 1, 7, "to close the parenthesis opened at 1:1"),
            ("frobnicate(x)", 1, 1, "unknown function \"frobnicate\""),
            ("x.size(1)", 1, 3, "takes 0 arguments"),
            ("startsWith(x)", 1, 1, "takes 2 arguments"),
            ("9223372036854775808", 1, 1, "out of range"),
            ("a b", 1, 3, "after the expression"),
            ("12abc", 1, 3, "runs into"),
            ("#", 1, 1, "unexpected character"),
            ("[1, 2", 1, 6, "between list elements"),
            ("x.", 1, 3, "expected a name"),
        ]
        for (source, line, column, fragment) in cases {
            guard let error = self.syntaxError(source) else {
                Issue.record("\(source.debugDescription) parsed")
                continue
            }
            #expect(error.code == .syntax, "\(source): \(error)")
            #expect(error.location == SourceLocation(line: line, column: column), "\(source.debugDescription): \(error)")
            #expect(error.message.contains(fragment), "\(source.debugDescription): \(error)")
        }
    }

    @Test("limits: source length, nesting of every kind, and long chains each have their own error")
    func limits() {
        let limits = ExprLimits(maxSourceLength: 200, maxDepth: 16)
        let long = self.syntaxError(String(repeating: "a", count: 201), limits: limits)
        #expect(long?.code == .limit)
        #expect(long?.message.contains("longer than 200") == true)
        let deep = [
            String(repeating: "(", count: 40) + "1" + String(repeating: ")", count: 40),
            String(repeating: "!", count: 40) + "x",
            String(repeating: "[", count: 40) + String(repeating: "]", count: 40),
            "a" + String(repeating: " + a", count: 40),
            "a" + String(repeating: ".b", count: 40),
            String(repeating: "size(", count: 30) + "x" + String(repeating: ")", count: 30),
        ]
        for source in deep {
            let error = self.syntaxError(source, limits: limits)
            #expect(error?.code == .limit, "\(source.prefix(20)): \(String(describing: error))")
            #expect(error?.message.contains("deeper than 16") == true)
        }
        // The default limits are roomy enough for real rules.
        #expect(self.syntaxError("a" + String(repeating: " && a", count: 30)) == nil)
    }
}
