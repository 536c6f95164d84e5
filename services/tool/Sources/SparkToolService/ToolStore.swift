import Foundation
import SQLKit
import SparkKit

/// Rows of the tool service's tables.
struct ToolRow: Sendable {
    var id: String
    var projectID: String
    var name: String
    var description: String
    var kind: String
    var sideEffects: String
    var costMicros: Int64
    var latestVersion: Int
    var contentHash: String
    /// The latest version's canonical definition (JSON).
    var canonical: String
    var createdBy: String
    var createdAt: Int64
    var updatedAt: Int64
}

struct ToolVersionRow: Sendable {
    var toolID: String
    var version: Int
    var contentHash: String
    var source: String
    var canonical: String
    var createdBy: String
    var createdAt: Int64
}

struct SecretRow: Sendable {
    var projectID: String
    var name: String
    var keyID: String
    var sealed: String
    var createdAt: Int64
    var updatedAt: Int64
    var updatedBy: String
    /// The hosts the value may be sent to; empty: any.
    var hosts: [String] = []

    /// Whether the value may be sent to `host`: an entry names it exactly (case aside), or is
    /// `*.domain` and the host is below that domain.
    func allows(_ host: String) -> Bool {
        GuardedHTTPClient.host(host.trimmingCharacters(in: CharacterSet(charactersIn: "[]")), isIn: self.hosts)
    }
}

/// One call of a tool under an idempotency key: `running` until it ends, then `succeeded` or
/// `failed` with what the caller got back.
struct InvocationRow: Sendable {
    var id: String
    var projectID: String
    var toolID: String
    var key: String
    var requestHash: String
    var status: String
    var toolVersion: Int
    /// The response message (protobuf JSON) once the call ended.
    var response: String
    var startedAt: Int64
    var finishedAt: Int64?
}

/// The tool service's schema. Times are microseconds since 1970.
enum ToolMigrations {
    static let all: [SparkMigration] = [
        SparkMigration("0001_tools", [
            """
            CREATE TABLE tools (
                id TEXT PRIMARY KEY,
                project_id TEXT NOT NULL,
                name TEXT NOT NULL,
                description TEXT NOT NULL DEFAULT '',
                kind TEXT NOT NULL,
                side_effects TEXT NOT NULL,
                cost_micros BIGINT NOT NULL,
                latest_version INTEGER NOT NULL,
                content_hash TEXT NOT NULL,
                canonical TEXT NOT NULL,
                created_by TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                updated_at BIGINT NOT NULL,
                deleted_at BIGINT
            )
            """,
            "CREATE UNIQUE INDEX tools_project_name ON tools (project_id, name) WHERE deleted_at IS NULL",
            """
            CREATE TABLE tool_versions (
                tool_id TEXT NOT NULL REFERENCES tools(id),
                version INTEGER NOT NULL,
                content_hash TEXT NOT NULL,
                source TEXT NOT NULL,
                canonical TEXT NOT NULL,
                created_by TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                PRIMARY KEY (tool_id, version)
            )
            """,
            // Values sealed with AES-GCM under the master key `key_id`, bound to project and name.
            """
            CREATE TABLE secrets (
                project_id TEXT NOT NULL,
                name TEXT NOT NULL,
                key_id TEXT NOT NULL,
                sealed TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                updated_at BIGINT NOT NULL,
                updated_by TEXT NOT NULL,
                PRIMARY KEY (project_id, name)
            )
            """,
            "CREATE INDEX secrets_key ON secrets (key_id)",
            """
            CREATE TABLE invocations (
                id TEXT PRIMARY KEY,
                project_id TEXT NOT NULL,
                tool_id TEXT NOT NULL,
                idempotency_key TEXT NOT NULL,
                request_hash TEXT NOT NULL,
                status TEXT NOT NULL,
                tool_version INTEGER NOT NULL,
                response TEXT NOT NULL DEFAULT '',
                started_at BIGINT NOT NULL,
                finished_at BIGINT
            )
            """,
            "CREATE UNIQUE INDEX invocations_key ON invocations (project_id, tool_id, idempotency_key)",
            "CREATE INDEX invocations_started ON invocations (started_at)",
        ]),
        documents,
        SparkMigration("0003_secret_hosts", ["ALTER TABLE secrets ADD COLUMN hosts TEXT NOT NULL DEFAULT ''"]),
    ]
}

