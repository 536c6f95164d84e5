extension Expr {
    /// Parses `source`, or throws the first syntax error with its line and column.
    ///
    /// Grammar, loosest first: `a ? b : c`, `||`, `&&`, comparisons and `in` (which do not chain),
    /// `+ -`, `* / %`, unary `! -`, then member access, indexing and calls on literals, names,
    /// lists and parentheses.
    public static func parse(_ source: String, limits: ExprLimits = .default) throws(ExprError) -> Expr {
        guard source.unicodeScalars.count <= limits.maxSourceLength else {
            throw ExprError(.limit, "the expression is longer than \(limits.maxSourceLength) characters", at: .start)
        }
        var parser = Parser(tokens: try Lexer.tokens(source), limits: limits)
        let expr = try parser.expression()
        guard case .end = parser.current.kind else {
            throw ExprError(.syntax, "unexpected \(parser.current.kind.text) after the expression", at: parser.current.location)
        }
        return expr
    }
}

struct Parser {
    let tokens: [Token]
    let limits: ExprLimits
    var position = 0
    var depth = 0

    init(tokens: [Token], limits: ExprLimits) {
        self.tokens = tokens
        self.limits = limits
    }

    var current: Token { self.tokens[self.position] }

    mutating func advance() -> Token {
        let token = self.tokens[self.position]
        if self.position < self.tokens.count - 1 { self.position += 1 }
        return token
    }

    func isSymbol(_ symbol: String) -> Bool {
        if case .symbol(symbol) = self.current.kind { return true }
        return false
    }

    mutating func expect(_ symbol: String, _ context: String) throws(ExprError) {
        guard self.isSymbol(symbol) else {
            throw ExprError(.syntax, "expected \"\(symbol)\" \(context), found \(self.current.kind.text)", at: self.current.location)
        }
        _ = self.advance()
    }

    /// Counts nesting, so that `((((…))))` or `!!!!…x` deeper than the limit is refused, not a stack overflow.
    mutating func nested<T>(_ location: SourceLocation, _ body: (inout Parser) throws(ExprError) -> T) throws(ExprError) -> T {
        self.depth += 1
        defer { self.depth -= 1 }
        guard self.depth <= self.limits.maxDepth else {
            throw ExprError(.limit, "the expression nests deeper than \(self.limits.maxDepth) levels", at: location)
        }
        return try body(&self)
    }

    mutating func expression() throws(ExprError) -> Expr {
        try self.nested(self.current.location) { (parser: inout Parser) throws(ExprError) -> Expr in
            let condition = try parser.binary(level: 1)
            guard parser.isSymbol("?") else { return condition }
            let question = parser.advance()
            let then = try parser.expression()
            try parser.expect(":", "between the branches of ?:")
            let otherwise = try parser.expression()
            return Expr(.conditional(condition, then, otherwise), at: question.location)
        }
    }

    static let levels: [Int: [BinaryOperator]] = Dictionary(grouping: BinaryOperator.allCases, by: \.precedence)

    mutating func binaryOperator(level: Int) -> BinaryOperator? {
        let text: String
        switch self.current.kind {
        case .symbol(let symbol): text = symbol
        case .keyword("in"): text = "in"
        default: return nil
        }
        return Self.levels[level]?.first { $0.rawValue == text }
    }

    mutating func binary(level: Int) throws(ExprError) -> Expr {
        guard level <= 5 else { return try self.unary() }
        var left = try self.binary(level: level + 1)
        var chained = 0
        while let op = self.binaryOperator(level: level) {
            if level == 3 && chained > 0 {
                throw ExprError(.syntax, "comparisons do not chain; add parentheses or &&", at: self.current.location)
            }
            // `a + b + c …` nests to the left: each link is a level of the tree.
            if self.depth + chained + 1 > self.limits.maxDepth {
                throw ExprError(.limit, "the expression nests deeper than \(self.limits.maxDepth) levels", at: self.current.location)
            }
            let location = self.advance().location
            let right = try self.nested(location) { (parser: inout Parser) throws(ExprError) -> Expr in try parser.binary(level: level + 1) }
            left = Expr(.binary(op, left, right), at: location)
            chained += 1
        }
        return left
    }

    mutating func unary() throws(ExprError) -> Expr {
        let token = self.current
        if case .symbol(let symbol) = token.kind, let op = UnaryOperator(rawValue: symbol) {
            _ = self.advance()
            // `-` right before a number is part of the number, so that -9223372036854775808 reads.
            if op == .negate {
                switch self.current.kind {
                case .int(let digits):
                    let location = self.advance().location
                    guard let value = Int64("-" + digits) else {
                        throw ExprError(.syntax, "the integer -\(digits) is out of range", at: location)
                    }
                    return try self.postfix(Expr(.literal(.int(value)), at: token.location))
                case .double(let value):
                    _ = self.advance()
                    return try self.postfix(Expr(.literal(.double(-value)), at: token.location))
                default:
                    break
                }
            }
            let operand = try self.nested(token.location) { (parser: inout Parser) throws(ExprError) -> Expr in try parser.unary() }
            return Expr(.unary(op, operand), at: token.location)
        }
        return try self.postfix(try self.primary())
    }

