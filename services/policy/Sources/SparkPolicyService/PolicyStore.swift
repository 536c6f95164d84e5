import Foundation
import SQLKit
import SparkKit

/// A deny or require_approval as stored.
struct ViolationRow: Sendable {
    var id: String
    var projectID: String
    var point: String
    var effect: String
    /// The `Decision` message (protobuf JSON).
    var decision: String
    /// The environment the rules saw (JSON).
    var context: String
    var principalID: String
    var createdAt: Int64
}

/// The policy service's schema and queries: policies and their versions (``DefinitionTable``;
/// global ones have the project id ""), a revision per scope that every change bumps (so that
/// each replica knows when its compiled policies are stale), and violations.
struct PolicyStore: Sendable {
    let store: SparkStore
    let policies = DefinitionTable(table: "policies", singular: "policy", idPrefix: "pol")

    /// Policies in one project (or among the global ones), at most.
    static let maxPolicies = 50

    static var migrations: [SparkMigration] {
        [
            SparkMigration("0001_policies", DefinitionTable(table: "policies", singular: "policy", idPrefix: "pol").migration + [
                "CREATE TABLE policy_revisions (scope TEXT PRIMARY KEY, revision BIGINT NOT NULL)",
                """
                CREATE TABLE policy_violations (
                    id TEXT PRIMARY KEY,
                    project_id TEXT NOT NULL,
                    point TEXT NOT NULL,
                    effect TEXT NOT NULL,
                    decision TEXT NOT NULL,
                    context TEXT NOT NULL,
                    principal_id TEXT NOT NULL,
                    created_at BIGINT NOT NULL
                )
                """,
                "CREATE INDEX policy_violations_project ON policy_violations (project_id, id)",
            ]),
        ]
    }

    // MARK: Revisions

    /// Marks the scope's policies changed; in the transaction of the change.
    func bump(scope: String, on db: any SQLDatabase) async throws {
        try await db.raw("""
            INSERT INTO policy_revisions (scope, revision) VALUES (\(bind: scope), 1)
            ON CONFLICT (scope) DO UPDATE SET revision = policy_revisions.revision + 1
            """).run()
    }

    /// The revisions of the global scope ("") and of the project's.
    func revisions(projectID: String, on db: any SQLDatabase) async throws -> (global: Int64, project: Int64) {
        let rows = try await db.raw("SELECT scope, revision FROM policy_revisions WHERE scope IN ('', \(bind: projectID))").all()
        var global: Int64 = 0
        var project: Int64 = 0
        for row in rows {
            let revision = try row.decode(column: "revision", as: Int64.self)
            if try row.decode(column: "scope", as: String.self).isEmpty { global = revision } else { project = revision }
        }
        return (global, project)
    }

    /// Every live policy of the scope, by name.
    func all(scope: String, on db: any SQLDatabase) async throws -> [DefinitionRow] {
        try await self.policies.rows(projectID: scope, after: "", limit: Self.maxPolicies + 1, on: db).sorted { $0.name < $1.name }
    }

    // MARK: Violations

    func insert(_ violation: ViolationRow, on db: any SQLDatabase) async throws {
        try await db.raw("""
            INSERT INTO policy_violations (id, project_id, point, effect, decision, context, principal_id, created_at)
            VALUES (\(bind: violation.id), \(bind: violation.projectID), \(bind: violation.point), \(bind: violation.effect),
                    \(bind: violation.decision), \(bind: violation.context), \(bind: violation.principalID), \(bind: violation.createdAt))
            """).run()
    }

    func violation(id: String, projectID: String, on db: any SQLDatabase) async throws -> ViolationRow? {
        try await db.raw("SELECT * FROM policy_violations WHERE id = \(bind: id) AND project_id = \(bind: projectID)").first().map(Self.violationRow)
    }

    /// Newest first: ids below `before` (empty: from the newest), optionally of one point or effect.
    func violations(projectID: String, point: String, effect: String, before: String, limit: Int, on db: any SQLDatabase) async throws -> [ViolationRow] {
        let upper = before.isEmpty ? "~" : before
        return try await db.raw("""
            SELECT * FROM policy_violations WHERE project_id = \(bind: projectID) AND id < \(bind: upper)
                AND (\(bind: point) = '' OR point = \(bind: point)) AND (\(bind: effect) = '' OR effect = \(bind: effect))
            ORDER BY id DESC LIMIT \(bind: limit)
            """).all().map(Self.violationRow)
    }

    static func violationRow(_ row: any SQLRow) throws -> ViolationRow {
        ViolationRow(
            id: try row.decode(column: "id", as: String.self),
            projectID: try row.decode(column: "project_id", as: String.self),
            point: try row.decode(column: "point", as: String.self),
            effect: try row.decode(column: "effect", as: String.self),
            decision: try row.decode(column: "decision", as: String.self),
            context: try row.decode(column: "context", as: String.self),
            principalID: try row.decode(column: "principal_id", as: String.self),
            createdAt: try row.decode(column: "created_at", as: Int64.self)
        )
    }
}
