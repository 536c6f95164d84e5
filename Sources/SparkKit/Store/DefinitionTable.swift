import Foundation
import GRPCCore
public import SQLKit

/// A named, project-scoped definition whose versions are immutable and content-hashed: the row
/// holds the latest version's canonical form; each version keeps its source.
public struct DefinitionRow: Sendable {
    public var id: String
    public var projectID: String
    public var name: String
    public var latestVersion: Int
    public var contentHash: String
    /// The latest version's canonical definition (JSON).
    public var canonical: String
    public var createdBy: String
    public var createdAt: Int64
    public var updatedAt: Int64
}

public struct DefinitionVersionRow: Sendable {
    public var ownerID: String
    public var version: Int
    public var contentHash: String
    public var source: String
    public var canonical: String
    public var createdBy: String
    public var createdAt: Int64
}

/// What applying a definition did.
public struct DefinitionChange: Sendable {
    public var row: DefinitionRow
    public var version: DefinitionVersionRow
    /// The definition did not exist before.
    public var created: Bool
    /// A new version was made (false: the content hash was unchanged).
    public var changed: Bool

    public init(row: DefinitionRow, version: DefinitionVersionRow, created: Bool, changed: Bool) {
        self.row = row
        self.version = version
        self.created = created
        self.changed = changed
    }
}

/// The table of one kind of versioned definition (`agents` and `agent_versions`, say), with every
/// query written once for SQLite and PostgreSQL. Times are microseconds since 1970.
public struct DefinitionTable: Sendable {
    /// The table of definitions; versions are in `<singular>_versions`, keyed by `<singular>_id`.
    public let table: String
    public let singular: String
    /// The prefix of ids (`agent` makes `agent_…`).
    public let idPrefix: String

    public init(table: String, singular: String, idPrefix: String) {
        self.table = table
        self.singular = singular
        self.idPrefix = idPrefix
    }

    var versions: String { "\(self.singular)_versions" }
    var ownerColumn: String { "\(self.singular)_id" }

    public static func now() -> Int64 { Int64(Date().timeIntervalSince1970 * 1_000_000) }

    /// The statements that create both tables.
    public var migration: [String] {
        [
            """
            CREATE TABLE \(self.table) (
                id TEXT PRIMARY KEY,
                project_id TEXT NOT NULL,
                name TEXT NOT NULL,
                latest_version INTEGER NOT NULL,
                content_hash TEXT NOT NULL,
                canonical TEXT NOT NULL,
                created_by TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                updated_at BIGINT NOT NULL,
                deleted_at BIGINT
            )
            """,
            "CREATE UNIQUE INDEX \(self.table)_project_name ON \(self.table) (project_id, name) WHERE deleted_at IS NULL",
            """
            CREATE TABLE \(self.versions) (
                \(self.ownerColumn) TEXT NOT NULL REFERENCES \(self.table)(id),
                version INTEGER NOT NULL,
                content_hash TEXT NOT NULL,
                source TEXT NOT NULL,
                canonical TEXT NOT NULL,
                created_by TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                PRIMARY KEY (\(self.ownerColumn), version)
            )
            """,
        ]
    }

    /// A requested version: a number, or nil for `latest` (or empty).
    public static func versionNumber(_ text: String) throws -> Int? {
        switch text {
        case "", "latest": return nil
        default:
            guard let number = Int(text), number >= 1 else { throw SparkError.invalid("version", "must be a version number or \"latest\"") }
            return number
        }
    }

    // MARK: Reads

    /// The live definition with this id or name in the project.
    public func row(_ reference: String, projectID: String, on db: any SQLDatabase) async throws -> DefinitionRow? {
        let column = SparkID.isValid(reference, prefix: self.idPrefix) ? "id" : "name"
        return try await db.raw("SELECT * FROM \(unsafeRaw: self.table) WHERE \(unsafeRaw: column) = \(bind: reference) AND project_id = \(bind: projectID) AND deleted_at IS NULL")
            .first().map(Self.row)
    }

    public func rows(projectID: String, after: String, limit: Int, on db: any SQLDatabase) async throws -> [DefinitionRow] {
        try await db.raw("""
            SELECT * FROM \(unsafeRaw: self.table) WHERE project_id = \(bind: projectID) AND deleted_at IS NULL AND id > \(bind: after)
            ORDER BY id LIMIT \(bind: limit)
            """).all().map(Self.row)
    }

    public func version(of ownerID: String, _ version: Int, on db: any SQLDatabase) async throws -> DefinitionVersionRow? {
        try await db.raw("SELECT * FROM \(unsafeRaw: self.versions) WHERE \(unsafeRaw: self.ownerColumn) = \(bind: ownerID) AND version = \(bind: version)")
            .first().map(self.versionRow)
    }

    /// Versions below `before` (0: all), newest first.
    public func versions(of ownerID: String, before: Int, limit: Int, on db: any SQLDatabase) async throws -> [DefinitionVersionRow] {
        let upper = before == 0 ? Int(Int32.max) : before
        return try await db.raw("""
            SELECT * FROM \(unsafeRaw: self.versions) WHERE \(unsafeRaw: self.ownerColumn) = \(bind: ownerID) AND version < \(bind: upper)
            ORDER BY version DESC LIMIT \(bind: limit)
            """).all().map(self.versionRow)
    }