/// Every query of the tool service, written once for SQLite and PostgreSQL.
struct ToolStore: Sendable {
    let store: SparkStore

    static func now() -> Int64 { Int64(Date().timeIntervalSince1970 * 1_000_000) }

    // MARK: Tools

    /// The live tool with this id or name in the project.
    func tool(_ reference: String, projectID: String, on db: any SQLDatabase) async throws -> ToolRow? {
        let column = SparkID.isValid(reference, prefix: "tool") ? "id" : "name"
        return try await db.raw("SELECT * FROM tools WHERE \(unsafeRaw: column) = \(bind: reference) AND project_id = \(bind: projectID) AND deleted_at IS NULL")
            .first().map(Self.toolRow)
    }

    func tools(projectID: String, after: String, limit: Int, on db: any SQLDatabase) async throws -> [ToolRow] {
        try await db.raw("""
            SELECT * FROM tools WHERE project_id = \(bind: projectID) AND deleted_at IS NULL AND id > \(bind: after)
            ORDER BY id LIMIT \(bind: limit)
            """).all().map(Self.toolRow)
    }

    func insert(_ row: ToolRow, on db: any SQLDatabase) async throws {
        try await db.raw("""
            INSERT INTO tools (id, project_id, name, description, kind, side_effects, cost_micros, latest_version, content_hash,
                               canonical, created_by, created_at, updated_at)
            VALUES (\(bind: row.id), \(bind: row.projectID), \(bind: row.name), \(bind: row.description), \(bind: row.kind),
                    \(bind: row.sideEffects), \(bind: row.costMicros), \(bind: row.latestVersion), \(bind: row.contentHash),
                    \(bind: row.canonical), \(bind: row.createdBy), \(bind: row.createdAt), \(bind: row.updatedAt))
            """).run()
    }

    /// Moves the tool to `row.latestVersion`, only if it is still at the version before.
    func advance(_ row: ToolRow, on db: any SQLDatabase) async throws -> Bool {
        try await db.raw("""
            UPDATE tools SET latest_version = \(bind: row.latestVersion), content_hash = \(bind: row.contentHash),
                description = \(bind: row.description), kind = \(bind: row.kind), side_effects = \(bind: row.sideEffects),
                cost_micros = \(bind: row.costMicros), canonical = \(bind: row.canonical), updated_at = \(bind: row.updatedAt)
            WHERE id = \(bind: row.id) AND latest_version = \(bind: row.latestVersion - 1) AND deleted_at IS NULL
            """).run()
        let current = try await db.raw("SELECT latest_version FROM tools WHERE id = \(bind: row.id)").first()?.decode(column: "latest_version", as: Int.self)
        return current == row.latestVersion
    }

    func delete(id: String, at time: Int64, on db: any SQLDatabase) async throws {
        try await db.raw("UPDATE tools SET deleted_at = \(bind: time) WHERE id = \(bind: id) AND deleted_at IS NULL").run()
    }

    func insert(_ version: ToolVersionRow, on db: any SQLDatabase) async throws {
        try await db.raw("""
            INSERT INTO tool_versions (tool_id, version, content_hash, source, canonical, created_by, created_at)
            VALUES (\(bind: version.toolID), \(bind: version.version), \(bind: version.contentHash), \(bind: version.source),
                    \(bind: version.canonical), \(bind: version.createdBy), \(bind: version.createdAt))
            """).run()
    }

    func version(toolID: String, version: Int, on db: any SQLDatabase) async throws -> ToolVersionRow? {
        try await db.raw("SELECT * FROM tool_versions WHERE tool_id = \(bind: toolID) AND version = \(bind: version)").first().map(Self.versionRow)
    }

    func versions(toolID: String, before: Int, limit: Int, on db: any SQLDatabase) async throws -> [ToolVersionRow] {
        let upper = before == 0 ? Int(Int32.max) : before
        return try await db.raw("""
            SELECT * FROM tool_versions WHERE tool_id = \(bind: toolID) AND version < \(bind: upper)
            ORDER BY version DESC LIMIT \(bind: limit)
            """).all().map(Self.versionRow)
    }

    // MARK: Secrets

