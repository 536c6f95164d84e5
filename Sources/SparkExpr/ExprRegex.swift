/// The regular expressions of `matches()`, run in time linear in the input (a Thompson NFA
/// simulation, as RE2 does): no pattern can make a policy or a workflow condition backtrack
/// forever. Syntax: literals, `.`, `[a-z]` and `[^…]` classes, `\d \w \s` and their negations,
/// `^ $`, groups `( )` and `(?: )`, `|`, and `* + ? {n} {n,} {n,m}`. `matches` finds the pattern
/// anywhere in the text unless it is anchored.
struct ExprRegex {
    static let maxPatternLength = 1000
    static let maxProgramSize = 10_000
    static let maxRepeat = 100

    struct CharacterClass {
        var ranges: [ClosedRange<UInt32>]
        var negated: Bool

        func matches(_ scalar: Unicode.Scalar) -> Bool {
            self.ranges.contains { $0.contains(scalar.value) } != self.negated
        }

        static let any = CharacterClass(ranges: [0x0A ... 0x0A], negated: true)
        static let digit = CharacterClass(ranges: [0x30 ... 0x39], negated: false)
        static let word = CharacterClass(ranges: [0x30 ... 0x39, 0x41 ... 0x5A, 0x5F ... 0x5F, 0x61 ... 0x7A], negated: false)
        static let space = CharacterClass(ranges: [0x09 ... 0x0D, 0x20 ... 0x20], negated: false)
    }

    enum Instruction {
        case character(CharacterClass)
        case split(Int, Int)
        case jump(Int)
        case lineStart
        case lineEnd
        case match
    }

    indirect enum Node {
        case empty
        case character(CharacterClass)
        case start, end
        case sequence([Node])
        case alternation([Node])
        case repeated(Node, min: Int, max: Int?)
    }

    let program: [Instruction]

    init(_ pattern: String, at location: SourceLocation) throws(ExprError) {
        let scalars = Array(pattern.unicodeScalars)
        guard scalars.count <= Self.maxPatternLength else {
            throw ExprError(.limit, "a pattern longer than \(Self.maxPatternLength) characters", at: location)
        }
        var parser = PatternParser(scalars: scalars, location: location)
        let node = try parser.alternation()
        guard parser.position == scalars.count else {
            throw parser.error("an unbalanced \")\"")
        }
        var program: [Instruction] = []
        try Self.emit(node, into: &program, at: location)
        program.append(.match)
        self.program = program
    }

    static func emit(_ node: Node, into program: inout [Instruction], at location: SourceLocation) throws(ExprError) {
        guard program.count < Self.maxProgramSize else {
            throw ExprError(.limit, "the pattern compiles to more than \(Self.maxProgramSize) steps", at: location)
        }
        switch node {
        case .empty: break
        case .character(let set): program.append(.character(set))
        case .start: program.append(.lineStart)
        case .end: program.append(.lineEnd)
        case .sequence(let nodes):
            for child in nodes { try self.emit(child, into: &program, at: location) }
        case .alternation(let branches):
            var jumps: [Int] = []
            for (offset, branch) in branches.enumerated() {
                if offset < branches.count - 1 {
                    let split = program.count
                    program.append(.split(split + 1, 0))
                    try self.emit(branch, into: &program, at: location)
                    jumps.append(program.count)
                    program.append(.jump(0))
                    program[split] = .split(split + 1, program.count)
                } else {
                    try self.emit(branch, into: &program, at: location)
                }
            }
            for jump in jumps { program[jump] = .jump(program.count) }
        case .repeated(let child, let minimum, let maximum):
            for _ in 0 ..< minimum { try self.emit(child, into: &program, at: location) }
            if let maximum {
                for _ in minimum ..< maximum {
                    let split = program.count
                    program.append(.split(split + 1, 0))
                    try self.emit(child, into: &program, at: location)
                    program[split] = .split(split + 1, program.count)
                }
            } else {
                let split = program.count
                program.append(.split(split + 1, 0))
                try self.emit(child, into: &program, at: location)
                program.append(.jump(split))
                program[split] = .split(split + 1, program.count)
            }
        }
    }