    // MARK: Writes

    /// Creates the definition named `name`, or adds a version when its content hash changed.
    /// With `mustExist` (an update of the definition of that id or name), nothing is created.
    public func apply(
        name: String, canonical: String, contentHash: String, source: String,
        projectID: String, actor: String, mustExist reference: String? = nil, on db: any SQLDatabase
    ) async throws -> DefinitionChange {
        let now = Self.now()
        guard let existing = try await self.row(reference ?? name, projectID: projectID, on: db) else {
            if reference != nil { throw SparkError.notFound(self.singular) }
            let row = DefinitionRow(
                id: SparkID.make(self.idPrefix), projectID: projectID, name: name, latestVersion: 1, contentHash: contentHash,
                canonical: canonical, createdBy: actor, createdAt: now, updatedAt: now
            )
            let version = DefinitionVersionRow(ownerID: row.id, version: 1, contentHash: contentHash, source: source, canonical: canonical, createdBy: actor, createdAt: now)
            try await db.raw("""
                INSERT INTO \(unsafeRaw: self.table) (id, project_id, name, latest_version, content_hash, canonical, created_by, created_at, updated_at)
                VALUES (\(bind: row.id), \(bind: projectID), \(bind: name), 1, \(bind: contentHash), \(bind: canonical), \(bind: actor), \(bind: now), \(bind: now))
                """).run()
            try await self.insert(version, on: db)
            return DefinitionChange(row: row, version: version, created: true, changed: true)
        }
        guard existing.name == name else {
            throw SparkError.invalid("source", "the definition is named \(name.debugDescription), but this \(self.singular) is \(existing.name.debugDescription); apply it to create a \(self.singular) of that name")
        }
        if contentHash == existing.contentHash, let latest = try await self.version(of: existing.id, existing.latestVersion, on: db) {
            return DefinitionChange(row: existing, version: latest, created: false, changed: false)
        }
        var row = existing
        row.latestVersion += 1
        row.contentHash = contentHash
        row.canonical = canonical
        row.updatedAt = now
        try await db.raw("""
            UPDATE \(unsafeRaw: self.table) SET latest_version = \(bind: row.latestVersion), content_hash = \(bind: contentHash),
                canonical = \(bind: canonical), updated_at = \(bind: now)
            WHERE id = \(bind: row.id) AND latest_version = \(bind: existing.latestVersion) AND deleted_at IS NULL
            """).run()
        let current = try await db.raw("SELECT latest_version FROM \(unsafeRaw: self.table) WHERE id = \(bind: row.id)").first()?.decode(column: "latest_version", as: Int.self)
        guard current == row.latestVersion else {
            throw SparkError(.aborted, "the \(self.singular) changed while this update ran; try again")
        }
        let version = DefinitionVersionRow(ownerID: row.id, version: row.latestVersion, contentHash: contentHash, source: source, canonical: canonical, createdBy: actor, createdAt: now)
        try await self.insert(version, on: db)
        return DefinitionChange(row: row, version: version, created: false, changed: true)
    }

    func insert(_ version: DefinitionVersionRow, on db: any SQLDatabase) async throws {
        try await db.raw("""
            INSERT INTO \(unsafeRaw: self.versions) (\(unsafeRaw: self.ownerColumn), version, content_hash, source, canonical, created_by, created_at)
            VALUES (\(bind: version.ownerID), \(bind: version.version), \(bind: version.contentHash), \(bind: version.source),
                    \(bind: version.canonical), \(bind: version.createdBy), \(bind: version.createdAt))
            """).run()
    }

    /// Deletes the live definition with this id or name; its id, or nil when there was none.
    public func delete(_ reference: String, projectID: String, on db: any SQLDatabase) async throws -> String? {
        guard let row = try await self.row(reference, projectID: projectID, on: db) else { return nil }
        try await db.raw("UPDATE \(unsafeRaw: self.table) SET deleted_at = \(bind: Self.now()) WHERE id = \(bind: row.id) AND deleted_at IS NULL").run()
        return row.id
    }

    // MARK: Rows

    static func row(_ row: any SQLRow) throws -> DefinitionRow {
        DefinitionRow(
            id: try row.decode(column: "id", as: String.self),
            projectID: try row.decode(column: "project_id", as: String.self),
            name: try row.decode(column: "name", as: String.self),
            latestVersion: try row.decode(column: "latest_version", as: Int.self),
            contentHash: try row.decode(column: "content_hash", as: String.self),
            canonical: try row.decode(column: "canonical", as: String.self),
            createdBy: try row.decode(column: "created_by", as: String.self),
            createdAt: try row.decode(column: "created_at", as: Int64.self),
            updatedAt: try row.decode(column: "updated_at", as: Int64.self)
        )
    }

    func versionRow(_ row: any SQLRow) throws -> DefinitionVersionRow {
        DefinitionVersionRow(
            ownerID: try row.decode(column: self.ownerColumn, as: String.self),
            version: try row.decode(column: "version", as: Int.self),
            contentHash: try row.decode(column: "content_hash", as: String.self),
            source: try row.decode(column: "source", as: String.self),
            canonical: try row.decode(column: "canonical", as: String.self),
            createdBy: try row.decode(column: "created_by", as: String.self),
            createdAt: try row.decode(column: "created_at", as: Int64.self)
        )
    }
}
