import Foundation
import SparkExpr
import SparkWorkflow
import Testing

@Suite("Workflow definitions")
struct WorkflowDefinitionTests {
    static let brief = """
        name: research-brief
        inputs: { topic: { type: string, required: true } }
        steps:
          - id: search
            tool: web-search                 # a tool of this project, by name
            with: { query: "${{ inputs.topic }}" }
          - id: draft
            agent: writer
            needs: [search]
            with: { prompt: "Write a brief on ${{ inputs.topic }} from: ${{ steps.search.output.results }}" }
            retry: { max_attempts: 3, backoff: exponential, initial: 2s, max: 1m }
            timeout: 2m
          - id: review
            approval: { approvers: [editor], message: "Publish this brief?" }
            needs: [draft]
          - id: publish
            tool: cms-post
            needs: [review]
            when: "${{ steps.draft.output.words > 200 }}"
        outputs: { brief: "${{ steps.draft.output.text }}" }
        """

    func problems(_ source: String, limits: WorkflowLimits = .default) -> [WorkflowProblem] {
        do {
            _ = try WorkflowDefinition.read(source, limits: limits)
            return []
        } catch {
            return error.problems
        }
    }

    /// The one problem of `source`, which must be at `line`:`column` on `field` and say `fragment`.
    func expectProblem(_ source: String, line: Int, column: Int, field: String, _ fragment: String, sourceLocation: Testing.SourceLocation = #_sourceLocation) {
        let found = self.problems(source)
        #expect(found.count == 1, "\(found)", sourceLocation: sourceLocation)
        guard let problem = found.first else { return }
        #expect(problem.line == line && problem.column == column, "\(problem)", sourceLocation: sourceLocation)
        #expect(problem.field == field, "\(problem)", sourceLocation: sourceLocation)
        #expect(problem.message.contains(fragment), "\(problem)", sourceLocation: sourceLocation)
    }

    @Test("the design's example reads: inputs, four kinds of step, retry, timeout, condition, outputs")
    func example() throws {
        let definition = try WorkflowDefinition.read(Self.brief)
        #expect(definition.name == "research-brief")
        #expect(definition.inputs == [WorkflowInput(name: "topic", type: .string, required: true)])
        #expect(definition.steps.map(\.id) == ["search", "draft", "review", "publish"])
        #expect(definition.steps[0].kind == .tool("web-search"))
        #expect(definition.steps[1].kind == .agent("writer"))
        #expect(definition.steps[1].retry == .init(maxAttempts: 3, backoff: .exponential, initial: .seconds(2), maximum: .seconds(60)))
        #expect(definition.steps[1].timeout == .seconds(120))
        #expect(definition.steps[2].kind == .approval(.init(approvers: ["editor"], message: "Publish this brief?")))
        #expect(definition.steps[3].when == "${{ steps.draft.output.words > 200 }}")
        #expect(definition.steps[3].needs == ["review"])
        #expect(definition.outputs.map(\.name) == ["brief"])
        #expect(definition.steps[0].with == .map(["query": .string("${{ inputs.topic }}")]))
    }

    @Test("the same workflow in JSON, reordered, with defaults spelt out, has the same content hash; a change does not")
    func contentHash() throws {
        let yaml = try WorkflowDefinition.read(Self.brief)
        let json = """
            {"outputs": {"brief": "${{ steps.draft.output.text }}"}, "name": "research-brief",
             "steps": [
               {"with": {"query": "${{ inputs.topic }}"}, "id": "search", "tool": "web-search", "on_error": "fail"},
               {"id": "draft", "agent": "writer", "needs": ["search"], "timeout": "120s",
                "with": {"prompt": "Write a brief on ${{ inputs.topic }} from: ${{ steps.search.output.results }}"},
                "retry": {"max": "60s", "initial": "2000ms", "backoff": "exponential", "max_attempts": 3}},
               {"id": "review", "needs": "draft", "approval": {"message": "Publish this brief?", "approvers": ["editor"]}},
               {"id": "publish", "tool": "cms-post", "needs": ["review"], "when": "${{ steps.draft.output.words > 200 }}"}],
             "inputs": {"topic": {"required": true, "type": "string"}}}
            """
        let fromJSON = try WorkflowDefinition.read(json)
        #expect(fromJSON.contentHash == yaml.contentHash)
        #expect(fromJSON == yaml)
        #expect(yaml.contentHash.hasPrefix("sha256:") && yaml.contentHash.count == 71)
        let changed = try WorkflowDefinition.read(Self.brief.replacingOccurrences(of: "timeout: 2m", with: "timeout: 3m"))
        #expect(changed.contentHash != yaml.contentHash)
    }

