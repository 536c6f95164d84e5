public import SparkExpr

/// The JSON Schema (draft 2020-12) subset that tool inputs are declared in and checked against:
/// `type` (a name or a list of names), `properties`, `required`, `additionalProperties`, `items`,
/// `enum`, `const`, `minimum`, `maximum`, `exclusiveMinimum`, `exclusiveMaximum`, `minLength`,
/// `maxLength`, `pattern` (linear-time, the syntax of `matches()`), `minItems`, `maxItems`,
/// `uniqueItems`, `minProperties`, `maxProperties`, `anyOf`, `allOf`, `oneOf`, `not`; and the
/// annotations `title`, `description`, `default`, `examples`, `format`, `$schema`, `$comment`,
/// which are not checked. Any other keyword (`$ref` among them) is refused when the schema is
/// written, so that nothing a user relies on is silently ignored.
public struct JSONSchema: Sendable {
    public let value: ExprValue
    /// Compiled `pattern`s, by their text.
    let patterns: [String: ExprPattern]

    static let keywords: Set<String> = [
        "type", "properties", "required", "additionalProperties", "items", "enum", "const",
        "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength", "pattern",
        "minItems", "maxItems", "uniqueItems", "minProperties", "maxProperties", "anyOf", "allOf", "oneOf", "not",
        "title", "description", "default", "examples", "format", "$schema", "$comment",
    ]
    static let typeNames: Set<String> = ["object", "array", "string", "integer", "number", "boolean", "null"]

    /// The schema, or every problem with it as `(path, message)`, the path from the schema's root
    /// (`properties.name.type`).
    public init(_ value: ExprValue) throws(JSONSchemaError) {
        var problems: [(String, String)] = []
        var patterns: [String: ExprPattern] = [:]
        Self.check(value, path: "", problems: &problems, patterns: &patterns, depth: 0)
        guard problems.isEmpty else { throw JSONSchemaError(problems: problems) }
        self.value = value
        self.patterns = patterns
    }

    /// Every way `instance` fails the schema, as `(path, message)` with the path from `root`
    /// (`input.items[2].name`); empty when it conforms. At most `limit` problems.
    public func problems(_ instance: ExprValue, root: String = "input", limit: Int = 20) -> [(path: String, message: String)] {
        var found: [(path: String, message: String)] = []
        self.validate(instance, against: self.value, path: root, into: &found, limit: limit)
        return found
    }

    // MARK: Checking the schema

    static func check(_ schema: ExprValue, path: String, problems: inout [(String, String)], patterns: inout [String: ExprPattern], depth: Int) {
        func at(_ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }
        guard depth <= 32 else {
            problems.append((path, "the schema nests deeper than 32 levels"))
            return
        }
        if case .bool = schema { return }
        guard case .map(let fields) = schema else {
            problems.append((path, "a schema must be a mapping or true/false, not a \(schema.typeName)"))
            return
        }
        for key in fields.keys.sorted() where !Self.keywords.contains(key) {
            let hint = NameSuggestion.closest(to: key, in: Self.keywords.sorted()).map { "; did you mean \($0.debugDescription)?" } ?? ""
            problems.append((at(key), "\(key.debugDescription) is not a keyword SparkOps checks\(hint)"))
        }
        if let type = fields["type"] {
            let names: [ExprValue]
            if case .list(let list) = type { names = list } else { names = [type] }
            for name in names {
                guard case .string(let text) = name, Self.typeNames.contains(text) else {
                    problems.append((at("type"), "\(name.jsonText) is not a type; one of \(Self.typeNames.sorted().joined(separator: ", "))"))
                    continue
                }
            }
        }
        if let properties = fields["properties"] {
            if case .map(let map) = properties {
                for (name, sub) in map.sorted(by: { $0.key < $1.key }) {
                    Self.check(sub, path: at("properties.\(name)"), problems: &problems, patterns: &patterns, depth: depth + 1)
                }
            } else {
                problems.append((at("properties"), "must be a mapping of property names to schemas"))
            }
        }
        if let required = fields["required"] {
            if case .list(let names) = required, names.allSatisfy({ if case .string = $0 { true } else { false } }) {} else {
                problems.append((at("required"), "must be a list of property names"))
            }
        }
        for key in ["additionalProperties", "items", "not"] {
            if let sub = fields[key] { Self.check(sub, path: at(key), problems: &problems, patterns: &patterns, depth: depth + 1) }
        }
        for key in ["anyOf", "allOf", "oneOf"] {
            guard let list = fields[key] else { continue }
            guard case .list(let subs) = list, !subs.isEmpty else {
                problems.append((at(key), "must be a non-empty list of schemas"))
                continue
            }
            for (index, sub) in subs.enumerated() {
                Self.check(sub, path: "\(at(key))[\(index)]", problems: &problems, patterns: &patterns, depth: depth + 1)
            }
        }
        if let values = fields["enum"] {
            if case .list(let list) = values, !list.isEmpty {} else { problems.append((at("enum"), "must be a non-empty list of values")) }
        }
        for key in ["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"] {
            guard let bound = fields[key] else { continue }
            if bound.numeric == nil { problems.append((at(key), "must be a number")) }
        }
        for key in ["minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties"] {
            guard let bound = fields[key] else { continue }
            if case .int(let count) = bound, count >= 0 {} else { problems.append((at(key), "must be a whole number, 0 or more")) }
        }
        if let unique = fields["uniqueItems"] {
            if case .bool = unique {} else { problems.append((at("uniqueItems"), "must be true or false")) }
        }
        if let pattern = fields["pattern"] {
            guard case .string(let text) = pattern else {
                problems.append((at("pattern"), "must be a string"))
                return
            }
            do {
                patterns[text] = try ExprPattern(text)
            } catch {
                problems.append((at("pattern"), "\(text.debugDescription) is not a pattern: \(error.message)"))
            }
        }
    }

