import SparkExpr

extension WorkflowReader {
    /// Checks the definition as a whole: unique ids, `needs` that name steps, no cycles, and
    /// every expression against what it may see (its step's upstream steps, the declared inputs).
    mutating func validate(_ definition: WorkflowDefinition) {
        let ids = definition.steps.map(\.id)
        var seen: [String: Int] = [:]
        for (index, step) in definition.steps.enumerated() {
            if let first = seen[step.id] {
                self.problem("steps[\(index)].id", "the id \(step.id.debugDescription) is also step \(first + 1)'s", at: self.at("steps[\(index)].id"))
            } else {
                seen[step.id] = index
            }
        }
        for (index, step) in definition.steps.enumerated() {
            var listed: Set<String> = []
            for (offset, need) in step.needs.enumerated() {
                let isNew = listed.insert(need).inserted
                if need == step.id {
                    let field = "steps[\(index)].needs[\(offset)]"
                    self.problem(field, "a step cannot need itself", at: self.at(field))
                } else if seen[need] == nil {
                    let field = "steps[\(index)].needs[\(offset)]"
                    let hint = Self.closest(need, ids).map { "; did you mean \($0.debugDescription)?" } ?? ""
                    self.problem(field, "unknown step \(need.debugDescription)\(hint)", at: self.at(field))
                } else if !isNew {
                    let field = "steps[\(index)].needs[\(offset)]"
                    self.problem(field, "\(need.debugDescription) is listed twice", at: self.at(field))
                }
            }
        }
        if let cycle = Self.cycle(in: definition.steps), let first = cycle.first, let index = definition.steps.firstIndex(where: { $0.id == first }) {
            self.problem("steps[\(index)].needs", "the steps form a cycle: \(cycle.joined(separator: " → "))", at: self.at("steps[\(index)].needs"))
        }
        self.checkExpressions(definition)
    }

    /// Every step naming a tool or agent the project does not have.
    mutating func checkReferences(_ definition: WorkflowDefinition, _ references: WorkflowReferences) {
        for (index, step) in definition.steps.enumerated() {
            let (kind, name, known): (String, String, Set<String>?)
            switch step.kind {
            case .tool(let tool): (kind, name, known) = ("tool", tool, references.tools)
            case .agent(let agent): (kind, name, known) = ("agent", agent, references.agents)
            case .approval: continue
            }
            guard let known, !known.contains(name) else { continue }
            let field = "steps[\(index)].\(kind)"
            let hint = Self.closest(name, known.sorted()).map { "; did you mean \($0.debugDescription)?" } ?? ""
            self.problem(field, "the project has no \(kind) named \(name.debugDescription)\(hint)", at: self.at(field))
        }
    }

    func at(_ field: String) -> SourceLocation {
        self.locations[field] ?? .start
    }

    /// A cycle of `needs`, as the ids along it with the first repeated at the end; nil when the
    /// steps form a DAG.
    static func cycle(in steps: [WorkflowStep]) -> [String]? {
        let needs = Dictionary(steps.map { ($0.id, $0.needs) }, uniquingKeysWith: { first, _ in first })
        var state: [String: Int] = [:]  // 1: on the path, 2: done
        var path: [String] = []
        func visit(_ id: String) -> [String]? {
            if state[id] == 2 { return nil }
            if state[id] == 1 {
                let start = path.firstIndex(of: id)!
                return Array(path[start...]) + [id]
            }
            state[id] = 1
            path.append(id)
            // A step that needs itself is reported as such, not as a cycle.
            for need in needs[id] ?? [] where needs[need] != nil && need != id {
                if let cycle = visit(need) { return cycle }
            }
            path.removeLast()
            state[id] = 2
            return nil
        }
        for step in steps {
            if let cycle = visit(step.id) { return cycle }
        }
        return nil
    }

