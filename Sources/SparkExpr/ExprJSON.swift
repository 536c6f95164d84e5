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
}

extension JSONScanner {
    /// The one value the text holds, with nothing but white space around it.
    mutating func document() throws(SyntaxError) -> ExprValue {
        let value = try self.value(depth: 0)
        self.skipSpace()
        guard self.isAtEnd else { throw self.error("text after the value") }
        return value
    }

    mutating func value(depth: Int) throws(SyntaxError) -> ExprValue {
        guard depth < ExprJSON.maxDepth else { throw self.error("nested deeper than \(ExprJSON.maxDepth) levels") }
        self.skipSpace()
        guard let byte = self.next else { throw self.error("the text ends where a value should be") }
        switch byte {
        case UInt8(ascii: "{"):
            var fields: [String: ExprValue] = [:]
            try self.members { (scanner: inout JSONScanner, key: String) throws(SyntaxError) in fields[key] = try scanner.value(depth: depth + 1) }
            return .map(fields)
        case UInt8(ascii: "["):
            var items: [ExprValue] = []
            try self.items { (scanner: inout JSONScanner, _: Int) throws(SyntaxError) in items.append(try scanner.value(depth: depth + 1)) }
            return .list(items)
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
            let (text, integral) = try self.number()
            if integral, text != "-0", let number = Int64(text) { return .int(number) }
            return ExprNumber.value(of: text)
        }
    }
}
