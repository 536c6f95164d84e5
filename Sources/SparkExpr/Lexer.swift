/// One token of an expression, with where it starts.
struct Token: Sendable, Equatable {
    enum Kind: Sendable, Equatable {
        case identifier(String)
        case int(String)  // digits only; the sign is the parser's
        case double(Double)
        case string(String)
        case keyword(String)  // true, false, null, in
        case symbol(String)
        case end
    }

    var kind: Kind
    var location: SourceLocation
}

/// Turns source text into tokens, refusing anything it does not know with its location.
struct Lexer {
    static let keywords: Set<String> = ["true", "false", "null", "in"]
    /// Longest first, so that `<=` is not read as `<` then `=`.
    static let symbols = ["&&", "||", "==", "!=", "<=", ">=", "<", ">", "!", "+", "-", "*", "/", "%", "(", ")", "[", "]", ".", ",", "?", ":"]

    private let scalars: [Unicode.Scalar]
    private var position = 0
    private var line = 1
    private var column = 1

    init(_ source: String) {
        self.scalars = Array(source.unicodeScalars)
    }

    static func tokens(_ source: String) throws(ExprError) -> [Token] {
        var lexer = Lexer(source)
        var tokens: [Token] = []
        while true {
            let token = try lexer.next()
            tokens.append(token)
            if token.kind == .end { return tokens }
        }
    }

    private var location: SourceLocation { SourceLocation(line: self.line, column: self.column) }

    private func peek(_ offset: Int = 0) -> Unicode.Scalar? {
        self.position + offset < self.scalars.count ? self.scalars[self.position + offset] : nil
    }

    private mutating func advance() -> Unicode.Scalar {
        let scalar = self.scalars[self.position]
        self.position += 1
        if scalar == "\n" {
            self.line += 1
            self.column = 1
        } else {
            self.column += 1
        }
        return scalar
    }

    mutating func next() throws(ExprError) -> Token {
        while let scalar = self.peek(), scalar == " " || scalar == "\t" || scalar == "\n" || scalar == "\r" {
            _ = self.advance()
        }
        let start = self.location
        guard let scalar = self.peek() else { return Token(kind: .end, location: start) }
        if scalar == "_" || ("a"..."z").contains(scalar) || ("A"..."Z").contains(scalar) {
            var name = ""
            while let next = self.peek(), next == "_" || ("a"..."z").contains(next) || ("A"..."Z").contains(next) || ("0"..."9").contains(next) {
                name.unicodeScalars.append(self.advance())
            }
            return Token(kind: Self.keywords.contains(name) ? .keyword(name) : .identifier(name), location: start)
        }
        if ("0"..."9").contains(scalar) {
            return try self.number(start)
        }
        if scalar == "\"" || scalar == "'" {
            return try self.string(start)
        }
        for symbol in Self.symbols {
            let symbolScalars = Array(symbol.unicodeScalars)
            if symbolScalars.indices.allSatisfy({ self.peek($0) == symbolScalars[$0] }) {
                for _ in symbolScalars { _ = self.advance() }
                return Token(kind: .symbol(symbol), location: start)
            }
        }
        if scalar == "=" {
            throw ExprError(.syntax, "unexpected \"=\"; compare with \"==\"", at: start)
        }
        if scalar == "&" || scalar == "|" {
            throw ExprError(.syntax, "unexpected \"\(scalar)\"; write \"\(scalar)\(scalar)\"", at: start)
        }
        throw ExprError(.syntax, "unexpected character \(Self.describe(scalar))", at: start)
    }

    private mutating func number(_ start: SourceLocation) throws(ExprError) -> Token {
        var text = ""
        var isDouble = false
        while let next = self.peek(), ("0"..."9").contains(next) { text.unicodeScalars.append(self.advance()) }
        if self.peek() == ".", let after = self.peek(1), ("0"..."9").contains(after) {
            isDouble = true
            text.unicodeScalars.append(self.advance())
            while let next = self.peek(), ("0"..."9").contains(next) { text.unicodeScalars.append(self.advance()) }
        }
        if self.peek() == "e" || self.peek() == "E" {
            let sign = self.peek(1) == "+" || self.peek(1) == "-"
            if let digit = self.peek(sign ? 2 : 1), ("0"..."9").contains(digit) {
                isDouble = true
                text.unicodeScalars.append(self.advance())
                if sign { text.unicodeScalars.append(self.advance()) }
                while let next = self.peek(), ("0"..."9").contains(next) { text.unicodeScalars.append(self.advance()) }
            }
        }
        if let next = self.peek(), next == "_" || ("a"..."z").contains(next) || ("A"..."Z").contains(next) {
            throw ExprError(.syntax, "a number runs into \(Self.describe(next))", at: self.location)
        }
        guard isDouble else { return Token(kind: .int(text), location: start) }
        guard let value = Double(text), value.isFinite else {
            throw ExprError(.syntax, "the number \(text) is out of range", at: start)
        }
        return Token(kind: .double(value), location: start)
    }

    private mutating func string(_ start: SourceLocation) throws(ExprError) -> Token {
        let quote = self.advance()
        var value = ""
        while true {
            guard let scalar = self.peek() else { throw ExprError(.syntax, "the string has no closing \(quote)", at: start) }
            if scalar == "\n" { throw ExprError(.syntax, "the string has no closing \(quote) on its line", at: start) }
            let escapeAt = self.location
            _ = self.advance()
            if scalar == quote { return Token(kind: .string(value), location: start) }
            guard scalar == "\\" else {
                value.unicodeScalars.append(scalar)
                continue
            }
            guard let escaped = self.peek() else { throw ExprError(.syntax, "the string has no closing \(quote)", at: start) }
            _ = self.advance()
            switch escaped {
            case "n": value += "\n"
            case "t": value += "\t"
            case "r": value += "\r"
            case "\\", "\"", "'": value.unicodeScalars.append(escaped)
            case "u", "U":
                let digits = escaped == "u" ? 4 : 8
                var hex = ""
                for _ in 0 ..< digits {
                    guard let digit = self.peek(), digit.properties.isASCIIHexDigit else {
                        throw ExprError(.syntax, "\\\(escaped) takes \(digits) hex digits", at: escapeAt)
                    }
                    hex.unicodeScalars.append(self.advance())
                }
                guard let code = UInt32(hex, radix: 16), let decoded = Unicode.Scalar(code) else {
                    throw ExprError(.syntax, "\\\(escaped)\(hex) is not a Unicode scalar", at: escapeAt)
                }
                value.unicodeScalars.append(decoded)
            default:
                throw ExprError(.syntax, "unknown escape \\\(escaped)", at: escapeAt)
            }
        }
    }

    static func describe(_ scalar: Unicode.Scalar) -> String {
        scalar.value < 0x20 || scalar.value == 0x7F || scalar.properties.isWhitespace
            ? "U+\(String(scalar.value, radix: 16, uppercase: true))"
            : "\"\(scalar)\""
    }
}