    mutating func postfix(_ base: Expr) throws(ExprError) -> Expr {
        var expr = base
        var links = 0
        while true {
            links += 1
            if self.depth + links > self.limits.maxDepth {
                throw ExprError(.limit, "the expression nests deeper than \(self.limits.maxDepth) levels", at: self.current.location)
            }
            if self.isSymbol(".") {
                _ = self.advance()
                let name: String
                switch self.current.kind {
                case .identifier(let text), .keyword(let text): name = text
                default: throw ExprError(.syntax, "expected a name after \".\", found \(self.current.kind.text)", at: self.current.location)
                }
                let nameToken = self.advance()
                if self.isSymbol("(") {
                    guard let function = ExprFunction(rawValue: name) else {
                        throw ExprError(.syntax, "unknown function \(name.debugDescription); known: \(ExprFunction.allCases.map(\.rawValue).joined(separator: ", "))", at: nameToken.location)
                    }
                    let arguments = try self.arguments()
                    guard arguments.count == function.methodArity else {
                        throw ExprError(.syntax, "\(name)() on a value takes \(function.methodArity) argument\(function.methodArity == 1 ? "" : "s"), not \(arguments.count)", at: nameToken.location)
                    }
                    expr = Expr(.call(target: expr, function: function, arguments: arguments), at: nameToken.location)
                } else {
                    // Located at the name, which is what an unknown-name error points at.
                    expr = Expr(.member(expr, name), at: nameToken.location)
                }
            } else if self.isSymbol("[") {
                let bracket = self.advance()
                let index = try self.nested(bracket.location) { (parser: inout Parser) throws(ExprError) -> Expr in try parser.expression() }
                try self.expect("]", "to close the index")
                expr = Expr(.index(expr, index), at: bracket.location)
            } else {
                return expr
            }
        }
    }

    mutating func arguments() throws(ExprError) -> [Expr] {
        let open = self.advance()
        var arguments: [Expr] = []
        if self.isSymbol(")") {
            _ = self.advance()
            return arguments
        }
        while true {
            arguments.append(try self.nested(open.location) { (parser: inout Parser) throws(ExprError) -> Expr in try parser.expression() })
            if self.isSymbol(")") {
                _ = self.advance()
                return arguments
            }
            try self.expect(",", "between arguments")
        }
    }

    mutating func primary() throws(ExprError) -> Expr {
        let token = self.advance()
        switch token.kind {
        case .int(let digits):
            guard let value = Int64(digits) else { throw ExprError(.syntax, "the integer \(digits) is out of range", at: token.location) }
            return Expr(.literal(.int(value)), at: token.location)
        case .double(let value):
            return Expr(.literal(.double(value)), at: token.location)
        case .string(let text):
            return Expr(.literal(.string(text)), at: token.location)
        case .keyword("true"): return Expr(.literal(.bool(true)), at: token.location)
        case .keyword("false"): return Expr(.literal(.bool(false)), at: token.location)
        case .keyword("null"): return Expr(.literal(.null), at: token.location)
        case .identifier(let name):
            guard self.isSymbol("(") else { return Expr(.identifier(name), at: token.location) }
            guard let function = ExprFunction(rawValue: name) else {
                throw ExprError(.syntax, "unknown function \(name.debugDescription); known: \(ExprFunction.allCases.map(\.rawValue).joined(separator: ", "))", at: token.location)
            }
            let arguments = try self.arguments()
            guard arguments.count == function.methodArity + 1 else {
                throw ExprError(.syntax, "\(name)() takes \(function.methodArity + 1) argument\(function.methodArity == 0 ? "" : "s"), not \(arguments.count)", at: token.location)
            }
            return Expr(.call(target: nil, function: function, arguments: arguments), at: token.location)
        case .symbol("("):
            let inner = try self.nested(token.location) { (parser: inout Parser) throws(ExprError) -> Expr in try parser.expression() }
            try self.expect(")", "to close the parenthesis opened at \(token.location)")
            return inner
        case .symbol("["):
            var elements: [Expr] = []
            if self.isSymbol("]") {
                _ = self.advance()
                return Expr(.list(elements), at: token.location)
            }
            while true {
                elements.append(try self.nested(token.location) { (parser: inout Parser) throws(ExprError) -> Expr in try parser.expression() })
                if self.isSymbol("]") {
                    _ = self.advance()
                    return Expr(.list(elements), at: token.location)
                }
                try self.expect(",", "between list elements")
            }
        case .end:
            throw ExprError(.syntax, "the expression ends where a value was expected", at: token.location)
        default:
            throw ExprError(.syntax, "unexpected \(token.kind.text) where a value was expected", at: token.location)
        }
    }
}

extension Token.Kind {
    /// The token as an error message shows it.
    var text: String {
        switch self {
        case .identifier(let name): return "name \(name.debugDescription)"
        case .int(let digits): return "number \(digits)"
        case .double(let value): return "number \(value)"
        case .string: return "a string"
        case .keyword(let word): return "\"\(word)\""
        case .symbol(let symbol): return "\"\(symbol)\""
        case .end: return "the end of the expression"
        }
    }
}
