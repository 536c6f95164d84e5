import SparkExpr
import Yams

/// A YAML (or JSON) document as a tree that remembers where each node was written, read with
/// aliases expanded under a node budget: a billion laughs stops at the budget, not at the
/// machine's memory.
indirect enum SourceNode {
    case scalar(String, quoted: Bool, at: SourceLocation)
    case mapping([(key: String, keyAt: SourceLocation, value: SourceNode)], at: SourceLocation)
    case sequence([SourceNode], at: SourceLocation)

    var location: SourceLocation {
        switch self {
        case .scalar(_, _, let at), .mapping(_, let at), .sequence(_, let at): return at
        }
    }

    var kindName: String {
        switch self {
        case .scalar: return "a scalar"
        case .mapping: return "a mapping"
        case .sequence: return "a list"
        }
    }

    /// The node as a JSON value: YAML 1.2 core types for plain scalars, strings for quoted ones.
    var value: ExprValue {
        switch self {
        case .scalar(let text, let quoted, _):
            guard !quoted else { return .string(text) }
            switch text {
            case "", "~", "null", "Null", "NULL": return .null
            case "true", "True", "TRUE": return .bool(true)
            case "false", "False", "FALSE": return .bool(false)
            default:
                // A number written as JSON writes it is read as JSON reads it, so that it keeps its
                // text (integers beyond 64 bits, 1.50, 1e400); YAML's other forms (+1, .5) as YAML.
                if let first = text.utf8.first, first == UInt8(ascii: "-") || (UInt8(ascii: "0") ... UInt8(ascii: "9")).contains(first),
                    let number = try? ExprValue(jsonText: text) {
                    return number
                }
                if let int = Int64(text) { return .int(int) }
                if text.first.map({ $0.isNumber || $0 == "-" || $0 == "+" || $0 == "." }) == true, let double = Double(text), double.isFinite {
                    return .double(double)
                }
                return .string(text)
            }
        case .mapping(let pairs, _):
            return .map(Dictionary(pairs.map { ($0.key, $0.value.value) }, uniquingKeysWith: { first, _ in first }))
        case .sequence(let nodes, _):
            return .list(nodes.map(\.value))
        }
    }
}

struct SourceTreeReader {
    let limits: WorkflowLimits
    var nodes = 0
    var problems: [WorkflowProblem] = []

    init(limits: WorkflowLimits) {
        self.limits = limits
    }

    /// Parses `source` as YAML (JSON is YAML too); nil with a problem when it does not parse or
    /// is over a limit.
    mutating func read(_ source: String) -> SourceNode? {
        guard source.utf8.count <= self.limits.maxSourceBytes else {
            self.problems.append(WorkflowProblem(line: 1, column: 1, field: "", message: "the definition is larger than \(self.limits.maxSourceBytes) bytes"))
            return nil
        }
        let root: Node?
        do {
            root = try Yams.compose(yaml: source)
        } catch let error as YamlError {
            self.problems.append(Self.problem(error))
            return nil
        } catch {
            self.problems.append(WorkflowProblem(line: 1, column: 1, field: "", message: "the definition does not parse: \(error)"))
            return nil
        }
        guard let root else {
            self.problems.append(WorkflowProblem(line: 1, column: 1, field: "", message: "the definition is empty"))
            return nil
        }
        return self.convert(root, depth: 0)
    }

    private mutating func convert(_ node: Node, depth: Int) -> SourceNode? {
        self.nodes += 1
        let at = SourceLocation(line: node.mark?.line ?? 1, column: node.mark?.column ?? 1)
        guard self.nodes <= self.limits.maxNodes else {
            if self.nodes == self.limits.maxNodes + 1 {
                self.problems.append(WorkflowProblem(line: at.line, column: at.column, field: "", message: "the definition has more than \(self.limits.maxNodes) nodes once its aliases are expanded"))
            }
            return nil
        }
        guard depth <= self.limits.maxDepth else {
            self.problems.append(WorkflowProblem(line: at.line, column: at.column, field: "", message: "the definition nests deeper than \(self.limits.maxDepth) levels"))
            return nil
        }
        switch node {
        case .scalar(let scalar):
            let quoted = scalar.style == .singleQuoted || scalar.style == .doubleQuoted
            // A quoted scalar's text starts after its quote, which is where expressions in it are counted from.
            let start = quoted ? SourceLocation(line: at.line, column: at.column + 1) : at
            return .scalar(scalar.string, quoted: quoted || scalar.style == .literal || scalar.style == .folded, at: start)
        case .mapping(let mapping):
            var pairs: [(key: String, keyAt: SourceLocation, value: SourceNode)] = []
            for (key, value) in mapping {
                let keyAt = SourceLocation(line: key.mark?.line ?? at.line, column: key.mark?.column ?? at.column)
                guard case .scalar(let scalar) = key else {
                    self.problems.append(WorkflowProblem(line: keyAt.line, column: keyAt.column, field: "", message: "mapping keys must be plain names"))
                    continue
                }
                if pairs.contains(where: { $0.key == scalar.string }) {
                    self.problems.append(WorkflowProblem(line: keyAt.line, column: keyAt.column, field: scalar.string, message: "\(scalar.string.debugDescription) is given twice"))
                    continue
                }
                guard let converted = self.convert(value, depth: depth + 1) else { return nil }
                pairs.append((scalar.string, keyAt, converted))
            }
            return .mapping(pairs, at: at)
        case .sequence(let sequence):
            var items: [SourceNode] = []
            for element in sequence {
                guard let converted = self.convert(element, depth: depth + 1) else { return nil }
                items.append(converted)
            }
            return .sequence(items, at: at)
        case .alias(let alias):
            // Compose resolves aliases into the nodes they name; one left over names nothing.
            self.problems.append(WorkflowProblem(line: at.line, column: at.column, field: "", message: "the alias \(alias) names no anchor"))
            return nil
        }
    }

    static func problem(_ error: YamlError) -> WorkflowProblem {
        switch error {
        case .scanner(_, let problem, let mark, _), .parser(_, let problem, let mark, _), .composer(_, let problem, let mark, _):
            return WorkflowProblem(line: mark.line, column: mark.column, field: "", message: "the YAML does not parse: \(problem)")
        default:
            return WorkflowProblem(line: 1, column: 1, field: "", message: "the YAML does not parse: \(error)")
        }
    }
}
