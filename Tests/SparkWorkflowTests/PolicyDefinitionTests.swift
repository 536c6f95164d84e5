import Foundation
import SparkExpr
import SparkWorkflow
import Testing

@Suite("Policy definitions")
struct PolicyDefinitionTests {
    static let yaml = """
        policy: payments
        points: [tool.invoke, llm.call]
        rules:
          - name: large
            effect: require_approval
            when: ${{ tool.arguments.amount > 100 }}
          - name: blocked
            effect: deny
            when: tool.host.endsWith(".evil.example")
            points: [tool.invoke]
          - name: always
            effect: allow
        """

    @Test("a policy reads with its defaults; its canonical form reads back to the same hash and conditions; a change is a new hash")
    func roundTrip() throws {
        let policy = try PolicyDefinition.read(Self.yaml)
        #expect(policy.defaultEffect == .allow)
        #expect(policy.points == [.toolInvoke, .llmCall])
        #expect(policy.rules.map(\.effect) == [.requireApproval, .deny, .allow])
        #expect(policy.rules[2].condition == nil)
        #expect(policy.rules[1].points == [.toolInvoke])
        #expect(policy.applies(at: .llmCall) && !policy.applies(at: .runCreate))
        let again = try PolicyDefinition.read(policy.canonicalJSON)
        #expect(again.contentHash == policy.contentHash)
        #expect(again.rules.map(\.condition) == policy.rules.map(\.condition))
        #expect(try PolicyDefinition.read(Self.yaml.replacingOccurrences(of: "> 100", with: "> 101")).contentHash != policy.contentHash)
        #expect(PolicyDefinition.Effect.deny > .requireApproval && PolicyDefinition.Effect.requireApproval > .allow)
    }

    @Test("policy problems carry line, column and field", arguments: [
        ("policy: p\nrules:\n  - { name: r, effect: deny, when: 'tool.size > 1' }\n", "3:42 rules[0].when"),
        ("policy: p\nrules:\n  - name: r\n    effect: deny\n    when: budget.percent_used > \"80\"\n", "5:31 rules[0].when"),
        ("policy: p\nrules:\n  - name: r\n    effect: deny\n    when: 'labels.team == 3'\n", "5:24 rules[0].when"),
        ("policy: p\nrules:\n  - name: r\n    effect: deny\n    when: time.hour\n", "5:16 rules[0].when"),
        ("policy: p\ndefault: maybe\nrules:\n  - { name: r, effect: deny }\n", "2:10 default"),
        ("policy: p\nrules:\n  - { name: r, effect: deny, color: red }\n", "3:30 rules[0].color"),
        ("policy: pol_x\nrules:\n  - { name: r, effect: deny }\n", "1:9 policy"),
        ("rules:\n  - { name: r, effect: deny }\n", "1:1 policy"),
    ])
    func problems(source: String, expected: String) throws {
        do {
            _ = try PolicyDefinition.read(source)
            Issue.record("\(source) was accepted")
        } catch {
            let first = try #require(error.problems.first)
            #expect("\(first.line):\(first.column) \(first.field)" == expected, "\(error.problems)")
        }
    }

    @Test("the names a rule reads are found, for the context to fetch only what a rule needs")
    func reads() throws {
        let expr = try Expr.parse("principal.role == \"owner\" || budget.percent_used > 80.0 && size(tool.arguments) > 0")
        let roots = PolicyContextSchema.roots(of: expr)
        #expect(roots.isSuperset(of: ["principal.role", "budget.percent_used", "tool.arguments"]))
        #expect(!roots.contains("model.name"))
        #expect(!roots.contains("principal"), "reading principal.role is not reading all of principal")
        #expect(PolicyContextSchema.roots(of: try Expr.parse("principal[\"kind\"] == \"user\"")).contains("principal"))
        #expect(!PolicyContextSchema.roots(of: try Expr.parse("principal.kind == \"user\"")).contains("principal.role"))
    }
}