    @Test("structure problems point at the line, column and field")
    func structure() {
        self.expectProblem("name: x\nsteps:\n  - id: a\n    tool: t\n    neds: [b]\n", line: 5, column: 5, field: "steps[0].neds", #"unknown field "neds"; did you mean "needs"?"#)
        self.expectProblem("name: x\nsteps:\n  - id: a\n    tool: t\n  - id: a\n    tool: u\n", line: 5, column: 9, field: "steps[1].id", "also step 1's")
        self.expectProblem("name: x\nsteps:\n  - id: a\n    tool: t\n    needs: [serch]\n", line: 5, column: 13, field: "steps[0].needs[0]", #"unknown step "serch""#)
        self.expectProblem("name: x\nsteps:\n  - id: search\n    tool: t\n  - id: b\n    tool: t\n    needs: [serch]\n", line: 7, column: 13, field: "steps[1].needs[0]", #"did you mean "search"?"#)
        self.expectProblem("name: x\nsteps:\n  - id: a\n    tool: t\n    timeout: 2 minutes\n", line: 5, column: 14, field: "steps[0].timeout", "not a duration")
        self.expectProblem("name: x\nsteps:\n  - id: a\n    tool: t\n    agent: w\n", line: 5, column: 5, field: "steps[0]", "not tool and agent")
        self.expectProblem("name: x\nsteps:\n  - id: a\n    with: {}\n", line: 3, column: 5, field: "steps[0]", "one of tool, agent or approval")
        self.expectProblem("name: x\nsteps:\n  - id: my-step\n    tool: t\n", line: 3, column: 9, field: "steps[0].id", "not a valid name")
        self.expectProblem("name: x\nsteps:\n  - id: a\n    tool: t\n    retry: { max_attempts: 0 }\n", line: 5, column: 28, field: "steps[0].retry.max_attempts", "from 1 to 100")
        self.expectProblem("name: x\nsteps:\n  - id: a\n    tool: t\n    retry: { initial: 2m, max: 1s }\n", line: 5, column: 12, field: "steps[0].retry", "longer than max")
        self.expectProblem("name: x\ninputs: { n: { type: integer, default: abc } }\nsteps:\n  - id: a\n    tool: t\n", line: 2, column: 40, field: "inputs.n.default", "a string is not a integer")
        self.expectProblem("steps:\n  - id: a\n    tool: t\n", line: 1, column: 1, field: "name", "is required")
        self.expectProblem("name: x\nsteps: [\n", line: 3, column: 1, field: "", "does not parse")
    }

    @Test("a cycle is reported with its path")
    func cycles() {
        let source = "name: x\nsteps:\n  - id: a\n    tool: t\n    needs: [c]\n  - id: b\n    tool: t\n    needs: [a]\n  - id: c\n    tool: t\n    needs: [b]\n"
        self.expectProblem(source, line: 5, column: 12, field: "steps[0].needs", "cycle: a → c → b → a")
        self.expectProblem("name: x\nsteps:\n  - id: a\n    tool: t\n    needs: [a]\n", line: 5, column: 13, field: "steps[0].needs[0]", "cannot need itself")
    }

    @Test("expressions: syntax errors and unknown names at their place in the file; only upstream steps are visible")
    func expressions() {
        // The column of `+` inside the quoted template.
        self.expectProblem("name: x\nsteps:\n  - id: a\n    tool: t\n    with: { q: \"${{ inputs.topic + }}\" }\n", line: 5, column: 36, field: "steps[0].with.q", "where a value was expected")
        self.expectProblem(
            "name: x\ninputs: { topic: string }\nsteps:\n  - id: a\n    tool: t\n    with: { q: \"${{ inputs.topc }}\" }\n",
            line: 6, column: 28, field: "steps[0].with.q", #"did you mean "topic"?"#
        )
        self.expectProblem(
            "name: x\nsteps:\n  - id: search\n    tool: t\n  - id: b\n    tool: t\n    needs: [search]\n    when: steps.serch.status == 'succeeded'\n",
            line: 8, column: 17, field: "steps[1].when", #"unknown name "serch" in steps; did you mean "search"?"#
        )
        self.expectProblem(
            "name: x\nsteps:\n  - id: search\n    tool: t\n  - id: b\n    tool: t\n    with: { q: '${{ steps.search.output }}' }\n",
            line: 7, column: 27, field: "steps[1].with.q", "not upstream of this one; add it to needs"
        )
        self.expectProblem(
            "name: x\ninputs: { n: integer }\nsteps:\n  - id: a\n    tool: t\n    when: ${{ inputs.n.startsWith('x') }}\n",
            line: 6, column: 24, field: "steps[0].when", "startsWith() does not apply to a int"
        )
        self.expectProblem("name: x\nsteps:\n  - id: a\n    tool: t\noutputs: { r: '${{ steps.b.output }}' }\n", line: 5, column: 26, field: "outputs.r", #"unknown name "b" in steps"#)
        // Outputs see every step; conditions may be plain booleans.
        #expect(self.problems("name: x\nsteps:\n  - id: a\n    tool: t\n    when: true\noutputs: { r: '${{ steps.a.output }}' }\n").isEmpty)
    }

    @Test("hostile YAML: a billion laughs of aliases, deep nesting and oversized files are refused cheaply")
    func hostile() {
        var laughs = "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n"
        for level in 1 ... 9 {
            let previous = String(UnicodeScalar(UInt8(96 + level)))
            let name = String(UnicodeScalar(UInt8(97 + level)))
            laughs += "\(name): &\(name) [" + Array(repeating: "*\(previous)", count: 9).joined(separator: ",") + "]\n"
        }
        let started = ContinuousClock.now
        let laughed = self.problems(laughs)
        #expect(laughed.contains { $0.message.contains("nodes once its aliases are expanded") }, "\(laughed)")
        #expect(ContinuousClock.now - started < .seconds(10))

        let deep = "name: x\nsteps: " + String(repeating: "[", count: 200) + String(repeating: "]", count: 200) + "\n"
        #expect(self.problems(deep).contains { $0.message.contains("nests deeper than") })
        let big = "name: x\ndescription: \"" + String(repeating: "x", count: 600_000) + "\"\n"
        #expect(self.problems(big).first?.message.contains("larger than") == true)
        let many = "name: x\nsteps:\n" + (0 ..< 20).map { "  - { id: s\($0), tool: t }\n" }.joined()
        #expect(self.problems(many, limits: WorkflowLimits(maxSteps: 10)).contains { $0.message.contains("more than 10 steps") })
    }

    @Test("a run's timeout and estimated_cost read, keep the content hash of definitions without them, and refuse bad values with their place")
    func runLimits() throws {
        let plain = try WorkflowDefinition.read(Self.brief)
        #expect(plain.timeout == nil && plain.estimatedCostMicros == nil)
        let limited = try WorkflowDefinition.read("timeout: 1h30m\nestimated_cost: 0.25\n" + Self.brief)
        #expect(limited.timeout == .seconds(5400))
        #expect(limited.estimatedCostMicros == 250_000)
        #expect(limited.contentHash != plain.contentHash)
        // The canonical form reads back to the same definition, and a string amount is the same amount.
        #expect(try WorkflowDefinition.read(limited.canonicalJSON) == limited)
        #expect(try WorkflowDefinition.read("timeout: 90m\nestimated_cost: \"0.250000\"\n" + Self.brief).contentHash == limited.contentHash)
        // Without them, the canonical form (and so the content hash) is what it was before they existed.
        guard case .map(let top) = plain.canonicalValue else { Issue.record("not a map"); return }
        #expect(top.keys.sorted() == ["description", "inputs", "name", "outputs", "steps"])
        for (text, micros) in [("1", 1_000_000), ("0.000001", 1), ("12.5", 12_500_000), ("1000000", 1_000_000_000_000)] as [(String, Int64)] {
            #expect(try WorkflowDefinition.read("estimated_cost: \(text)\n" + Self.brief).estimatedCostMicros == micros, "\(text)")
        }
        for text in ["0", "-1", "0.0000001", "1000000.5", "1e3", "lots", ".5", "[1]"] {
            self.expectProblem("name: x\nestimated_cost: \(text)\nsteps: [{id: a, tool: t}]\n", line: 2, column: 17, field: "estimated_cost", "not an amount of dollars")
        }
        self.expectProblem("name: x\ntimeout: soon\nsteps: [{id: a, tool: t}]\n", line: 2, column: 10, field: "timeout", "not a duration")
    }

    @Test("durations read and print back")
    func durations() {
        for (text, milliseconds) in [("500ms", 500), ("2s", 2000), ("1m", 60_000), ("1h30m", 5_400_000), ("1d", 86_400_000)] as [(String, Int64)] {
            #expect(WorkflowDuration(parsing: text)?.milliseconds == milliseconds, "\(text)")
            #expect(WorkflowDuration(parsing: WorkflowDuration(milliseconds: milliseconds).description)?.milliseconds == milliseconds)
        }
        for text in ["", "5", "s", "1x", "1s1s", "0s", "-1s", "1.5s", "10000000000s"] {
            #expect(WorkflowDuration(parsing: text) == nil, "\(text)")
        }
    }
}

/// The work of validation is bounded: a dense DAG at the limits checks in a fraction of a second.
@Suite("Workflow validation cost")
struct WorkflowValidationCostTests {
    /// `steps` steps, each needing every step before it and reading two of them in templates.
    static func dense(_ steps: Int) -> String {
        var source = "name: dense\ninputs: { topic: { type: string } }\nsteps:\n"
        for index in 0 ..< steps {
            source += "  - id: s\(index)\n    tool: echo\n"
            if index > 0 {
                source += "    needs: [" + (0 ..< index).map { "s\($0)" }.joined(separator: ", ") + "]\n"
                source += "    with: { a: \"${{ steps.s\(index - 1).output.x }} and ${{ steps.s\(index / 2).output.y }} on ${{ inputs.topic }}\" }\n"
                source += "    when: \"${{ steps.s0.status == 'succeeded' }}\"\n"
            }
        }
        return source
    }

    @Test("a dense 290-step DAG (41,905 edges) validates in well under a second of CPU")
    func denseDAG() throws {
        let source = Self.dense(290)
        let clock = ContinuousClock()
        let elapsed = try clock.measure { _ = try WorkflowDefinition.read(source) }
        #expect(elapsed < .seconds(1), "validation took \(elapsed)")
    }
}
