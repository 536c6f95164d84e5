import Foundation
import SparkKit

/// Checks of request fields; each failure names the field.
enum Validate {
    static func name(_ value: String, field: String, maximum: Int = 100) throws -> String {
        let trimmed = value.trimmingCharacters(in: .whitespaces)
        guard !trimmed.isEmpty else { throw SparkError.invalid(field, "must not be empty") }
        guard trimmed.count <= maximum else { throw SparkError.invalid(field, "must be at most \(maximum) characters") }
        guard !trimmed.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else {
            throw SparkError.invalid(field, "must not contain control characters")
        }
        return trimmed
    }

    /// A project's name: as ``name(_:field:maximum:)``, and not in the shape of a project id
    /// (`prj_…`), which clients that take a name or an id could not tell apart.
    static func projectName(_ value: String) throws -> String {
        let name = try Self.name(value, field: "name")
        guard !name.lowercased().hasPrefix("prj_") else { throw SparkError.invalid("name", "must not start with prj_ (project ids do)") }
        return name
    }

    static func text(_ value: String, field: String, maximum: Int) throws -> String {
        guard value.count <= maximum else { throw SparkError.invalid(field, "must be at most \(maximum) characters") }
        return value
    }

    /// A lower-cased email address of a plausible shape.
    static func email(_ value: String, field: String = "email") throws -> String {
        let email = value.trimmingCharacters(in: .whitespaces).lowercased()
        let parts = email.split(separator: "@", omittingEmptySubsequences: false)
        guard email.count <= 254, parts.count == 2, !parts[0].isEmpty, parts[1].contains("."), !parts[1].hasPrefix("."),
            !parts[1].hasSuffix("."), !email.contains(where: { $0.isWhitespace || $0.isNewline })
        else {
            throw SparkError.invalid(field, "is not an email address")
        }
        return email
    }

    /// At least 12 characters, and at most 72 bytes (bcrypt reads no further).
    static func password(_ value: String, field: String) throws {
        guard value.count >= 12 else { throw SparkError.invalid(field, "must be at least 12 characters") }
        guard value.utf8.count <= 72 else { throw SparkError.invalid(field, "must be at most 72 bytes") }
    }

    static func id(_ value: String, prefix: String, field: String) throws {
        guard !value.isEmpty else { throw SparkError.invalid(field, "is required") }
        guard SparkID.isValid(value, prefix: prefix) else { throw SparkError.invalid(field, "is not a \(prefix)_… id") }
    }

    /// A page size in 1…500 (0 means the default of 50), and the id after which the page starts.
    static func page(size: Int32, token: String) throws -> (limit: Int, after: String) {
        try Paging.parse(size: size, token: token)
    }

    static func pageToken(lastID: String?, count: Int, limit: Int) -> String {
        Paging.token(lastID: lastID, count: count, limit: limit)
    }
}
