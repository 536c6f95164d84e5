public import SwiftProtobuf

/// A message that holds free-form JSON (`sparkops.common.v1.Json`), directly or through the
/// messages it holds; the conformances are generated (`SparkJSONShapes.sparkops.swift`).
public protocol SparkJSONShaped: SwiftProtobuf.Message {
    static var sparkJSONShape: SparkJSONShape { get }
}

/// Where a message holds free-form JSON: its fields that do, under both JSON spellings.
public final class SparkJSONShape: Sendable {
    public indirect enum Node: Sendable {
        /// A `sparkops.common.v1.Json`.
        case json
        /// A message holding JSON.
        case message(SparkJSONShape)
        /// A repeated field, each element of the node.
        case list(Node)
        /// A map, each value of the node.
        case map(Node)
    }

    public let fields: [String: Node]

    public init(fields: [String: Node]) {
        self.fields = fields
    }
}

/// SparkOps' JSON form of a message: protobuf's canonical JSON mapping, except that a
/// `sparkops.common.v1.Json` field is the JSON value its text holds, spliced in byte for byte,
/// rather than `{"text": "…"}`. The HTTP API speaks it, and stored records are written in it.
///
/// ``wrap(_:shape:)`` turns the SparkOps form into protobuf's (each JSON value becomes the text of
/// its Json message, exactly as written); ``unwrap(_:shape:)`` turns protobuf's back (each Json
/// message's text is spliced in; an empty one is `null`). Nothing else is changed but white space
/// outside strings.
public enum SparkJSON {
    /// Nesting deeper than this is refused.
    public static let maxDepth = 512

    public struct Failure: Error, CustomStringConvertible, Sendable {
        /// The JSON name of the field at fault, dotted from the top (`inputs`, `steps.output`), or
        /// empty when the text is not JSON at all.
        public var field: String
        public var reason: String
        public var description: String { self.field.isEmpty ? self.reason : "\(self.field): \(self.reason)" }
    }

    public static func wrap(_ bytes: [UInt8], shape: SparkJSONShape) throws(Failure) -> [UInt8] {
        var splicer = Splicer(input: bytes, unwrapping: false)
        return try splicer.document(shape)
    }

    public static func unwrap(_ bytes: [UInt8], shape: SparkJSONShape) throws(Failure) -> [UInt8] {
        var splicer = Splicer(input: bytes, unwrapping: true)
        return try splicer.document(shape)
    }

    /// Whether the bytes are one JSON value, white space around it allowed.
    public static func isValue(_ bytes: some Collection<UInt8>) -> Bool {
        var splicer = Splicer(input: Array(bytes), unwrapping: false)
        do {
            splicer.skipSpace()
            try splicer.skipValue(depth: 0)
            splicer.skipSpace()
            return splicer.index == splicer.input.count
        } catch {
            return false
        }
    }

    struct Splicer {
        let input: [UInt8]
        let unwrapping: Bool
        var index = 0
        var out: [UInt8] = []
        /// The JSON names from the top to the value being read, for errors.
        var path: [String] = []

        init(input: [UInt8], unwrapping: Bool) {
            self.input = input
            self.unwrapping = unwrapping
            self.out.reserveCapacity(input.count + 64)
        }

        mutating func document(_ shape: SparkJSONShape) throws(Failure) -> [UInt8] {
            try self.value(.message(shape), depth: 0)
            self.skipSpace()
            guard self.index == self.input.count else { throw self.failure("text after the value") }
            return self.out
        }

        func failure(_ reason: String) -> Failure {
            Failure(field: self.path.joined(separator: "."), reason: reason)
        }

        mutating func skipSpace() {
            while self.index < self.input.count {
                switch self.input[self.index] {
                case UInt8(ascii: " "), UInt8(ascii: "\n"), UInt8(ascii: "\r"), UInt8(ascii: "\t"): self.index += 1
                default: return
                }
            }
        }

        var next: UInt8? { self.index < self.input.count ? self.input[self.index] : nil }

