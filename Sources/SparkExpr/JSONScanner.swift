/// A reader of JSON text (RFC 8259), token by token, without Foundation: what ``ExprValue``'s
/// reader and the splicing of JSON fields into messages (SparkProto's `SparkJSON`) both read with.
/// Every method checks the syntax it reads and throws ``SyntaxError`` at the first fault.
public struct JSONScanner: Sendable {
    public struct SyntaxError: Error, CustomStringConvertible, Sendable {
        public var offset: Int
        public var reason: String
        public var description: String { "not JSON at byte \(self.offset): \(self.reason)" }
    }

    public let bytes: [UInt8]
    public var index = 0

    public init(_ bytes: [UInt8]) {
        self.bytes = bytes
    }

    public init(_ text: String) {
        self.bytes = Array(text.utf8)
    }

    public var isAtEnd: Bool { self.index >= self.bytes.count }

    /// The next byte, if any.
    public var next: UInt8? { self.index < self.bytes.count ? self.bytes[self.index] : nil }

    public func error(_ reason: String) -> SyntaxError {
        SyntaxError(offset: self.index, reason: reason)
    }

    public mutating func skipSpace() {
        while self.index < self.bytes.count {
            switch self.bytes[self.index] {
            case UInt8(ascii: " "), UInt8(ascii: "\n"), UInt8(ascii: "\r"), UInt8(ascii: "\t"): self.index += 1
            default: return
            }
        }
    }

    /// Whether the next byte is `byte`, stepping over it when `consume`.
    public mutating func peek(_ byte: UInt8, consume: Bool = true) -> Bool {
        guard self.index < self.bytes.count, self.bytes[self.index] == byte else { return false }
        if consume { self.index += 1 }
        return true
    }

    /// Steps over white space and then `byte`, or throws.
    public mutating func expect(_ byte: UInt8, _ reason: String) throws(SyntaxError) {
        self.skipSpace()
        guard self.peek(byte) else { throw self.error(reason) }
    }

    public mutating func literal(_ word: StaticString) throws(SyntaxError) {
        let count = word.utf8CodeUnitCount
        guard self.index + count <= self.bytes.count else { throw self.error("unknown literal") }
        let expected = UnsafeBufferPointer(start: word.utf8Start, count: count)
        for offset in 0 ..< count where self.bytes[self.index + offset] != expected[offset] {
            throw self.error("unknown literal")
        }
        self.index += count
    }

    /// A number's text, and whether it is written without fraction or exponent.
    public mutating func number() throws(SyntaxError) -> (text: String, integral: Bool) {
        let start = self.index
        var integral = true
        func digits(_ scanner: inout JSONScanner) -> Int {
            let from = scanner.index
            while scanner.index < scanner.bytes.count, (UInt8(ascii: "0") ... UInt8(ascii: "9")).contains(scanner.bytes[scanner.index]) { scanner.index += 1 }
            return scanner.index - from
        }
        _ = self.peek(UInt8(ascii: "-"))
        let leading = self.index
        let whole = digits(&self)
        guard whole > 0 else { throw self.error("not a value") }
        guard whole == 1 || self.bytes[leading] != UInt8(ascii: "0") else { throw self.error("a number does not start with 0") }
        if self.peek(UInt8(ascii: ".")) {
            integral = false
            guard digits(&self) > 0 else { throw self.error("digits must follow '.'") }
        }
        if self.peek(UInt8(ascii: "e")) || self.peek(UInt8(ascii: "E")) {
            integral = false
            if !self.peek(UInt8(ascii: "+")) { _ = self.peek(UInt8(ascii: "-")) }
            guard digits(&self) > 0 else { throw self.error("digits must follow the exponent") }
        }
        return (String(decoding: self.bytes[start ..< self.index], as: UTF8.self), integral)
    }

