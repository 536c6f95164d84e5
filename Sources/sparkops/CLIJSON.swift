import Foundation
import SparkExpr

/// A JSON number as it was written, in the CLI's `[String: Any]` trees: one no `Int` or `Double`
/// would print back the same (an integer beyond 64 bits, `1.50`, `1e400`). It prints as written.
struct JSONNumberText: CustomStringConvertible, Sendable {
    var text: String
    var description: String { self.text }
}

/// The CLI's JSON: what it reads from the API and from its arguments, and what it prints and
/// sends, with every number exactly as written (Foundation's `JSONSerialization` turns
/// `9007199254740993` into a double and `4.0` into `4`).
///
/// Read values are `String`, `Bool`, `NSNull`, `NSNumber` (numbers an int64 or a double holds
/// exactly as written), ``JSONNumberText`` (any other number), `[Any]` and `[String: Any]`.
enum CLIJSON {
    static func parse(_ text: String) throws -> Any {
        self.object(try ExprValue(jsonText: text))
    }

    static func parse(_ bytes: some Sequence<UInt8>) throws -> Any {
        try self.parse(String(decoding: Array(bytes), as: UTF8.self))
    }

    /// Compact text, keys in byte order, or indented by two spaces when `pretty`.
    static func text(_ object: Any, pretty: Bool = false) -> String {
        let value = self.value(object)
        guard pretty else { return value.jsonText }
        var out = ""
        self.write(value, indent: 0, into: &out)
        return out
    }

    static func data(_ object: Any, pretty: Bool = false) -> Data {
        Data(self.text(object, pretty: pretty).utf8)
    }

    static func object(_ value: ExprValue) -> Any {
        switch value {
        case .null: return NSNull()
        case .bool(let flag): return flag
        case .int(let number): return NSNumber(value: number)
        case .double(let number): return NSNumber(value: number)
        case .number(let text): return JSONNumberText(text: text)
        case .string(let text): return text
        case .list(let items): return items.map(self.object)
        case .map(let fields): return fields.mapValues(self.object)
        }
    }

    static func value(_ object: Any) -> ExprValue {
        switch object {
        case is NSNull: return .null
        case let text as String: return .string(text)
        case let number as JSONNumberText: return (try? ExprValue(jsonText: number.text)) ?? .string(number.text)
        case let flag as Bool where !(object is NSNumber): return .bool(flag)
        case let number as NSNumber:
            // Booleans are NSNumbers whose type code is "c" (or "B").
            let code = String(cString: number.objCType)
            if code == "c" || code == "B" { return .bool(number.boolValue) }
            if code == "d" || code == "f" { return .double(number.doubleValue) }
            return .int(number.int64Value)
        case let number as Int: return .int(Int64(number))
        case let number as Int64: return .int(number)
        case let number as Double: return .double(number)
        case let items as [Any]: return .list(items.map(self.value))
        case let fields as [String: Any]: return .map(fields.mapValues(self.value))
        default: return .string("\(object)")
        }
    }

    private static func write(_ value: ExprValue, indent: Int, into out: inout String) {
        let pad = String(repeating: " ", count: indent + 2)
        switch value {
        case .list(let items) where !items.isEmpty:
            out += "[\n"
            for (index, item) in items.enumerated() {
                out += pad
                self.write(item, indent: indent + 2, into: &out)
                out += index == items.count - 1 ? "\n" : ",\n"
            }
            out += String(repeating: " ", count: indent) + "]"
        case .map(let fields) where !fields.isEmpty:
            out += "{\n"
            let keys = fields.keys.sorted { $0.utf8.lexicographicallyPrecedes($1.utf8) }
            for (index, key) in keys.enumerated() {
                out += pad + ExprValue.string(key).jsonText + ": "
                self.write(fields[key]!, indent: indent + 2, into: &out)
                out += index == keys.count - 1 ? "\n" : ",\n"
            }
            out += String(repeating: " ", count: indent) + "}"
        default:
            out += value.jsonText
        }
    }
}