        mutating func expect(_ byte: UInt8) throws(Failure) {
            self.skipSpace()
            guard self.next == byte else { throw self.failure("expected '\(Character(Unicode.Scalar(byte)))'") }
            self.index += 1
        }

        /// Copies or rewrites one value, as `node` says it is (nil: nothing to splice inside).
        mutating func value(_ node: SparkJSONShape.Node?, depth: Int) throws(Failure) {
            guard depth < SparkJSON.maxDepth else { throw self.failure("nested deeper than \(SparkJSON.maxDepth) levels") }
            self.skipSpace()
            switch (node, self.next) {
            case (.json?, _):
                if self.unwrapping { try self.unwrapJSON(depth: depth) } else { try self.wrapJSON(depth: depth) }
            case (.message(let shape)?, UInt8(ascii: "{")?):
                try self.members(depth: depth) { (splicer: inout Splicer, key: String) throws(Failure) in
                    try splicer.value(shape.fields[key], depth: depth + 1)
                }
            case (.map(let inner)?, UInt8(ascii: "{")?):
                try self.members(depth: depth) { (splicer: inout Splicer, _: String) throws(Failure) in
                    try splicer.value(inner, depth: depth + 1)
                }
            case (.list(let inner)?, UInt8(ascii: "[")?):
                self.index += 1
                self.out.append(UInt8(ascii: "["))
                self.skipSpace()
                if self.next == UInt8(ascii: "]") {
                    self.index += 1
                    self.out.append(UInt8(ascii: "]"))
                    return
                }
                var position = 0
                while true {
                    self.path.append("\(position)")
                    try self.value(inner, depth: depth + 1)
                    self.path.removeLast()
                    position += 1
                    self.skipSpace()
                    if self.next == UInt8(ascii: ",") {
                        self.index += 1
                        self.out.append(UInt8(ascii: ","))
                        continue
                    }
                    try self.expect(UInt8(ascii: "]"))
                    self.out.append(UInt8(ascii: "]"))
                    return
                }
            default:
                let start = self.index
                try self.skipValue(depth: depth)
                self.out.append(contentsOf: self.input[start ..< self.index])
            }
        }

        /// An object's members, each key copied and its value handed to `member`.
        mutating func members(depth: Int, _ member: (inout Splicer, String) throws(Failure) -> Void) throws(Failure) {
            self.index += 1
            self.out.append(UInt8(ascii: "{"))
            self.skipSpace()
            if self.next == UInt8(ascii: "}") {
                self.index += 1
                self.out.append(UInt8(ascii: "}"))
                return
            }
            while true {
                self.skipSpace()
                guard self.next == UInt8(ascii: "\"") else { throw self.failure("a key must be a string") }
                let start = self.index
                let key = String(decoding: try self.string(), as: UTF8.self)
                self.out.append(contentsOf: self.input[start ..< self.index])
                try self.expect(UInt8(ascii: ":"))
                self.out.append(UInt8(ascii: ":"))
                self.path.append(key)
                try member(&self, key)
                self.path.removeLast()
                self.skipSpace()
                if self.next == UInt8(ascii: ",") {
                    self.index += 1
                    self.out.append(UInt8(ascii: ","))
                    continue
                }
                try self.expect(UInt8(ascii: "}"))
                self.out.append(UInt8(ascii: "}"))
                return
            }
        }