    /// A string (the index at its opening quote), escapes decoded.
    public mutating func string() throws(SyntaxError) -> String {
        self.index += 1  // the opening quote
        var out: [UInt8] = []
        var runStart = self.index
        while true {
            guard self.index < self.bytes.count else { throw self.error("a string is not closed") }
            let byte = self.bytes[self.index]
            switch byte {
            case UInt8(ascii: "\""):
                out.append(contentsOf: self.bytes[runStart ..< self.index])
                self.index += 1
                // Validated UTF-8: invalid sequences become U+FFFD, as the text itself would.
                return String(decoding: out, as: UTF8.self)
            case UInt8(ascii: "\\"):
                out.append(contentsOf: self.bytes[runStart ..< self.index])
                self.index += 1
                guard self.index < self.bytes.count else { throw self.error("a string is not closed") }
                let escape = self.bytes[self.index]
                self.index += 1
                switch escape {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): out.append(escape)
                case UInt8(ascii: "b"): out.append(0x08)
                case UInt8(ascii: "f"): out.append(0x0C)
                case UInt8(ascii: "n"): out.append(0x0A)
                case UInt8(ascii: "r"): out.append(0x0D)
                case UInt8(ascii: "t"): out.append(0x09)
                case UInt8(ascii: "u"):
                    var scalar = try self.hex4()
                    if (0xD800 ... 0xDBFF).contains(scalar) {
                        // A high surrogate: its low half must follow.
                        guard self.peek(UInt8(ascii: "\\")), self.peek(UInt8(ascii: "u")) else { throw self.error("a lone surrogate") }
                        let low = try self.hex4()
                        guard (0xDC00 ... 0xDFFF).contains(low) else { throw self.error("a lone surrogate") }
                        scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                    } else if (0xDC00 ... 0xDFFF).contains(scalar) {
                        throw self.error("a lone surrogate")
                    }
                    out.append(contentsOf: String(Unicode.Scalar(scalar)!).utf8)
                default:
                    throw self.error("unknown escape")
                }
                runStart = self.index
            case 0 ..< 0x20:
                throw self.error("a control character in a string")
            default:
                self.index += 1
            }
        }
    }

    mutating func hex4() throws(SyntaxError) -> UInt32 {
        guard self.index + 4 <= self.bytes.count else { throw self.error("\\u needs four hex digits") }
        var value: UInt32 = 0
        for _ in 0 ..< 4 {
            let byte = self.bytes[self.index]
            let digit: UInt8
            switch byte {
            case UInt8(ascii: "0") ... UInt8(ascii: "9"): digit = byte - UInt8(ascii: "0")
            case UInt8(ascii: "a") ... UInt8(ascii: "f"): digit = byte - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A") ... UInt8(ascii: "F"): digit = byte - UInt8(ascii: "A") + 10
            default: throw self.error("\\u needs four hex digits")
            }
            value = value << 4 | UInt32(digit)
            self.index += 1
        }
        return value
    }

    /// Reads the members of an object (the index at its `{`), handing each key to `member`, which
    /// must read the member's value.
    public mutating func members(_ member: (inout JSONScanner, String) throws(SyntaxError) -> Void) throws(SyntaxError) {
        self.index += 1
        self.skipSpace()
        if self.peek(UInt8(ascii: "}")) { return }
        while true {
            self.skipSpace()
            guard self.peek(UInt8(ascii: "\""), consume: false) else { throw self.error("a key must be a string") }
            let key = try self.string()
            try self.expect(UInt8(ascii: ":"), "':' must follow a key")
            try member(&self, key)
            self.skipSpace()
            if self.peek(UInt8(ascii: ",")) { continue }
            if self.peek(UInt8(ascii: "}")) { return }
            throw self.error("',' or '}' must follow a member")
        }
    }

    /// Reads the items of a list (the index at its `[`), `item` reading each.
    public mutating func items(_ item: (inout JSONScanner, Int) throws(SyntaxError) -> Void) throws(SyntaxError) {
        self.index += 1
        self.skipSpace()
        if self.peek(UInt8(ascii: "]")) { return }
        var position = 0
        while true {
            try item(&self, position)
            position += 1
            self.skipSpace()
            if self.peek(UInt8(ascii: ",")) { continue }
            if self.peek(UInt8(ascii: "]")) { return }
            throw self.error("',' or ']' must follow an item")
        }
    }

    /// Steps over one value, checking its syntax; nesting deeper than `maxDepth` is refused.
    public mutating func skipValue(depth: Int = 0, maxDepth: Int = 512) throws(SyntaxError) {
        guard depth < maxDepth else { throw self.error("nested deeper than \(maxDepth) levels") }
        self.skipSpace()
        guard let byte = self.next else { throw self.error("the text ends where a value should be") }
        switch byte {
        case UInt8(ascii: "{"): try self.members { (scanner: inout JSONScanner, _: String) throws(SyntaxError) in try scanner.skipValue(depth: depth + 1, maxDepth: maxDepth) }
        case UInt8(ascii: "["): try self.items { (scanner: inout JSONScanner, _: Int) throws(SyntaxError) in try scanner.skipValue(depth: depth + 1, maxDepth: maxDepth) }
        case UInt8(ascii: "\""): _ = try self.string()
        case UInt8(ascii: "t"): try self.literal("true")
        case UInt8(ascii: "f"): try self.literal("false")
        case UInt8(ascii: "n"): try self.literal("null")
        default: _ = try self.number()
        }
    }
}