    /// Every step upstream of `id` (what its `needs` reach), for what its expressions may see.
    static func upstream(of id: String, in steps: [WorkflowStep]) -> Set<String> {
        let needs = Dictionary(steps.map { ($0.id, $0.needs) }, uniquingKeysWith: { first, _ in first })
        var found: Set<String> = []
        var pending = needs[id] ?? []
        while let next = pending.popLast() {
            guard found.insert(next).inserted else { continue }
            pending += needs[next] ?? []
        }
        found.remove(id)
        return found
    }

    static func schema(inputs: [WorkflowInput], steps: some Sequence<String>) -> ExprSchema {
        let step = ExprSchema.object(["output": .any, "status": .string, "attempts": .int, "error": .any])
        return .object([
            "inputs": .object(Dictionary(inputs.map { ($0.name, $0.type.schema) }, uniquingKeysWith: { first, _ in first })),
            "steps": .object(Dictionary(steps.map { ($0, step) }, uniquingKeysWith: { first, _ in first })),
        ])
    }

    /// What every step's `needs` reach, each computed once from its needs' own as bit sets, in
    /// an order where needs come first: a dense DAG of hundreds of steps and tens of thousands of
    /// edges costs a few milliseconds, not a traversal per step.
    static func upstreams(in steps: [WorkflowStep]) -> [String: Set<String>] {
        var position: [String: Int] = [:]
        for (index, step) in steps.enumerated() where position[step.id] == nil { position[step.id] = index }
        let words = (steps.count + 63) / 64
        var bits = [[UInt64]](repeating: [UInt64](repeating: 0, count: words), count: steps.count)
        var state = [UInt8](repeating: 0, count: steps.count)  // 1: on the path, 2: done
        func visit(_ index: Int) {
            guard state[index] == 0 else { return }  // done, or a cycle (reported elsewhere) closing here
            state[index] = 1
            for need in steps[index].needs {
                guard let other = position[need], other != index else { continue }
                visit(other)
                guard state[other] == 2 else { continue }
                for word in 0 ..< words { bits[index][word] |= bits[other][word] }
                bits[index][other / 64] |= 1 << UInt64(other % 64)
            }
            state[index] = 2
        }
        for index in steps.indices { visit(index) }
        var found: [String: Set<String>] = [:]
        for (index, step) in steps.enumerated() where found[step.id] == nil {
            var visible: Set<String> = []
            for word in 0 ..< words where bits[index][word] != 0 {
                var remaining = bits[index][word]
                while remaining != 0 {
                    let bit = remaining.trailingZeroBitCount
                    remaining &= remaining - 1
                    let other = word * 64 + bit
                    if other != index { visible.insert(steps[other].id) }
                }
            }
            found[step.id] = visible
        }
        return found
    }

    mutating func checkExpressions(_ definition: WorkflowDefinition) {
        let all = Set(definition.steps.map(\.id))
        let upstreams = Self.upstreams(in: definition.steps)
        for (index, step) in definition.steps.enumerated() {
            let visible = upstreams[step.id] ?? []
            let schema = Self.schema(inputs: definition.inputs, steps: visible)
            if let when = step.when {
                let field = "steps[\(index)].when"
                self.checkCondition(when, field: field, schema: schema, visible: visible, all: all)
            }
            self.checkTemplates(in: step.with, field: "steps[\(index)].with", schema: schema, visible: visible, all: all)
            if case .approval(let approval) = step.kind, !approval.message.isEmpty {
                let field = "steps[\(index)].approval.message"
                self.checkTemplate(approval.message, field: field, schema: schema, visible: visible, all: all)
            }
        }
        let everything = Self.schema(inputs: definition.inputs, steps: all)
        for output in definition.outputs {
            self.checkTemplate(output.template, field: "outputs.\(output.name)", schema: everything, visible: all, all: all)
        }
    }