        /// Any JSON value → `{"text":"<the value's text>"}`.
        mutating func wrapJSON(depth: Int) throws(Failure) {
            let start = self.index
            try self.skipValue(depth: depth)
            self.out.append(contentsOf: #"{"text":"#.utf8)
            Self.quote(self.input[start ..< self.index], into: &self.out)
            self.out.append(UInt8(ascii: "}"))
        }

        /// `{"text":"…"}` → the text, which must be one JSON value; `{}` (no text) → `null`.
        mutating func unwrapJSON(depth: Int) throws(Failure) {
            guard self.next == UInt8(ascii: "{") else {
                // null (an unset message) and anything else are as they are.
                let start = self.index
                try self.skipValue(depth: depth)
                self.out.append(contentsOf: self.input[start ..< self.index])
                return
            }
            self.index += 1
            var text: [UInt8] = []
            self.skipSpace()
            if self.next == UInt8(ascii: "}") {
                self.index += 1
            } else {
                while true {
                    self.skipSpace()
                    guard self.next == UInt8(ascii: "\"") else { throw self.failure("a key must be a string") }
                    let key = try self.string()
                    try self.expect(UInt8(ascii: ":"))
                    self.skipSpace()
                    if key == Array("text".utf8), self.next == UInt8(ascii: "\"") {
                        text = try self.string()
                    } else {
                        try self.skipValue(depth: depth + 1)
                    }
                    self.skipSpace()
                    if self.next == UInt8(ascii: ",") {
                        self.index += 1
                        continue
                    }
                    try self.expect(UInt8(ascii: "}"))
                    break
                }
            }
            if text.isEmpty {
                self.out.append(contentsOf: "null".utf8)
                return
            }
            guard SparkJSON.isValue(text) else { throw self.failure("the JSON text is not one JSON value") }
            self.out.append(contentsOf: text)
        }

        static func quote(_ bytes: ArraySlice<UInt8>, into out: inout [UInt8]) {
            let hex = Array("0123456789abcdef".utf8)
            out.append(UInt8(ascii: "\""))
            for byte in bytes {
                switch byte {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"): out.append(contentsOf: [UInt8(ascii: "\\"), byte])
                case 0 ..< 0x20: out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0"), hex[Int(byte >> 4)], hex[Int(byte & 0xF)]])
                default: out.append(byte)
                }
            }
            out.append(UInt8(ascii: "\""))
        }

        // MARK: Reading

        /// Steps over one value, checking its syntax.
        mutating func skipValue(depth: Int) throws(Failure) {
            guard depth < SparkJSON.maxDepth else { throw self.failure("nested deeper than \(SparkJSON.maxDepth) levels") }
            self.skipSpace()
            guard let byte = self.next else { throw self.failure("the text ends where a value should be") }
            switch byte {
            case UInt8(ascii: "{"):
                self.index += 1
                self.skipSpace()
                if self.next == UInt8(ascii: "}") {
                    self.index += 1
                    return
                }
                while true {
                    self.skipSpace()
                    guard self.next == UInt8(ascii: "\"") else { throw self.failure("a key must be a string") }
                    _ = try self.string()
                    try self.expect(UInt8(ascii: ":"))
                    try self.skipValue(depth: depth + 1)
                    self.skipSpace()
                    if self.next == UInt8(ascii: ",") {
                        self.index += 1
                        continue
                    }
                    try self.expect(UInt8(ascii: "}"))
                    return
                }
            case UInt8(ascii: "["):
                self.index += 1
                self.skipSpace()
                if self.next == UInt8(ascii: "]") {
                    self.index += 1
                    return
                }
                while true {
                    try self.skipValue(depth: depth + 1)
                    self.skipSpace()
                    if self.next == UInt8(ascii: ",") {
                        self.index += 1
                        continue
                    }
                    try self.expect(UInt8(ascii: "]"))
                    return
                }
            case UInt8(ascii: "\""):
                _ = try self.string()
            case UInt8(ascii: "t"): try self.literal("true")
            case UInt8(ascii: "f"): try self.literal("false")
            case UInt8(ascii: "n"): try self.literal("null")
            default: try self.number()
            }
        }

        mutating func literal(_ word: String) throws(Failure) {
            let bytes = Array(word.utf8)
            guard self.index + bytes.count <= self.input.count, self.input[self.index ..< self.index + bytes.count].elementsEqual(bytes) else {
                throw self.failure("not a JSON value")
            }
            self.index += bytes.count
        }

        mutating func number() throws(Failure) {
            func digits(_ splicer: inout Splicer) -> Int {
                let from = splicer.index
                while let byte = splicer.next, (UInt8(ascii: "0") ... UInt8(ascii: "9")).contains(byte) { splicer.index += 1 }
                return splicer.index - from
            }
            if self.next == UInt8(ascii: "-") { self.index += 1 }
            let leading = self.index
            let whole = digits(&self)
            guard whole > 0 else { throw self.failure("not a JSON value") }
            guard whole == 1 || self.input[leading] != UInt8(ascii: "0") else { throw self.failure("a number does not start with 0") }
            if self.next == UInt8(ascii: ".") {
                self.index += 1
                guard digits(&self) > 0 else { throw self.failure("digits must follow '.'") }
            }
            if self.next == UInt8(ascii: "e") || self.next == UInt8(ascii: "E") {
                self.index += 1
                if self.next == UInt8(ascii: "+") || self.next == UInt8(ascii: "-") { self.index += 1 }
                guard digits(&self) > 0 else { throw self.failure("digits must follow the exponent") }
            }
        }

        /// A string's decoded UTF-8 bytes; the index is left after its closing quote.
        mutating func string() throws(Failure) -> [UInt8] {
            self.index += 1
            var out: [UInt8] = []
            while true {
                guard let byte = self.next else { throw self.failure("a string is not closed") }
                self.index += 1
                switch byte {
                case UInt8(ascii: "\""):
                    return out
                case UInt8(ascii: "\\"):
                    guard let escape = self.next else { throw self.failure("a string is not closed") }
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
                            guard self.next == UInt8(ascii: "\\"), self.index + 1 < self.input.count, self.input[self.index + 1] == UInt8(ascii: "u") else {
                                throw self.failure("a lone surrogate")
                            }
                            self.index += 2
                            let low = try self.hex4()
                            guard (0xDC00 ... 0xDFFF).contains(low) else { throw self.failure("a lone surrogate") }
                            scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                        } else if (0xDC00 ... 0xDFFF).contains(scalar) {
                            throw self.failure("a lone surrogate")
                        }
                        out.append(contentsOf: String(Unicode.Scalar(scalar)!).utf8)
                    default:
                        throw self.failure("unknown escape")
                    }
                case 0 ..< 0x20:
                    throw self.failure("a control character in a string")
                default:
                    out.append(byte)
                }
            }
        }

