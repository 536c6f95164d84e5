/// JSON text of ``ExprValue``s, read and written without Foundation: a run's state, its inputs,
/// outputs and step arguments go through here at every transition, and `JSONSerialization` (its
/// bridging to `NSDictionary`, and its locale-aware sorting of keys) cost several times more.
enum ExprJSON {
    /// Nesting deeper than this is refused when reading (a recursive reader must not be led to
    /// exhaust its stack).
    static let maxDepth = 512

    // MARK: Writing

    static func write(_ value: ExprValue, into out: inout [UInt8]) {
        switch value {
        case .null: out.append(contentsOf: "null".utf8)
        case .bool(let flag): out.append(contentsOf: (flag ? "true" : "false").utf8)
        case .int(let number): out.append(contentsOf: String(number).utf8)
        case .double(let number): out.append(contentsOf: Self.text(of: number).utf8)
        case .number(let text): out.append(contentsOf: text.utf8)
        case .string(let text): Self.quote(text, into: &out)
        case .list(let items):
            out.append(UInt8(ascii: "["))
            for (index, item) in items.enumerated() {
                if index > 0 { out.append(UInt8(ascii: ",")) }
                Self.write(item, into: &out)
            }
            out.append(UInt8(ascii: "]"))
        case .map(let fields):
            out.append(UInt8(ascii: "{"))
            // Keys in the order of their UTF-8 bytes: the same value always prints the same.
            let keys = fields.keys.sorted { $0.utf8.lexicographicallyPrecedes($1.utf8) }
            for (index, key) in keys.enumerated() {
                if index > 0 { out.append(UInt8(ascii: ",")) }
                Self.quote(key, into: &out)
                out.append(UInt8(ascii: ":"))
                Self.write(fields[key]!, into: &out)
            }
            out.append(UInt8(ascii: "}"))
        }
    }

    /// A double as JSON: the shortest text that reads back as the same double, with its `.0` when
    /// it is whole (so that it reads back as a double, not an int); `null` for infinities and
    /// NaN, which JSON cannot hold.
    static func text(of number: Double) -> String {
        number.isFinite ? number.description : "null"
    }

    static func quote(_ text: String, into out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "\""): out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "\"")])
            case UInt8(ascii: "\\"): out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "\\")])
            case UInt8(ascii: "\n"): out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "n")])
            case UInt8(ascii: "\t"): out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "t")])
            case UInt8(ascii: "\r"): out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "r")])
            case 0 ..< 0x20, 0x7F:
                let hex = Array("0123456789ABCDEF".utf8)
                out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0"), hex[Int(byte >> 4)], hex[Int(byte & 0xF)]])
            default: out.append(byte)  // UTF-8 as it is, multi-byte sequences included
            }
        }
        out.append(UInt8(ascii: "\""))
    }

    // MARK: Reading

    struct SyntaxError: Error, CustomStringConvertible {
        var offset: Int
        var reason: String
        var description: String { "not JSON at byte \(self.offset): \(self.reason)" }
    }

    struct Reader {
        let bytes: [UInt8]
        var index = 0

        init(_ text: String) {
            self.bytes = Array(text.utf8)
        }

        /// The one value the text holds, with nothing but white space around it.
        mutating func document() throws(SyntaxError) -> ExprValue {
            let value = try self.value(depth: 0)
            self.skipSpace()
            guard self.index == self.bytes.count else { throw self.error("text after the value") }
            return value
        }

        func error(_ reason: String) -> SyntaxError {
            SyntaxError(offset: self.index, reason: reason)
        }

        mutating func skipSpace() {
            while self.index < self.bytes.count {
                switch self.bytes[self.index] {
                case UInt8(ascii: " "), UInt8(ascii: "\n"), UInt8(ascii: "\r"), UInt8(ascii: "\t"): self.index += 1
                default: return
                }
            }
        }

        mutating func value(depth: Int) throws(SyntaxError) -> ExprValue {
            guard depth < ExprJSON.maxDepth else { throw self.error("nested deeper than \(ExprJSON.maxDepth) levels") }
            self.skipSpace()
            guard self.index < self.bytes.count else { throw self.error("the text ends where a value should be") }
            switch self.bytes[self.index] {
            case UInt8(ascii: "{"):
                self.index += 1
                var fields: [String: ExprValue] = [:]
                self.skipSpace()
                if self.peek(UInt8(ascii: "}")) { return .map(fields) }
                while true {
                    self.skipSpace()
                    guard self.peek(UInt8(ascii: "\""), consume: false) else { throw self.error("a key must be a string") }
                    let key = try self.string()
                    self.skipSpace()
                    guard self.peek(UInt8(ascii: ":")) else { throw self.error("':' must follow a key") }
                    fields[key] = try self.value(depth: depth + 1)
                    self.skipSpace()
                    if self.peek(UInt8(ascii: ",")) { continue }
                    if self.peek(UInt8(ascii: "}")) { return .map(fields) }
                    throw self.error("',' or '}' must follow a member")
                }
            case UInt8(ascii: "["):
                self.index += 1
                var items: [ExprValue] = []
                self.skipSpace()
                if self.peek(UInt8(ascii: "]")) { return .list(items) }
                while true {
                    items.append(try self.value(depth: depth + 1))
                    self.skipSpace()
                    if self.peek(UInt8(ascii: ",")) { continue }
                    if self.peek(UInt8(ascii: "]")) { return .list(items) }
                    throw self.error("',' or ']' must follow an item")
                }
            case UInt8(ascii: "\""):
                return .string(try self.string())
            case UInt8(ascii: "t"):
                try self.literal("true")
                return .bool(true)
            case UInt8(ascii: "f"):
                try self.literal("false")
                return .bool(false)
            case UInt8(ascii: "n"):
                try self.literal("null")
                return .null
            default:
                return try self.number()
            }
        }

        /// Whether the next byte is `byte`, stepping over it when `consume`.
        mutating func peek(_ byte: UInt8, consume: Bool = true) -> Bool {
            guard self.index < self.bytes.count, self.bytes[self.index] == byte else { return false }
            if consume { self.index += 1 }
            return true
        }

        mutating func literal(_ word: StaticString) throws(SyntaxError) {
            let count = word.utf8CodeUnitCount
            guard self.index + count <= self.bytes.count else { throw self.error("unknown literal") }
            let expected = UnsafeBufferPointer(start: word.utf8Start, count: count)
            for offset in 0 ..< count where self.bytes[self.index + offset] != expected[offset] {
                throw self.error("unknown literal")
            }
            self.index += count
        }

        mutating func number() throws(SyntaxError) -> ExprValue {
            let start = self.index
            var integral = true
            func digits(_ reader: inout Reader) -> Int {
                let from = reader.index
                while reader.index < reader.bytes.count, (UInt8(ascii: "0") ... UInt8(ascii: "9")).contains(reader.bytes[reader.index]) { reader.index += 1 }
                return reader.index - from
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
            let text = String(decoding: self.bytes[start ..< self.index], as: UTF8.self)
            if integral, text != "-0", let number = Int64(text) { return .int(number) }
            return ExprNumber.value(of: text)
        }

        mutating func string() throws(SyntaxError) -> String {
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
    }
}