    // MARK: Validating an instance

    func validate(_ instance: ExprValue, against schema: ExprValue, path: String, into found: inout [(path: String, message: String)], limit: Int) {
        guard found.count < limit else { return }
        switch schema {
        case .bool(true): return
        case .bool(false):
            found.append((path, "is not allowed"))
            return
        case .map(let fields):
            self.validate(instance, fields: fields, path: path, into: &found, limit: limit)
        default: return
        }
    }

    private func validate(_ instance: ExprValue, fields: [String: ExprValue], path: String, into found: inout [(path: String, message: String)], limit: Int) {
        if let type = fields["type"] {
            let names: [String]
            switch type {
            case .string(let name): names = [name]
            case .list(let list): names = list.compactMap { if case .string(let name) = $0 { name } else { nil } }
            default: names = []
            }
            guard names.contains(where: { Self.instance(instance, is: $0) }) else {
                found.append((path, "must be \(names.count == 1 ? "a" : "one of") \(names.joined(separator: ", ")), not \(Self.jsonType(instance))"))
                return
            }
        }
        if let values = fields["enum"], case .list(let list) = values, !list.contains(where: { $0.equals(instance) }) {
            found.append((path, "must be one of \(list.map(\.jsonText).joined(separator: ", "))"))
        }
        if let value = fields["const"], !value.equals(instance) {
            found.append((path, "must be \(value.jsonText)"))
        }
        switch instance {
        case .int, .double, .number:
            let number = instance.numeric ?? 0
            if let bound = fields["minimum"]?.numeric, number < bound { found.append((path, "must be at least \(Self.text(bound))")) }
            if let bound = fields["maximum"]?.numeric, number > bound { found.append((path, "must be at most \(Self.text(bound))")) }
            if let bound = fields["exclusiveMinimum"]?.numeric, number <= bound { found.append((path, "must be more than \(Self.text(bound))")) }
            if let bound = fields["exclusiveMaximum"]?.numeric, number >= bound { found.append((path, "must be less than \(Self.text(bound))")) }
        case .string(let text):
            let length = text.unicodeScalars.count
            if case .int(let bound) = fields["minLength"], length < bound { found.append((path, "must be at least \(bound) characters long")) }
            if case .int(let bound) = fields["maxLength"], length > bound { found.append((path, "must be at most \(bound) characters long")) }
            if case .string(let source) = fields["pattern"], let pattern = self.patterns[source], !pattern.matches(text) {
                found.append((path, "must match \(source.debugDescription)"))
            }
        case .list(let items):
            if case .int(let bound) = fields["minItems"], items.count < bound { found.append((path, "must hold at least \(bound) items")) }
            if case .int(let bound) = fields["maxItems"], items.count > bound { found.append((path, "must hold at most \(bound) items")) }
            if fields["uniqueItems"] == .bool(true) {
                for (index, item) in items.enumerated() where items[..<index].contains(where: { $0.equals(item) }) {
                    found.append(("\(path)[\(index)]", "repeats an earlier item"))
                    break
                }
            }
            if let itemSchema = fields["items"] {
                for (index, item) in items.enumerated() {
                    self.validate(item, against: itemSchema, path: "\(path)[\(index)]", into: &found, limit: limit)
                }
            }
        case .map(let map):
            if case .int(let bound) = fields["minProperties"], map.count < bound { found.append((path, "must hold at least \(bound) fields")) }
            if case .int(let bound) = fields["maxProperties"], map.count > bound { found.append((path, "must hold at most \(bound) fields")) }
            if case .list(let required) = fields["required"] {
                for case .string(let name) in required where map[name] == nil {
                    found.append(("\(path).\(name)", "is required"))
                }
            }
            var properties: [String: ExprValue] = [:]
            if case .map(let declared) = fields["properties"] { properties = declared }
            for (name, value) in map.sorted(by: { $0.key < $1.key }) {
                if let sub = properties[name] {
                    self.validate(value, against: sub, path: "\(path).\(name)", into: &found, limit: limit)
                } else if let additional = fields["additionalProperties"] {
                    if additional == .bool(false) {
                        let hint = NameSuggestion.closest(to: name, in: properties.keys.sorted()).map { "; did you mean \($0.debugDescription)?" } ?? ""
                        found.append(("\(path).\(name)", "is not a known field\(hint)"))
                    } else {
                        self.validate(value, against: additional, path: "\(path).\(name)", into: &found, limit: limit)
                    }
                }
            }
        default: break
        }
        if case .list(let all) = fields["allOf"] {
            for sub in all { self.validate(instance, against: sub, path: path, into: &found, limit: limit) }
        }
        if case .list(let any) = fields["anyOf"] {
            let passes = any.contains { sub in
                var scratch: [(path: String, message: String)] = []
                self.validate(instance, against: sub, path: path, into: &scratch, limit: 1)
                return scratch.isEmpty
            }
            if !passes { found.append((path, "matches none of the \(any.count) schemas of anyOf")) }
        }
        if case .list(let one) = fields["oneOf"] {
            let passing = one.filter { sub in
                var scratch: [(path: String, message: String)] = []
                self.validate(instance, against: sub, path: path, into: &scratch, limit: 1)
                return scratch.isEmpty
            }.count
            if passing != 1 { found.append((path, "must match exactly one schema of oneOf, not \(passing)")) }
        }
        if let not = fields["not"] {
            var scratch: [(path: String, message: String)] = []
            self.validate(instance, against: not, path: path, into: &scratch, limit: 1)
            if scratch.isEmpty { found.append((path, "must not match the schema of not")) }
        }
    }

