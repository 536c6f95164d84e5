import Foundation

/// Finds an object key written twice in JSON text (`{"name":"a","name":"b"}`), which parsers
/// resolve differently (the first, the last, an error), so that a request means one thing only.
///
/// Meant for text a parser has already accepted as JSON: it walks the bytes once, without
/// building values, and compares keys as their decoded text (`"a"` and `"\u0061"` are one key).
///
/// ```swift
/// if let path = JSONDuplicateKeys.first(in: Array(#"{"a":{"b":1,"b":2}}"#.utf8)) {
///     print(path)  // a.b
/// }
/// ```
package enum JSONDuplicateKeys {
    /// The dotted path of the first key written twice in one object, or nil.
    package static func first(in bytes: [UInt8]) -> String? {
        var scanner = Scanner(bytes: bytes)
        return scanner.value(path: [])
    }

    private struct Scanner {
        let bytes: [UInt8]
        var index = 0

        init(bytes: [UInt8]) { self.bytes = bytes }

        mutating func skipBlanks() {
            while self.index < self.bytes.count, [0x20, 0x09, 0x0A, 0x0D].contains(self.bytes[self.index]) { self.index += 1 }
        }

        /// Walks one value; the path of a duplicate key inside it, if any.
        mutating func value(path: [String]) -> String? {
            self.skipBlanks()
            guard self.index < self.bytes.count else { return nil }
            switch self.bytes[self.index] {
            case UInt8(ascii: "{"):
                self.index += 1
                var seen: Set<String> = []
                while true {
                    self.skipBlanks()
                    guard self.index < self.bytes.count else { return nil }
                    if self.bytes[self.index] == UInt8(ascii: "}") { self.index += 1; return nil }
                    if self.bytes[self.index] == UInt8(ascii: ",") { self.index += 1; continue }
                    guard self.bytes[self.index] == UInt8(ascii: "\"") else { return nil }
                    let key = self.string()
                    if !seen.insert(key).inserted { return (path + [key]).joined(separator: ".") }
                    self.skipBlanks()
                    guard self.index < self.bytes.count, self.bytes[self.index] == UInt8(ascii: ":") else { return nil }
                    self.index += 1
                    if let found = self.value(path: path + [key]) { return found }
                }
            case UInt8(ascii: "["):
                self.index += 1
                var position = 0
                while true {
                    self.skipBlanks()
                    guard self.index < self.bytes.count else { return nil }
                    if self.bytes[self.index] == UInt8(ascii: "]") { self.index += 1; return nil }
                    if self.bytes[self.index] == UInt8(ascii: ",") { self.index += 1; position += 1; continue }
                    if let found = self.value(path: path + ["\(position)"]) { return found }
                }
            case UInt8(ascii: "\""):
                _ = self.string()
                return nil
            default:
                // A number, true, false or null: up to the next delimiter.
                while self.index < self.bytes.count, ![UInt8(ascii: ","), UInt8(ascii: "}"), UInt8(ascii: "]"), 0x20, 0x09, 0x0A, 0x0D].contains(self.bytes[self.index]) {
                    self.index += 1
                }
                return nil
            }
        }

        /// Reads a string at the opening quote; its decoded text.
        mutating func string() -> String {
            let start = self.index
            self.index += 1
            var escaped = false
            while self.index < self.bytes.count {
                let byte = self.bytes[self.index]
                self.index += 1
                if byte == UInt8(ascii: "\\") {
                    escaped = true
                    self.index += 1
                } else if byte == UInt8(ascii: "\"") {
                    break
                }
            }
            let raw = self.bytes[start..<min(self.index, self.bytes.count)]
            guard escaped else { return String(decoding: raw.dropFirst().dropLast(), as: UTF8.self) }
            return (try? JSONSerialization.jsonObject(with: Data(raw), options: [.fragmentsAllowed]) as? String) ?? String(decoding: raw, as: UTF8.self)
        }
    }
}
