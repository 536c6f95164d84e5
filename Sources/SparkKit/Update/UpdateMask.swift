/// The fields an update changes, as AIP-134 has it: exactly the fields named in `update_mask`, and
/// nothing else. Every service's `Update…` handler starts from one, so that a field the caller did
/// not name is never cleared.
///
/// Over HTTP the gateway fills `update_mask` from the fields present in the JSON body when the body
/// does not list them itself; over SparkWire the caller names them. An empty mask changes nothing.
///
/// ```swift
/// let mask = try UpdateMask(request.updateMask, allowed: ["name", "description"])
/// if mask.contains("name") { project.name = try Validate.name(request.name, field: "name") }
/// guard !mask.isEmpty else { return project }   // nothing to write
/// ```
public struct UpdateMask: Sendable, Equatable {
    /// The named fields, as proto field names (`display_name`).
    public let fields: Set<String>

    /// Checks `paths` against the fields the resource lets callers change. Paths may be written as
    /// proto names (`display_name`) or JSON names (`displayName`); any other is INVALID_ARGUMENT
    /// naming `update_mask`.
    public init(_ paths: [String], allowed: Set<String>) throws {
        var fields: Set<String> = []
        for path in paths {
            let field = Self.protoName(path)
            guard allowed.contains(field) else {
                throw SparkError.invalid(
                    "update_mask",
                    "unknown field \(path.debugDescription); fields that can change: \(allowed.sorted().joined(separator: ", "))"
                )
            }
            fields.insert(field)
        }
        self.fields = fields
    }

    public var isEmpty: Bool { self.fields.isEmpty }

    public func contains(_ field: String) -> Bool { self.fields.contains(field) }

    /// `displayName` → `display_name`; a name already in snake case is kept.
    public static func protoName(_ name: String) -> String {
        var out = ""
        for character in name {
            if character.isUppercase {
                out.append("_")
                out.append(contentsOf: character.lowercased())
            } else {
                out.append(character)
            }
        }
        return out
    }

    /// `display_name` → `displayName`, as protobuf's canonical JSON mapping spells fields.
    public static func jsonName(_ name: String) -> String {
        var out = ""
        var upper = false
        for character in name {
            if character == "_" {
                upper = true
            } else {
                out.append(upper ? Character(character.uppercased()) : character)
                upper = false
            }
        }
        return out
    }
}
