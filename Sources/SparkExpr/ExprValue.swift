import Foundation

/// A JSON value, as expressions read and produce them: workflow inputs, step outputs, policy
/// contexts. Integers and doubles are kept apart (`1` and `1.0` compare equal, but `7 / 2` is 3),
/// and a number read from JSON writes back as it was written (``number(_:)``).
public enum ExprValue: Sendable, Hashable {
    case null
    case bool(Bool)
    case int(Int64)
    case double(Double)
    /// A JSON number kept as it was written, because neither an `Int64` nor a `Double` would write
    /// it back the same: integers beyond 64 bits, `-0`, `1e400`, `1.50`, `2E3`. It is the number
    /// it writes wherever values are compared; arithmetic takes it as an int when it is a whole
    /// number within 64 bits, as a double when a finite double holds it, and refuses it otherwise
    /// (docs/expressions.md).
    case number(String)
    case string(String)
    case list([ExprValue])
    case map([String: ExprValue])

    /// The name of the value's type, as errors say it.
    public var typeName: String {
        switch self {
        case .null: return "null"
        case .bool: return "bool"
        case .int: return "int"
        case .double: return "double"
        case .number(let text): return ExprNumber.isIntegral(text) ? "int" : "double"
        case .string: return "string"
        case .list: return "list"
        case .map: return "map"
        }
    }

    /// The value as a double, for numbers.
    var number: Double? {
        switch self {
        case .int(let value): return Double(value)
        case .double(let value): return value
        case .number(let text): return Double(text)
        default: return nil
        }
    }

    /// Equality as expressions see it: numbers by value whatever their kind, lists and maps deeply.
    public func equals(_ other: ExprValue) -> Bool {
        switch (self, other) {
        case (.int(let a), .int(let b)): return a == b
        case (.number, .int), (.int, .number), (.number, .double), (.double, .number), (.number, .number):
            return ExprNumber.compare(self, other) == 0
        case (.int, .double), (.double, .int), (.double, .double): return self.number! == other.number!
        case (.list(let a), .list(let b)): return a.count == b.count && zip(a, b).allSatisfy { $0.equals($1) }
        case (.map(let a), .map(let b)):
            return a.count == b.count && a.allSatisfy { key, value in b[key].map { value.equals($0) } ?? false }
        default: return self == other
        }
    }
}

extension ExprValue {
    /// A value from what `JSONSerialization` reads (`NSNumber` booleans become `.bool`).
    public init(json object: Any?) {
        switch object {
        case nil, is NSNull: self = .null
        case let string as String: self = .string(string)
        case let number as NSNumber:
            // JSONSerialization makes booleans as NSNumber(value: Bool), whose type code is "c".
            let code = String(cString: number.objCType)
            if code == "c" || code == "B" {
                self = .bool(number.boolValue)
            } else if code == "d" || code == "f" {
                self = .double(number.doubleValue)
            } else {
                self = .int(number.int64Value)
            }
        case let flag as Bool: self = .bool(flag)
        case let int as Int: self = .int(Int64(int))
        case let double as Double: self = .double(double)
        case let array as [Any]: self = .list(array.map { ExprValue(json: $0) })
        case let dictionary as [String: Any]: self = .map(dictionary.mapValues { ExprValue(json: $0) })
        default: self = .string("\(object!)")
        }
    }

    /// Parses JSON text (any value at the top, as RFC 8259 allows). A number without a fraction
    /// or exponent that fits 64 bits is an `.int`, one a double writes back the same a `.double`,
    /// any other a `.number` that keeps its text.
    public init(jsonText: String) throws {
        var scanner = JSONScanner(jsonText)
        self = try scanner.document()
    }

    /// The value as `JSONSerialization` writes it.
    public var jsonObject: Any {
        switch self {
        case .null: return NSNull()
        case .bool(let value): return value
        case .int(let value): return value
        case .double(let value): return value
        case .number(let text): return ExprNumber.jsonObject(text)
        case .string(let value): return value
        case .list(let values): return values.map(\.jsonObject)
        case .map(let values): return values.mapValues(\.jsonObject)
        }
    }

    /// Compact JSON text, keys sorted by their UTF-8 bytes: the same value always has the same text.
    public var jsonText: String {
        var out: [UInt8] = []
        out.reserveCapacity(64)
        ExprJSON.write(self, into: &out)
        return String(decoding: out, as: UTF8.self)
    }

    /// Compact JSON text as `JSONSerialization` writes it, keys in its locale-aware order. Content
    /// hashes of definitions and the digests of requests under idempotency keys are computed over
    /// this text and stored, so it must never change; it costs several times ``jsonText``, which
    /// serves everywhere else.
    public var stableJSONText: String {
        switch self {
        case .string(let value): return ExprPrinter.quoted(value)
        case .double(let value) where !value.isFinite: return "null"
        default:
            let data = (try? JSONSerialization.data(withJSONObject: self.jsonObject, options: [.sortedKeys, .fragmentsAllowed, .withoutEscapingSlashes])) ?? Data("null".utf8)
            return String(decoding: data, as: UTF8.self)
        }
    }

    /// How a template puts the value into text: strings as they are, null as nothing, the rest as JSON.
    public var templateText: String {
        switch self {
        case .string(let value): return value
        case .null: return ""
        case .int(let value): return String(value)
        case .number(let text): return text
        case .bool(let value): return value ? "true" : "false"
        default: return self.jsonText
        }
    }
}

extension ExprValue: ExpressibleByStringLiteral {
    public init(stringLiteral value: String) {
        self = .string(value)
    }
}