    /// Whether the pattern matches somewhere in `text`. `budget` bounds the work (threads
    /// visited); past it the search stops with a limit error rather than running long.
    func search(_ text: String, budget: Int, at location: SourceLocation) throws(ExprError) -> Bool {
        let input = Array(text.unicodeScalars)
        var current: [Int] = []
        var next: [Int] = []
        var marks = [Int](repeating: -1, count: self.program.count)
        var generation = 0
        var work = 0
        var stack: [Int] = []

        func add(_ start: Int, to list: inout [Int], position: Int) throws(ExprError) -> Bool {
            stack.append(start)
            while let pc = stack.popLast() {
                guard marks[pc] != generation else { continue }
                marks[pc] = generation
                work += 1
                if work > budget {
                    throw ExprError(.limit, "matches() needs more than \(budget) steps for this text and pattern", at: location)
                }
                switch self.program[pc] {
                case .jump(let target): stack.append(target)
                case .split(let first, let second):
                    stack.append(second)
                    stack.append(first)
                case .lineStart: if position == 0 { stack.append(pc + 1) }
                case .lineEnd: if position == input.count { stack.append(pc + 1) }
                case .match:
                    stack.removeAll()
                    return true
                case .character: list.append(pc)
                }
            }
            return false
        }

        generation = 1
        if try add(0, to: &current, position: 0) { return true }
        for position in 0 ..< input.count {
            // One generation per position: the threads that step over this character, and (the
            // search is unanchored) a new attempt starting after it.
            generation += 1
            next.removeAll(keepingCapacity: true)
            for pc in current {
                if case .character(let set) = self.program[pc], set.matches(input[position]) {
                    if try add(pc + 1, to: &next, position: position + 1) { return true }
                }
            }
            if try add(0, to: &next, position: position + 1) { return true }
            swap(&current, &next)
        }
        return false
    }
}

/// Recursive descent over a pattern; nesting is bounded by the pattern's length limit.
struct PatternParser {
    let scalars: [Unicode.Scalar]
    let location: SourceLocation
    var position = 0
    var depth = 0

    func error(_ message: String) -> ExprError {
        ExprError(.syntax, "pattern: \(message) (offset \(self.position))", at: self.location)
    }

    mutating func alternation() throws(ExprError) -> ExprRegex.Node {
        self.depth += 1
        defer { self.depth -= 1 }
        guard self.depth <= 64 else { throw self.error("groups nest too deep") }
        var branches = [try self.sequence()]
        while self.position < self.scalars.count && self.scalars[self.position] == "|" {
            self.position += 1
            branches.append(try self.sequence())
        }
        return branches.count == 1 ? branches[0] : .alternation(branches)
    }

    mutating func sequence() throws(ExprError) -> ExprRegex.Node {
        var items: [ExprRegex.Node] = []
        while self.position < self.scalars.count, self.scalars[self.position] != "|", self.scalars[self.position] != ")" {
            var atom = try self.atom()
            while self.position < self.scalars.count {
                let quantifier = self.scalars[self.position]
                let bounds: (Int, Int?)
                switch quantifier {
                case "*": bounds = (0, nil)
                case "+": bounds = (1, nil)
                case "?": bounds = (0, 1)
                case "{": bounds = try self.braces() ?? (-1, nil)  // a brace that is no count is a literal
                default: bounds = (-1, nil)
                }
                if bounds.0 < 0 { break }
                if quantifier != "{" { self.position += 1 }
                switch atom {
                case .start, .end, .empty: throw self.error("nothing to repeat")
                default: atom = .repeated(atom, min: bounds.0, max: bounds.1)
                }
            }
            items.append(atom)
        }
        return items.count == 1 ? items[0] : (items.isEmpty ? .empty : .sequence(items))
    }

    /// `{n}`, `{n,}` or `{n,m}` at the position; nil (and no move) when the brace is a literal.
    mutating func braces() throws(ExprError) -> (Int, Int?)? {
        var cursor = self.position + 1
        func number() -> Int? {
            var digits = ""
            while cursor < self.scalars.count, ("0"..."9").contains(self.scalars[cursor]) {
                digits.unicodeScalars.append(self.scalars[cursor])
                cursor += 1
            }
            return digits.isEmpty ? nil : Int(digits.prefix(4))
        }
        guard let minimum = number() else { return nil }
        var maximum: Int? = minimum
        if cursor < self.scalars.count && self.scalars[cursor] == "," {
            cursor += 1
            maximum = number()
        }
        guard cursor < self.scalars.count && self.scalars[cursor] == "}" else { return nil }
        guard minimum <= ExprRegex.maxRepeat && (maximum ?? 0) <= ExprRegex.maxRepeat else {
            throw self.error("a repeat count above \(ExprRegex.maxRepeat)")
        }
        if let maximum, maximum < minimum { throw self.error("{\(minimum),\(maximum)} counts down") }
        self.position = cursor + 1
        return (minimum, maximum)
    }