    /// `when:` is an expression, with or without `${{ }}` around it.
    mutating func checkCondition(_ source: String, field: String, schema: ExprSchema, visible: Set<String>, all: Set<String>) {
        guard let expr = self.parseCondition(source, field: field, at: self.at(field)) else { return }
        self.report(expr.check(against: schema), expr: expr, field: field, visible: visible, all: all)
    }

    /// A condition (a step's or a rule's `when:`), with or without `${{ }}` around it, placed where
    /// it was written (`base`); nil, with the problem, when it does not parse.
    mutating func parseCondition(_ source: String, field: String, at base: SourceLocation, limits: ExprLimits = .default) -> Expr? {
        do {
            if source.contains("${{") {
                let template = try ExprTemplate.parse(source, base: base, limits: limits)
                guard template.parts.count == 1, let only = template.expressions.first else {
                    self.problem(field, "a condition is one ${{ … }} expression and nothing else", at: base)
                    return nil
                }
                return only
            }
            return try Expr.parse(source, limits: limits).relocated(by: base)
        } catch {
            let location = source.contains("${{") ? error.location : error.location.offset(by: base)
            self.problem(field, error.message, at: location)
            return nil
        }
    }

    mutating func checkTemplate(_ source: String, field: String, schema: ExprSchema, visible: Set<String>, all: Set<String>) {
        guard source.contains("${{") else { return }
        do {
            let template = try ExprTemplate.parse(source, base: self.at(field))
            for expr in template.expressions {
                self.report(expr.check(against: schema), expr: expr, field: field, visible: visible, all: all)
            }
        } catch {
            self.problem(field, error.message, at: error.location)
        }
    }

    mutating func checkTemplates(in value: ExprValue, field: String, schema: ExprSchema, visible: Set<String>, all: Set<String>) {
        switch value {
        case .string(let text): self.checkTemplate(text, field: field, schema: schema, visible: visible, all: all)
        case .list(let items):
            for (index, item) in items.enumerated() {
                self.checkTemplates(in: item, field: "\(field)[\(index)]", schema: schema, visible: visible, all: all)
            }
        case .map(let fields):
            for (key, item) in fields.sorted(by: { $0.key < $1.key }) {
                self.checkTemplates(in: item, field: "\(field).\(key)", schema: schema, visible: visible, all: all)
            }
        default: break
        }
    }

    /// The checker's problems, with one sharpened: a step that exists but is not upstream is not
    /// "unknown", it is missing from `needs`.
    mutating func report(_ problems: [ExprError], expr: Expr, field: String, visible: Set<String>, all: Set<String>) {
        let references = Self.stepReferences(in: expr)
        for problem in problems {
            if problem.code == .unknownName, let reference = references.first(where: { $0.location == problem.location }), all.contains(reference.id), !visible.contains(reference.id) {
                self.problem(field, "step \(reference.id.debugDescription) is not upstream of this one; add it to needs", at: problem.location)
            } else {
                self.problem(field, problem.message, at: problem.location)
            }
        }
    }

    /// `steps.<id>` (or `steps["<id>"]`) in the expression, with where the id is.
    static func stepReferences(in expr: Expr) -> [(id: String, location: SourceLocation)] {
        var found: [(String, SourceLocation)] = []
        func walk(_ expr: Expr) {
            switch expr.kind {
            case .member(let target, let name):
                if case .identifier("steps") = target.kind { found.append((name, expr.location)) }
                walk(target)
            case .index(let target, let index):
                if case .identifier("steps") = target.kind, case .literal(.string(let name)) = index.kind { found.append((name, index.location)) }
                walk(target)
                walk(index)
            case .call(let target, _, let arguments):
                if let target { walk(target) }
                arguments.forEach(walk)
            case .unary(_, let operand): walk(operand)
            case .binary(_, let left, let right):
                walk(left)
                walk(right)
            case .list(let elements): elements.forEach(walk)
            case .conditional(let a, let b, let c):
                walk(a)
                walk(b)
                walk(c)
            case .literal, .identifier: break
            }
        }
        walk(expr)
        return found
    }
}
