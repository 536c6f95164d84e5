import Foundation
import SparkExpr
import Testing

@Suite("SparkExpr evaluation, checks and templates")
struct EvaluatorTests {
    static let environment: [String: ExprValue] = [
        "inputs": .map(["topic": .string("AI agents"), "count": .int(3), "ratio": .double(0.5), "tags": .list([.string("a"), .string("b")])]),
        "steps": .map([
            "search": .map(["output": .map(["results": .list([.string("r1"), .string("r2")]), "words": .int(250)]), "status": .string("succeeded")]),
        ]),
        "tool": .map(["host": .string("api.example.com"), "side_effects": .string("non_idempotent")]),
    ]

    func eval(_ source: String, limits: ExprLimits = .default) throws -> ExprValue {
        try Expr.parse(source, limits: limits).evaluate(in: Self.environment, limits: limits)
    }

    func failure(_ source: String, limits: ExprLimits = .default) -> ExprError? {
        do {
            _ = try self.eval(source, limits: limits)
            return nil
        } catch let error as ExprError {
            return error
        } catch {
            return nil
        }
    }

    @Test("values: arithmetic, comparison, logic, membership, paths, functions")
    func values() throws {
        let cases: [(String, ExprValue)] = [
            ("1 + 2 * 3", .int(7)),
            ("7 / 2", .int(3)),
            ("7 % 4", .int(3)),
            ("7.0 / 2", .double(3.5)),
            ("1 == 1.0", .bool(true)),
            ("inputs.count + inputs.ratio", .double(3.5)),
            ("'a' + 'b'", .string("ab")),
            ("[1] + [2, 3]", .list([.int(1), .int(2), .int(3)])),
            ("steps.search.output.words > 200 && inputs.topic.startsWith('AI')", .bool(true)),
            ("size(steps.search.output.results)", .int(2)),
            ("steps.search.output.results[1]", .string("r2")),
            ("steps['search'].status == 'succeeded'", .bool(true)),
            ("'b' in inputs.tags", .bool(true)),
            ("'topic' in inputs", .bool(true)),
            ("tool.host.endsWith('.example.com') ? 'external' : 'internal'", .string("external")),
            ("tool.host.matches('^api\\\\.[a-z]+\\\\.com$')", .bool(true)),
            ("inputs.topic.lower().contains('agent')", .bool(true)),
            ("int('42') + int(2.9)", .int(44)),
            ("double(inputs.count) / 2", .double(1.5)),
            ("string(inputs.count) + '!'", .string("3!")),
            ("!(inputs.count < 2) || false", .bool(true)),
            ("null == null", .bool(true)),
            ("[1, 'x'] == [1.0, 'x']", .bool(true)),
            ("'abc' < 'abd'", .bool(true)),
            // && and || stop early: the right side's error never happens.
            ("false && 1 / 0 == 1", .bool(false)),
            ("true || steps.missing.output", .bool(true)),
            ("-9223372036854775807 - 1", .int(.min)),
        ]
        for (source, expected) in cases {
            let value = try self.eval(source)
            #expect(value.equals(expected) && value.typeName == expected.typeName, "\(source): \(value)")
        }
    }

    @Test("evaluation errors name the fault and where it is")
    func evaluationErrors() {
        let cases: [(String, ExprError.Code, Int, String)] = [
            ("steps.serch.output", .evaluation, 7, "no field \"serch\" in steps"),
            ("1 / 0", .evaluation, 3, "division by zero"),
            ("9223372036854775807 + 1", .evaluation, 21, "integer overflow"),
            ("inputs.tags[5]", .evaluation, 12, "out of range"),
            ("'a' + 1", .type, 5, "does not apply to a string and a int"),
            ("inputs.topic.size", .type, 14, "cannot read .size of a string"),
            ("size(5)", .type, 1, "does not apply"),
            ("inputs.count ? 1 : 2", .type, 14, "not a bool"),
            ("unknown + 1", .evaluation, 1, "unknown name \"unknown\""),
            ("int('x')", .evaluation, 1, "not an integer"),
        ]
        for (source, code, column, fragment) in cases {
            guard let error = self.failure(source) else {
                Issue.record("\(source) evaluated")
                continue
            }
            #expect(error.code == code, "\(source): \(error)")
            #expect(error.location.column == column, "\(source): \(error)")
            #expect(error.message.contains(fragment), "\(source): \(error)")
        }
    }