    static func instance(_ value: ExprValue, is type: String) -> Bool {
        switch (type, value) {
        case ("object", .map), ("array", .list), ("string", .string), ("boolean", .bool), ("null", .null): return true
        case ("integer", .int): return true
        case ("integer", .double(let number)): return number.rounded() == number
        case ("integer", .number(let text)): return ExprNumber.isIntegral(text) || Double(text).map { $0.isFinite && $0.rounded() == $0 } == true
        case ("number", .int), ("number", .double), ("number", .number): return true
        default: return false
        }
    }

    static func jsonType(_ value: ExprValue) -> String {
        switch value {
        case .map: return "an object"
        case .list: return "an array"
        case .string: return "a string"
        case .bool: return "a boolean"
        case .null: return "null"
        case .int: return "an integer"
        case .double: return "a number"
        case .number(let text): return ExprNumber.isIntegral(text) ? "an integer" : "a number"
        }
    }

    static func text(_ number: Double) -> String {
        number.rounded() == number && abs(number) < 1e15 ? String(Int64(number)) : String(number)
    }
}

/// What is wrong with a schema, each problem with its path from the schema's root.
public struct JSONSchemaError: Error, Sendable, CustomStringConvertible {
    public var problems: [(path: String, message: String)]

    init(problems: [(String, String)]) {
        self.problems = problems.map { (path: $0.0, message: $0.1) }
    }

    public var description: String {
        self.problems.map { $0.path.isEmpty ? $0.message : "\($0.path): \($0.message)" }.joined(separator: "; ")
    }
}

extension ExprValue {
    /// The value as a double, for numbers.
    var numeric: Double? {
        switch self {
        case .int(let value): return Double(value)
        case .double(let value): return value
        case .number(let text): return Double(text)
        default: return nil
        }
    }
}