    /// Writes the secret; true when it is new.
    func put(_ secret: SecretRow, on db: any SQLDatabase) async throws -> Bool {
        let existing = try await db.raw("SELECT created_at FROM secrets WHERE project_id = \(bind: secret.projectID) AND name = \(bind: secret.name)").first()
        if existing == nil {
            try await db.raw("""
                INSERT INTO secrets (project_id, name, key_id, sealed, created_at, updated_at, updated_by, hosts)
                VALUES (\(bind: secret.projectID), \(bind: secret.name), \(bind: secret.keyID), \(bind: secret.sealed),
                        \(bind: secret.createdAt), \(bind: secret.updatedAt), \(bind: secret.updatedBy), \(bind: secret.hosts.joined(separator: "\n")))
                """).run()
            return true
        }
        try await db.raw("""
            UPDATE secrets SET key_id = \(bind: secret.keyID), sealed = \(bind: secret.sealed), updated_at = \(bind: secret.updatedAt),
                updated_by = \(bind: secret.updatedBy), hosts = \(bind: secret.hosts.joined(separator: "\n"))
            WHERE project_id = \(bind: secret.projectID) AND name = \(bind: secret.name)
            """).run()
        return false
    }

    func secret(projectID: String, name: String, on db: any SQLDatabase) async throws -> SecretRow? {
        try await db.raw("SELECT * FROM secrets WHERE project_id = \(bind: projectID) AND name = \(bind: name)").first().map(Self.secretRow)
    }

    func secrets(projectID: String, after: String, limit: Int, on db: any SQLDatabase) async throws -> [SecretRow] {
        try await db.raw("""
            SELECT * FROM secrets WHERE project_id = \(bind: projectID) AND name > \(bind: after) ORDER BY name LIMIT \(bind: limit)
            """).all().map(Self.secretRow)
    }

    func deleteSecret(projectID: String, name: String, on db: any SQLDatabase) async throws -> Bool {
        guard try await self.secret(projectID: projectID, name: name, on: db) != nil else { return false }
        try await db.raw("DELETE FROM secrets WHERE project_id = \(bind: projectID) AND name = \(bind: name)").run()
        return true
    }

    /// Up to `limit` secrets sealed under a key other than `keyID`.
    func secrets(notUnder keyID: String, limit: Int, on db: any SQLDatabase) async throws -> [SecretRow] {
        try await db.raw("SELECT * FROM secrets WHERE key_id <> \(bind: keyID) ORDER BY project_id, name LIMIT \(bind: limit)").all().map(Self.secretRow)
    }

    /// Re-seals a secret, only if it is still sealed as it was read (a concurrent write wins).
    func reseal(_ secret: SecretRow, from old: SecretRow, on db: any SQLDatabase) async throws {
        try await db.raw("""
            UPDATE secrets SET key_id = \(bind: secret.keyID), sealed = \(bind: secret.sealed)
            WHERE project_id = \(bind: secret.projectID) AND name = \(bind: secret.name) AND sealed = \(bind: old.sealed)
            """).run()
    }

    // MARK: Invocations

    /// Records a call under its key; false when the key is already taken (nothing written).
    /// Records `invocation` as running under its key, in one statement; false when the key was
    /// taken already (by an earlier or a concurrent call), and then nothing is written.
    func begin(_ invocation: InvocationRow, on db: any SQLDatabase) async throws -> Bool {
        try await db.raw("""
            INSERT INTO invocations (id, project_id, tool_id, idempotency_key, request_hash, status, tool_version, started_at)
            VALUES (\(bind: invocation.id), \(bind: invocation.projectID), \(bind: invocation.toolID), \(bind: invocation.key),
                    \(bind: invocation.requestHash), 'running', \(bind: invocation.toolVersion), \(bind: invocation.startedAt))
            ON CONFLICT (project_id, tool_id, idempotency_key) DO NOTHING
            RETURNING id
            """).first() != nil
    }

    func invocation(projectID: String, toolID: String, key: String, on db: any SQLDatabase) async throws -> InvocationRow? {
        try await db.raw("""
            SELECT * FROM invocations WHERE project_id = \(bind: projectID) AND tool_id = \(bind: toolID) AND idempotency_key = \(bind: key)
            """).first().map(Self.invocationRow)
    }