    @Test("evaluation limits: steps, value size and regular-expression work each stop with their own error")
    func evaluationLimits() throws {
        let steps = self.failure("1" + String(repeating: " + 1", count: 30), limits: ExprLimits(maxSteps: 20))
        #expect(steps?.code == .limit)
        #expect(steps?.message.contains("more than 20 steps") == true)
        let size = self.failure("inputs.topic + inputs.topic + inputs.topic", limits: ExprLimits(maxValueSize: 20))
        #expect(size?.code == .limit)
        // A pattern that makes backtracking engines take exponential time is linear here, and a
        // budget bounds even linear work.
        let evil = "'\(String(repeating: "a", count: 3000))!'.matches('^(a+)+$')"
        #expect(try self.eval(evil) == .bool(false))
        let budget = self.failure(evil, limits: ExprLimits(maxRegexWork: 1000))
        #expect(budget?.code == .limit)
        #expect(budget?.message.contains("matches()") == true)
    }

    @Test("regular expressions: classes, anchors, alternation, repeats; bad patterns are syntax errors")
    func regex() throws {
        let cases: [(String, String, Bool)] = [
            ("abc", "b", true), ("abc", "^b", false), ("abc", "c$", true), ("abc", "^abc$", true),
            ("a1b2", "\\d\\w\\d", true), ("aaa", "^a{2,3}$", true), ("aaaa", "^a{2,3}$", false),
            ("color", "colou?r", true), ("gray", "gr(a|e)y", true), ("grey", "^gr(?:a|e)y$", true),
            ("x-y", "[a-z]-[^0-9]", true), ("x-1", "[a-z]-[^0-9]", false), ("", "^$", true), ("a.b", "a\\.b", true),
            ("ab", "a.b", false), ("a{b", "a{b", true), ("tab\there", "\\s", true), ("ü", "^.$", true),
        ]
        for (text, pattern, expected) in cases {
            let source = "\(Self.quote(text)).matches(\(Self.quote(pattern)))"
            #expect(try self.eval(source) == .bool(expected), "\(text) ~ \(pattern)")
        }
        for pattern in ["(a", "a)", "*a", "[a", "a{5,2}", "a{1000}", "\\q", "^*"] {
            let error = self.failure("'x'.matches(\(Self.quote(pattern)))")
            #expect(error?.code == .syntax || error?.code == .limit, "\(pattern): \(String(describing: error))")
            #expect(error?.message.hasPrefix("pattern") == true || error?.code == .limit, "\(pattern): \(String(describing: error))")
        }
    }