    mutating func atom() throws(ExprError) -> ExprRegex.Node {
        let scalar = self.scalars[self.position]
        self.position += 1
        switch scalar {
        case ".": return .character(.any)
        case "^": return .start
        case "$": return .end
        case "(":
            if self.position + 1 < self.scalars.count && self.scalars[self.position] == "?" && self.scalars[self.position + 1] == ":" {
                self.position += 2
            }
            let inner = try self.alternation()
            guard self.position < self.scalars.count && self.scalars[self.position] == ")" else { throw self.error("a group without \")\"") }
            self.position += 1
            return inner
        case "[": return .character(try self.characterClass())
        case "\\": return .character(try self.escape(inClass: false))
        case "*", "+", "?": throw self.error("nothing to repeat")
        default: return .character(.init(ranges: [scalar.value ... scalar.value], negated: false))
        }
    }

    mutating func escape(inClass: Bool) throws(ExprError) -> ExprRegex.CharacterClass {
        guard self.position < self.scalars.count else { throw self.error("a pattern that ends with \\") }
        let scalar = self.scalars[self.position]
        self.position += 1
        switch scalar {
        case "d": return .digit
        case "w": return .word
        case "s": return .space
        case "D": return .init(ranges: ExprRegex.CharacterClass.digit.ranges, negated: true)
        case "W": return .init(ranges: ExprRegex.CharacterClass.word.ranges, negated: true)
        case "S": return .init(ranges: ExprRegex.CharacterClass.space.ranges, negated: true)
        case "n": return .init(ranges: [0x0A ... 0x0A], negated: false)
        case "t": return .init(ranges: [0x09 ... 0x09], negated: false)
        case "r": return .init(ranges: [0x0D ... 0x0D], negated: false)
        default:
            guard !(("a"..."z").contains(scalar) || ("A"..."Z").contains(scalar) || ("0"..."9").contains(scalar)) else {
                throw self.error("unsupported escape \\\(scalar)")
            }
            return .init(ranges: [scalar.value ... scalar.value], negated: false)
        }
    }

    mutating func characterClass() throws(ExprError) -> ExprRegex.CharacterClass {
        var negated = false
        if self.position < self.scalars.count && self.scalars[self.position] == "^" {
            negated = true
            self.position += 1
        }
        var ranges: [ClosedRange<UInt32>] = []
        var first = true
        while true {
            guard self.position < self.scalars.count else { throw self.error("a class without \"]\"") }
            let scalar = self.scalars[self.position]
            if scalar == "]" && !first {
                self.position += 1
                return .init(ranges: ranges, negated: negated)
            }
            first = false
            self.position += 1
            var low: UInt32
            if scalar == "\\" {
                let escaped = try self.escape(inClass: true)
                guard !escaped.negated, escaped.ranges.count == 1, escaped.ranges[0].count == 1 else {
                    ranges += escaped.negated ? [] : escaped.ranges
                    if escaped.negated { throw self.error("a negated class escape inside [ ]") }
                    continue
                }
                low = escaped.ranges[0].lowerBound
            } else {
                low = scalar.value
            }
            if self.position + 1 < self.scalars.count && self.scalars[self.position] == "-" && self.scalars[self.position + 1] != "]" {
                self.position += 1
                var high = self.scalars[self.position].value
                self.position += 1
                if high == 0x5C {  // backslash
                    let escaped = try self.escape(inClass: true)
                    guard escaped.ranges.count == 1, escaped.ranges[0].count == 1 else { throw self.error("a class range ends in a class") }
                    high = escaped.ranges[0].lowerBound
                }
                guard low <= high else { throw self.error("a class range that counts down") }
                ranges.append(low ... high)
            } else {
                ranges.append(low ... low)
            }
        }
    }
}

/// A regular expression of the `matches()` syntax, compiled once, for other modules (JSON
/// Schema's `pattern`): linear time, searched anywhere in the text unless anchored.
public struct ExprPattern: Sendable {
    let regex: ExprRegex
    public let source: String

    public init(_ pattern: String) throws(ExprError) {
        self.regex = try ExprRegex(pattern, at: .start)
        self.source = pattern
    }

    /// Whether the pattern is found in `text`; false when matching would pass `budget` steps.
    public func matches(_ text: String, budget: Int = 1_000_000) -> Bool {
        (try? self.regex.search(text, budget: budget, at: .start)) ?? false
    }
}
