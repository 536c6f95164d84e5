import SparkExpr
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
    public static func isValue(_ bytes: [UInt8]) -> Bool {
        var scanner = JSONScanner(bytes)
        do {
            try scanner.skipValue(maxDepth: Self.maxDepth)
            scanner.skipSpace()
            return scanner.isAtEnd
        } catch {
            return false
        }
    }

    struct Splicer {
        var scanner: JSONScanner
        let unwrapping: Bool
        var out: [UInt8] = []
        /// The JSON names from the top to the value being read, for errors.
        var path: [String] = []

        init(input: [UInt8], unwrapping: Bool) {
            self.scanner = JSONScanner(input)
            self.unwrapping = unwrapping
            self.out.reserveCapacity(input.count + 64)
        }

        var input: [UInt8] { self.scanner.bytes }

        mutating func document(_ shape: SparkJSONShape) throws(Failure) -> [UInt8] {
            try self.value(.message(shape), depth: 0)
            self.scanner.skipSpace()
            guard self.scanner.isAtEnd else { throw self.failure("text after the value") }
            return self.out
        }

        func failure(_ reason: String) -> Failure {
            Failure(field: self.path.joined(separator: "."), reason: reason)
        }

        /// Runs a read of the scanner, its syntax error as a failure at the current path.
        mutating func reading<T>(_ read: (inout JSONScanner) throws(JSONScanner.SyntaxError) -> T) throws(Failure) -> T {
            do {
                return try read(&self.scanner)
            } catch {
                throw self.failure(error.reason)
            }
        }

        /// Copies one value as it is, checking its syntax.
        mutating func copyValue(depth: Int) throws(Failure) {
            let start = self.scanner.index
            try self.reading { (scanner: inout JSONScanner) throws(JSONScanner.SyntaxError) in try scanner.skipValue(depth: depth, maxDepth: SparkJSON.maxDepth) }
            self.out.append(contentsOf: self.input[start ..< self.scanner.index])
        }

        /// Copies or rewrites one value, as `node` says it is (nil: nothing to splice inside).
        mutating func value(_ node: SparkJSONShape.Node?, depth: Int) throws(Failure) {
            guard depth < SparkJSON.maxDepth else { throw self.failure("nested deeper than \(SparkJSON.maxDepth) levels") }
            self.scanner.skipSpace()
            switch (node, self.scanner.next) {
            case (.json?, _):
                if self.unwrapping { try self.unwrapJSON(depth: depth) } else { try self.wrapJSON(depth: depth) }
            case (.message(let shape)?, UInt8(ascii: "{")?):
                try self.object(depth: depth) { key in shape.fields[key] }
            case (.map(let inner)?, UInt8(ascii: "{")?):
                try self.object(depth: depth) { _ in inner }
            case (.list(let inner)?, UInt8(ascii: "[")?):
                self.scanner.index += 1
                self.out.append(UInt8(ascii: "["))
                var position = 0
                while true {
                    self.scanner.skipSpace()
                    if position == 0, self.scanner.peek(UInt8(ascii: "]")) { break }
                    self.path.append("\(position)")
                    try self.value(inner, depth: depth + 1)
                    self.path.removeLast()
                    position += 1
                    self.scanner.skipSpace()
                    if self.scanner.peek(UInt8(ascii: ",")) {
                        self.out.append(UInt8(ascii: ","))
                        continue
                    }
                    guard self.scanner.peek(UInt8(ascii: "]")) else { throw self.failure("',' or ']' must follow an item") }
                    break
                }
                self.out.append(UInt8(ascii: "]"))
            default:
                try self.copyValue(depth: depth)
            }
        }

        /// An object's members, each key copied and its value read as `node(key)` says.
        mutating func object(depth: Int, _ node: (String) -> SparkJSONShape.Node?) throws(Failure) {
            self.scanner.index += 1
            self.out.append(UInt8(ascii: "{"))
            var first = true
            while true {
                self.scanner.skipSpace()
                if first, self.scanner.peek(UInt8(ascii: "}")) { break }
                first = false
                guard self.scanner.next == UInt8(ascii: "\"") else { throw self.failure("a key must be a string") }
                let start = self.scanner.index
                let key = try self.reading { (scanner: inout JSONScanner) throws(JSONScanner.SyntaxError) in try scanner.string() }
                self.out.append(contentsOf: self.input[start ..< self.scanner.index])
                try self.reading { (scanner: inout JSONScanner) throws(JSONScanner.SyntaxError) in try scanner.expect(UInt8(ascii: ":"), "':' must follow a key") }
                self.out.append(UInt8(ascii: ":"))
                self.path.append(key)
                try self.value(node(key), depth: depth + 1)
                self.path.removeLast()
                self.scanner.skipSpace()
                if self.scanner.peek(UInt8(ascii: ",")) {
                    self.out.append(UInt8(ascii: ","))
                    continue
                }
                guard self.scanner.peek(UInt8(ascii: "}")) else { throw self.failure("',' or '}' must follow a member") }
                break
            }
            self.out.append(UInt8(ascii: "}"))
        }

        /// Any JSON value → `{"text":"<the value's text>"}`.
        mutating func wrapJSON(depth: Int) throws(Failure) {
            let start = self.scanner.index
            try self.reading { (scanner: inout JSONScanner) throws(JSONScanner.SyntaxError) in try scanner.skipValue(depth: depth, maxDepth: SparkJSON.maxDepth) }
            self.out.append(contentsOf: #"{"text":"#.utf8)
            Self.quote(self.input[start ..< self.scanner.index], into: &self.out)
            self.out.append(UInt8(ascii: "}"))
        }

        /// `{"text":"…"}` → the text, which must be one JSON value; `{}` (no text) → `null`.
        mutating func unwrapJSON(depth: Int) throws(Failure) {
            guard self.scanner.next == UInt8(ascii: "{") else {
                // null (an unset message) and anything else are as they are.
                try self.copyValue(depth: depth)
                return
            }
            var text = ""
            try self.reading { (scanner: inout JSONScanner) throws(JSONScanner.SyntaxError) in
                try scanner.members { (scanner: inout JSONScanner, key: String) throws(JSONScanner.SyntaxError) in
                    scanner.skipSpace()
                    if key == "text", scanner.next == UInt8(ascii: "\"") {
                        text = try scanner.string()
                    } else {
                        try scanner.skipValue(depth: depth + 1, maxDepth: SparkJSON.maxDepth)
                    }
                }
            }
            if text.isEmpty {
                self.out.append(contentsOf: "null".utf8)
                return
            }
            guard SparkJSON.isValue(Array(text.utf8)) else { throw self.failure("the JSON text is not one JSON value") }
            self.out.append(contentsOf: text.utf8)
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