        mutating func hex4() throws(Failure) -> UInt32 {
            guard self.index + 4 <= self.input.count else { throw self.failure("\\u needs four hex digits") }
            var value: UInt32 = 0
            for _ in 0 ..< 4 {
                let byte = self.input[self.index]
                let digit: UInt8
                switch byte {
                case UInt8(ascii: "0") ... UInt8(ascii: "9"): digit = byte - UInt8(ascii: "0")
                case UInt8(ascii: "a") ... UInt8(ascii: "f"): digit = byte - UInt8(ascii: "a") + 10
                case UInt8(ascii: "A") ... UInt8(ascii: "F"): digit = byte - UInt8(ascii: "A") + 10
                default: throw self.failure("\\u needs four hex digits")
                }
                value = value << 4 | UInt32(digit)
                self.index += 1
            }
            return value
        }
    }
}

extension SparkJSONShaped {
    /// A message from SparkOps' JSON form (``SparkJSON``): each JSON field any JSON value.
    public init(sparkJSON text: String, options: JSONDecodingOptions = JSONDecodingOptions()) throws {
        let wrapped = try SparkJSON.wrap(Array(text.utf8), shape: Self.sparkJSONShape)
        try self.init(jsonUTF8Bytes: wrapped, options: options)
    }

    /// The message in SparkOps' JSON form (``SparkJSON``): each JSON field's text spliced in.
    public func sparkJSONString(options: JSONEncodingOptions = JSONEncodingOptions()) throws -> String {
        let bytes: [UInt8] = try self.jsonUTF8Bytes(options: options)
        return String(decoding: try SparkJSON.unwrap(bytes, shape: Self.sparkJSONShape), as: UTF8.self)
    }
}