    /// Takes over a call that was `running` since `startedAt` (its caller is gone); true when this
    /// caller now owns it.
    func retake(_ invocation: InvocationRow, startedAt: Int64, on db: any SQLDatabase) async throws -> Bool {
        try await db.raw("""
            UPDATE invocations SET id = \(bind: invocation.id), started_at = \(bind: invocation.startedAt), tool_version = \(bind: invocation.toolVersion)
            WHERE project_id = \(bind: invocation.projectID) AND tool_id = \(bind: invocation.toolID)
                AND idempotency_key = \(bind: invocation.key) AND status = 'running' AND started_at = \(bind: startedAt)
            """).run()
        return try await self.invocation(projectID: invocation.projectID, toolID: invocation.toolID, key: invocation.key, on: db)?.id == invocation.id
    }

    /// Gives a running call's key back: the next call under it runs the tool.
    func forget(id: String, on db: any SQLDatabase) async throws {
        try await db.raw("DELETE FROM invocations WHERE id = \(bind: id) AND status = 'running'").run()
    }

    func finish(id: String, status: String, response: String, at time: Int64, on db: any SQLDatabase) async throws {
        try await db.raw("""
            UPDATE invocations SET status = \(bind: status), response = \(bind: response), finished_at = \(bind: time)
            WHERE id = \(bind: id) AND status = 'running'
            """).run()
    }

    /// Forgets finished calls older than `before`, so that keys are kept for a bounded time.
    func prune(before: Int64, on db: any SQLDatabase) async throws {
        try await db.raw("DELETE FROM invocations WHERE started_at < \(bind: before) AND status <> 'running'").run()
    }

    // MARK: Rows

    static func toolRow(_ row: any SQLRow) throws -> ToolRow {
        ToolRow(
            id: try row.decode(column: "id", as: String.self),
            projectID: try row.decode(column: "project_id", as: String.self),
            name: try row.decode(column: "name", as: String.self),
            description: try row.decode(column: "description", as: String.self),
            kind: try row.decode(column: "kind", as: String.self),
            sideEffects: try row.decode(column: "side_effects", as: String.self),
            costMicros: try row.decode(column: "cost_micros", as: Int64.self),
            latestVersion: try row.decode(column: "latest_version", as: Int.self),
            contentHash: try row.decode(column: "content_hash", as: String.self),
            canonical: try row.decode(column: "canonical", as: String.self),
            createdBy: try row.decode(column: "created_by", as: String.self),
            createdAt: try row.decode(column: "created_at", as: Int64.self),
            updatedAt: try row.decode(column: "updated_at", as: Int64.self)
        )
    }

    static func versionRow(_ row: any SQLRow) throws -> ToolVersionRow {
        ToolVersionRow(
            toolID: try row.decode(column: "tool_id", as: String.self),
            version: try row.decode(column: "version", as: Int.self),
            contentHash: try row.decode(column: "content_hash", as: String.self),
            source: try row.decode(column: "source", as: String.self),
            canonical: try row.decode(column: "canonical", as: String.self),
            createdBy: try row.decode(column: "created_by", as: String.self),
            createdAt: try row.decode(column: "created_at", as: Int64.self)
        )
    }

    static func secretRow(_ row: any SQLRow) throws -> SecretRow {
        SecretRow(
            projectID: try row.decode(column: "project_id", as: String.self),
            name: try row.decode(column: "name", as: String.self),
            keyID: try row.decode(column: "key_id", as: String.self),
            sealed: try row.decode(column: "sealed", as: String.self),
            createdAt: try row.decode(column: "created_at", as: Int64.self),
            updatedAt: try row.decode(column: "updated_at", as: Int64.self),
            updatedBy: try row.decode(column: "updated_by", as: String.self),
            hosts: try row.decode(column: "hosts", as: String.self).split(separator: "\n").map(String.init)
        )
    }

    static func invocationRow(_ row: any SQLRow) throws -> InvocationRow {
        InvocationRow(
            id: try row.decode(column: "id", as: String.self),
            projectID: try row.decode(column: "project_id", as: String.self),
            toolID: try row.decode(column: "tool_id", as: String.self),
            key: try row.decode(column: "idempotency_key", as: String.self),
            requestHash: try row.decode(column: "request_hash", as: String.self),
            status: try row.decode(column: "status", as: String.self),
            toolVersion: try row.decode(column: "tool_version", as: Int.self),
            response: try row.decode(column: "response", as: String.self),
            startedAt: try row.decode(column: "started_at", as: Int64.self),
            finishedAt: try row.decode(column: "finished_at", as: Int64?.self)
        )
    }
}
