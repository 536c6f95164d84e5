import Foundation
import SQLKit
import SparkKit

/// Rows of the workflow service's tables.
struct WorkflowRow: Sendable {
    var id: String
    var projectID: String
    var name: String
    var description: String
    var latestVersion: Int
    var contentHash: String
    var createdBy: String
    var createdAt: Int64
    var updatedAt: Int64
}

struct VersionRow: Sendable {
    var workflowID: String
    var version: Int
    var contentHash: String
    var source: String
    var canonical: String
    var createdBy: String
    var createdAt: Int64
}

/// The workflow service's schema: workflows and their immutable versions. Times are
/// microseconds since 1970.
enum WorkflowMigrations {
    static let all: [SparkMigration] = [
        SparkMigration("0001_workflows", [
            """
            CREATE TABLE workflows (
                id TEXT PRIMARY KEY,
                project_id TEXT NOT NULL,
                name TEXT NOT NULL,
                description TEXT NOT NULL DEFAULT '',
                latest_version INTEGER NOT NULL,
                content_hash TEXT NOT NULL,
                created_by TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                updated_at BIGINT NOT NULL,
                deleted_at BIGINT
            )
            """,
            // A name is unique within its project, among workflows not deleted.
            "CREATE UNIQUE INDEX workflows_project_name ON workflows (project_id, name) WHERE deleted_at IS NULL",
            """
            CREATE TABLE workflow_versions (
                workflow_id TEXT NOT NULL REFERENCES workflows(id),
                version INTEGER NOT NULL,
                content_hash TEXT NOT NULL,
                source TEXT NOT NULL,
                canonical TEXT NOT NULL,
                created_by TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                PRIMARY KEY (workflow_id, version)
            )
            """,
        ]),
    ]
}

/// Every query of the workflow service, written once for SQLite and PostgreSQL.
struct WorkflowStore: Sendable {
    let store: SparkStore

    static func now() -> Int64 { Int64(Date().timeIntervalSince1970 * 1_000_000) }

    /// The workflow of this id (`wf_…`) or, for anything else, of this name.
    func workflow(id: String, projectID: String, on db: any SQLDatabase) async throws -> WorkflowRow? {
        guard SparkID.isValid(id, prefix: "wf") else { return try await self.workflow(name: id, projectID: projectID, on: db) }
        return try await db.raw("SELECT * FROM workflows WHERE id = \(bind: id) AND project_id = \(bind: projectID) AND deleted_at IS NULL").first().map(Self.workflowRow)
    }

    func workflow(name: String, projectID: String, on db: any SQLDatabase) async throws -> WorkflowRow? {
        try await db.raw("SELECT * FROM workflows WHERE name = \(bind: name) AND project_id = \(bind: projectID) AND deleted_at IS NULL").first().map(Self.workflowRow)
    }

    func workflows(projectID: String, after: String, limit: Int, on db: any SQLDatabase) async throws -> [WorkflowRow] {
        try await db.raw("""
            SELECT * FROM workflows WHERE project_id = \(bind: projectID) AND deleted_at IS NULL AND id > \(bind: after)
            ORDER BY id LIMIT \(bind: limit)
            """).all().map(Self.workflowRow)
    }

    func insert(_ row: WorkflowRow, on db: any SQLDatabase) async throws {
        try await db.raw("""
            INSERT INTO workflows (id, project_id, name, description, latest_version, content_hash, created_by, created_at, updated_at)
            VALUES (\(bind: row.id), \(bind: row.projectID), \(bind: row.name), \(bind: row.description), \(bind: row.latestVersion),
                    \(bind: row.contentHash), \(bind: row.createdBy), \(bind: row.createdAt), \(bind: row.updatedAt))
            """).run()
    }

    /// Moves the workflow to `version`, only if it is still at `version - 1` (two updates at once
    /// cannot both make the same version).
    func advance(_ row: WorkflowRow, on db: any SQLDatabase) async throws -> Bool {
        try await db.raw("""
            UPDATE workflows SET latest_version = \(bind: row.latestVersion), content_hash = \(bind: row.contentHash),
                description = \(bind: row.description), updated_at = \(bind: row.updatedAt)
            WHERE id = \(bind: row.id) AND latest_version = \(bind: row.latestVersion - 1) AND deleted_at IS NULL
            """).run()
        let current = try await db.raw("SELECT latest_version FROM workflows WHERE id = \(bind: row.id)").first()?.decode(column: "latest_version", as: Int.self)
        return current == row.latestVersion
    }

    func delete(id: String, at time: Int64, on db: any SQLDatabase) async throws {
        try await db.raw("UPDATE workflows SET deleted_at = \(bind: time) WHERE id = \(bind: id) AND deleted_at IS NULL").run()
    }

    func insert(_ version: VersionRow, on db: any SQLDatabase) async throws {
        try await db.raw("""
            INSERT INTO workflow_versions (workflow_id, version, content_hash, source, canonical, created_by, created_at)
            VALUES (\(bind: version.workflowID), \(bind: version.version), \(bind: version.contentHash), \(bind: version.source),
                    \(bind: version.canonical), \(bind: version.createdBy), \(bind: version.createdAt))
            """).run()
    }

    func version(workflowID: String, version: Int, on db: any SQLDatabase) async throws -> VersionRow? {
        try await db.raw("SELECT * FROM workflow_versions WHERE workflow_id = \(bind: workflowID) AND version = \(bind: version)").first().map(Self.versionRow)
    }

    /// Versions newest first, below `before` (0: from the newest).
    func versions(workflowID: String, before: Int, limit: Int, on db: any SQLDatabase) async throws -> [VersionRow] {
        let upper = before == 0 ? Int(Int32.max) : before
        return try await db.raw("""
            SELECT * FROM workflow_versions WHERE workflow_id = \(bind: workflowID) AND version < \(bind: upper)
            ORDER BY version DESC LIMIT \(bind: limit)
            """).all().map(Self.versionRow)
    }

    static func workflowRow(_ row: any SQLRow) throws -> WorkflowRow {
        WorkflowRow(
            id: try row.decode(column: "id", as: String.self),
            projectID: try row.decode(column: "project_id", as: String.self),
            name: try row.decode(column: "name", as: String.self),
            description: try row.decode(column: "description", as: String.self),
            latestVersion: try row.decode(column: "latest_version", as: Int.self),
            contentHash: try row.decode(column: "content_hash", as: String.self),
            createdBy: try row.decode(column: "created_by", as: String.self),
            createdAt: try row.decode(column: "created_at", as: Int64.self),
            updatedAt: try row.decode(column: "updated_at", as: Int64.self)
        )
    }

    static func versionRow(_ row: any SQLRow) throws -> VersionRow {
        VersionRow(
            workflowID: try row.decode(column: "workflow_id", as: String.self),
            version: try row.decode(column: "version", as: Int.self),
            contentHash: try row.decode(column: "content_hash", as: String.self),
            source: try row.decode(column: "source", as: String.self),
            canonical: try row.decode(column: "canonical", as: String.self),
            createdBy: try row.decode(column: "created_by", as: String.self),
            createdAt: try row.decode(column: "created_at", as: Int64.self)
        )
    }
}