    static func quote(_ text: String) -> String {
        "\"" + text.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"").replacingOccurrences(of: "\t", with: "\\t") + "\""
    }

    static let schema = ExprSchema.object([
        "inputs": .object(["topic": .string, "count": .int]),
        "steps": .object(["search": .object(["output": .any, "status": .string])]),
    ])

    @Test("checks against a schema refuse unknown names and wrong types at write time, with the place")
    func checks() throws {
        let unknown = try Expr.parse("steps.serch.output.results").check(against: Self.schema)
        #expect(unknown.count == 1)
        #expect(unknown.first?.code == .unknownName)
        #expect(unknown.first?.location == SourceLocation(line: 1, column: 7))
        #expect(unknown.first?.message == #"unknown name "serch" in steps; did you mean "search"?"#)

        let root = try Expr.parse("input.topic").check(against: Self.schema)
        #expect(root.first?.message.contains(#"did you mean "inputs"?"#) == true)
        let far = try Expr.parse("inputs.zzzzzzzz").check(against: Self.schema)
        #expect(far.first?.message.contains("known: count, topic") == true)

        let types: [(String, String)] = [
            ("inputs.topic + 1", "+ does not apply to a string and a int"),
            ("inputs.topic > 3", "does not compare a string and a int"),
            ("!inputs.count", "! takes a bool, not a int"),
            ("inputs.count.startsWith('a')", "startsWith() does not apply to a int"),
            ("steps.search.status ? 1 : 2", "the condition of ?: takes a bool"),
            ("inputs.topic.size", "cannot read .size of a string"),
        ]
        for (source, message) in types {
            let problems = try Expr.parse(source).check(against: Self.schema)
            #expect(problems.contains { $0.code == .type && $0.message.contains(message) }, "\(source): \(problems)")
        }
        // Below `any` nothing is known, so nothing is refused.
        #expect(try Expr.parse("steps.search.output.anything[0].deeper > 3 && size(steps.search.output) > 0").check(against: Self.schema).isEmpty)
        // Every problem is reported, in source order.
        let several = try Expr.parse("inputs.nope == 1 && steps.nope.output").check(against: Self.schema)
        #expect(several.map(\.location.column) == [8, 27])
    }

    @Test("templates: one expression keeps its type, text interpolates, locations point into the text")
    func templates() throws {
        let typed = try ExprTemplate.parse("${{ steps.search.output.words }}")
        #expect(try typed.render(in: Self.environment) == .int(250))
        let text = try ExprTemplate.parse("Brief on ${{ inputs.topic }} from ${{ steps.search.output.results }} (${{ null }})")
        #expect(try text.render(in: Self.environment) == .string(#"Brief on AI agents from ["r1","r2"] ()"#))
        let braces = try ExprTemplate.parse("${{ '}}' + inputs.topic }}")
        #expect(try braces.render(in: Self.environment) == .string("}}AI agents"))
        #expect(try ExprTemplate.parse("no expressions, $ and { alone").render(in: [:]) == .string("no expressions, $ and { alone"))

        // A problem's location is where it is in the text, offset by where the text starts.
        let base = SourceLocation(line: 10, column: 12)
        let problems = try ExprTemplate.parse("Write on ${{ inputs.topc }}", base: base).check(against: Self.schema)
        #expect(problems.first?.location == SourceLocation(line: 10, column: 32))
        #expect(problems.first?.message.contains("did you mean \"topic\"") == true)
        do {
            _ = try ExprTemplate.parse("line one\nthen ${{ a + }}", base: base)
            Issue.record("parsed")
        } catch {
            #expect(error.location == SourceLocation(line: 11, column: 14))
        }
        do {
            _ = try ExprTemplate.parse("x ${{ a", base: .start)
            Issue.record("parsed")
        } catch {
            #expect(error.message.contains("no closing }}"))
            #expect(error.location == SourceLocation(line: 1, column: 3))
        }
    }

    @Test("numbers: 4 / 2 is the int 2, 0.1 + 0.2 the nearest double, numbers kept as written compare exactly and print as written")
    func numberRules() throws {
        let data = try ExprValue(jsonText: #"{"big": 123456789012345678901234567890, "id": 9007199254740993, "neg": -0, "far": 1e400, "price": 1.50, "k": 2E3}"#)
        let environment: [String: ExprValue] = ["inputs": data]
        func eval(_ source: String) throws -> ExprValue { try Expr.parse(source).evaluate(in: environment) }
        let cases: [(String, String)] = [
            ("4 / 2", "2"), ("7 / 2", "3"), ("-7 / 2", "-3"), ("-7 % 2", "-1"), ("4.0 / 2", "2.0"), ("0.1 + 0.2", "0.30000000000000004"),
            ("inputs.id + 1", "9007199254740994"), ("inputs.id == 9007199254740992", "false"),
            ("inputs.big > inputs.id", "true"), ("inputs.big == inputs.big", "true"), ("inputs.big < 0", "false"),
            ("inputs.neg + 1", "1"), ("inputs.price * 2", "3.0"), ("inputs.k + 1", "2001.0"), ("inputs.far > 1e308", "true"),
            ("inputs.big", "123456789012345678901234567890"), ("inputs.price", "1.50"), ("inputs.far", "1e400"), ("inputs.neg", "-0"),
            ("string(inputs.big)", "\"123456789012345678901234567890\""), ("[inputs.big, inputs.price]", "[123456789012345678901234567890,1.50]"),
        ]
        for (source, expected) in cases {
            #expect(try eval(source).jsonText == expected, "\(source)")
        }
        // Beyond 64 bits or beyond a double, arithmetic refuses, naming the number.
        for source in ["inputs.big + 1", "-inputs.big", "inputs.far * 2", "int(inputs.big)"] {
            #expect(throws: ExprError.self, "\(source)") { try eval(source) }
        }
        do {
            _ = try eval("inputs.big + 1")
        } catch let error as ExprError {
            #expect(error.message.contains("123456789012345678901234567890 is an integer beyond 64 bits"))
        }
        // Templates: text shows the number as written; a lone expression keeps the value.
        #expect(try ExprTemplate.parse("issue ${{ inputs.id }}, ${{ inputs.big }}, ${{ inputs.price }}, ${{ 4 / 2 }}").render(in: environment)
            == .string("issue 9007199254740993, 123456789012345678901234567890, 1.50, 2"))
        #expect(try ExprTemplate.parse("${{ inputs.big }}").render(in: environment) == .number("123456789012345678901234567890"))
    }

    @Test("values come from JSON and go back to it")
    func json() throws {
        let value = try ExprValue(jsonText: #"{"a": [1, 2.5, true, null, "x"], "b": {"c": false}}"#)
        #expect(value == .map(["a": .list([.int(1), .double(2.5), .bool(true), .null, .string("x")]), "b": .map(["c": .bool(false)])]))
        #expect(try ExprValue(jsonText: value.jsonText) == value)
    }
}
