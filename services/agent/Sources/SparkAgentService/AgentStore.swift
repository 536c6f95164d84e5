import Foundation
import GRPCCore
import SQLKit
import SparkKit

struct MemoryRow: Sendable {
    var key: String
    /// JSON.
    var value: String
    var updatedAt: Int64
    var updatedBy: String
}

struct SummaryRow: Sendable {
    var id: String
    var text: String
    var executionID: String
    var createdAt: Int64
}

/// One agent step: `running` until it ends, then `succeeded` or `failed` with its record.
struct ExecutionRow: Sendable {
    var id: String
    var projectID: String
    var agentID: String
    var agentVersion: Int
    /// The caller's idempotency key; the execution's id when it gave none.
    var key: String
    var requestHash: String
    var runID: String
    var stepID: String
    var status: String
    /// The `AgentExecution` message (protobuf JSON) once the step ended.
    var record: String
    var startedAt: Int64
    var startedBy: String
    var deadlineAt: Int64
    /// A held step's resume point (``AgentLoop/ResumePoint``) as JSON; empty otherwise.
    var resume: String = ""
}

/// The agent service's schema and queries. Times are microseconds since 1970.
struct AgentStore: Sendable {
    let store: SparkStore
    let agents = DefinitionTable(table: "agents", singular: "agent", idPrefix: "agent")

    /// Facts an agent may keep, and summaries kept (older ones are dropped).
    static let maxFacts = 1000
    static let keptSummaries = 200

    static var migrations: [SparkMigration] {
        [
            SparkMigration("0001_agents", DefinitionTable(table: "agents", singular: "agent", idPrefix: "agent").migration + [
                """
                CREATE TABLE agent_memory (
                    project_id TEXT NOT NULL,
                    agent_id TEXT NOT NULL,
                    memory_key TEXT NOT NULL,
                    value TEXT NOT NULL,
                    updated_at BIGINT NOT NULL,
                    updated_by TEXT NOT NULL,
                    PRIMARY KEY (project_id, agent_id, memory_key)
                )
                """,
                """
                CREATE TABLE agent_summaries (
                    id TEXT PRIMARY KEY,
                    project_id TEXT NOT NULL,
                    agent_id TEXT NOT NULL,
                    text TEXT NOT NULL,
                    execution_id TEXT NOT NULL,
                    created_at BIGINT NOT NULL
                )
                """,
                "CREATE INDEX agent_summaries_agent ON agent_summaries (project_id, agent_id, created_at)",
                """
                CREATE TABLE agent_executions (
                    id TEXT PRIMARY KEY,
                    project_id TEXT NOT NULL,
                    agent_id TEXT NOT NULL,
                    agent_version INTEGER NOT NULL,
                    idempotency_key TEXT NOT NULL,
                    request_hash TEXT NOT NULL,
                    run_id TEXT NOT NULL DEFAULT '',
                    step_id TEXT NOT NULL DEFAULT '',
                    status TEXT NOT NULL,
                    record TEXT NOT NULL DEFAULT '',
                    started_at BIGINT NOT NULL,
                    started_by TEXT NOT NULL,
                    deadline_at BIGINT NOT NULL
                )
                """,
                "CREATE UNIQUE INDEX agent_executions_key ON agent_executions (project_id, agent_id, idempotency_key)",
                "CREATE INDEX agent_executions_project ON agent_executions (project_id, id)",
            ]),
            SparkMigration("0002_agent_resume") { _ in
                ["ALTER TABLE agent_executions ADD COLUMN resume TEXT NOT NULL DEFAULT ''"]
            },
        ]
    }

    static func now() -> Int64 { DefinitionTable.now() }

    // MARK: Memory

    func facts(projectID: String, agentID: String, on db: any SQLDatabase) async throws -> [MemoryRow] {
        try await db.raw("""
            SELECT * FROM agent_memory WHERE project_id = \(bind: projectID) AND agent_id = \(bind: agentID) ORDER BY memory_key LIMIT \(bind: Self.maxFacts)
            """).all().map(Self.memoryRow)
    }

    func fact(projectID: String, agentID: String, key: String, on db: any SQLDatabase) async throws -> MemoryRow? {
        try await db.raw("""
            SELECT * FROM agent_memory WHERE project_id = \(bind: projectID) AND agent_id = \(bind: agentID) AND memory_key = \(bind: key)
            """).first().map(Self.memoryRow)
    }

    /// Writes a fact; refuses a new one past ``maxFacts``.
    func put(_ fact: MemoryRow, projectID: String, agentID: String, on db: any SQLDatabase) async throws {
        if try await self.fact(projectID: projectID, agentID: agentID, key: fact.key, on: db) != nil {
            try await db.raw("""
                UPDATE agent_memory SET value = \(bind: fact.value), updated_at = \(bind: fact.updatedAt), updated_by = \(bind: fact.updatedBy)
                WHERE project_id = \(bind: projectID) AND agent_id = \(bind: agentID) AND memory_key = \(bind: fact.key)
                """).run()
            return
        }
        let count = try await db.raw("SELECT COUNT(*) AS n FROM agent_memory WHERE project_id = \(bind: projectID) AND agent_id = \(bind: agentID)")
            .first()?.decode(column: "n", as: Int.self) ?? 0
        guard count < Self.maxFacts else { throw SparkError(.resourceExhausted, "the agent keeps \(Self.maxFacts) facts already; delete some first") }
        try await db.raw("""
            INSERT INTO agent_memory (project_id, agent_id, memory_key, value, updated_at, updated_by)
            VALUES (\(bind: projectID), \(bind: agentID), \(bind: fact.key), \(bind: fact.value), \(bind: fact.updatedAt), \(bind: fact.updatedBy))
            """).run()
    }

    func deleteFact(projectID: String, agentID: String, key: String, on db: any SQLDatabase) async throws -> Bool {
        guard try await self.fact(projectID: projectID, agentID: agentID, key: key, on: db) != nil else { return false }
        try await db.raw("DELETE FROM agent_memory WHERE project_id = \(bind: projectID) AND agent_id = \(bind: agentID) AND memory_key = \(bind: key)").run()
        return true
    }

    func summaries(projectID: String, agentID: String, limit: Int, on db: any SQLDatabase) async throws -> [SummaryRow] {
        try await db.raw("""
            SELECT * FROM agent_summaries WHERE project_id = \(bind: projectID) AND agent_id = \(bind: agentID)
            ORDER BY created_at DESC, id DESC LIMIT \(bind: limit)
            """).all().map { row in
            SummaryRow(
                id: try row.decode(column: "id", as: String.self),
                text: try row.decode(column: "text", as: String.self),
                executionID: try row.decode(column: "execution_id", as: String.self),
                createdAt: try row.decode(column: "created_at", as: Int64.self)
            )
        }
    }

    /// Adds a summary and drops the oldest past ``keptSummaries``.
    func addSummary(_ summary: SummaryRow, projectID: String, agentID: String, on db: any SQLDatabase) async throws {
        try await db.raw("""
            INSERT INTO agent_summaries (id, project_id, agent_id, text, execution_id, created_at)
            VALUES (\(bind: summary.id), \(bind: projectID), \(bind: agentID), \(bind: summary.text), \(bind: summary.executionID), \(bind: summary.createdAt))
            """).run()
        let kept = try await self.summaries(projectID: projectID, agentID: agentID, limit: Self.keptSummaries, on: db)
        if kept.count == Self.keptSummaries, let oldest = kept.last {
            try await db.raw("""
                DELETE FROM agent_summaries WHERE project_id = \(bind: projectID) AND agent_id = \(bind: agentID) AND created_at < \(bind: oldest.createdAt)
                """).run()
        }
    }

    // MARK: Executions

    /// Records a step under its key; false when the key is taken (nothing written).
    /// Records `execution` as running under its key, in one statement; false when the key was
    /// taken already (by an earlier or a concurrent call), and then nothing is written.
    func begin(_ execution: ExecutionRow, on db: any SQLDatabase) async throws -> Bool {
        try await db.raw("""
            INSERT INTO agent_executions (id, project_id, agent_id, agent_version, idempotency_key, request_hash, run_id, step_id, status,
                                          started_at, started_by, deadline_at)
            VALUES (\(bind: execution.id), \(bind: execution.projectID), \(bind: execution.agentID), \(bind: execution.agentVersion),
                    \(bind: execution.key), \(bind: execution.requestHash), \(bind: execution.runID), \(bind: execution.stepID), 'running',
                    \(bind: execution.startedAt), \(bind: execution.startedBy), \(bind: execution.deadlineAt))
            ON CONFLICT (project_id, agent_id, idempotency_key) DO NOTHING
            RETURNING id
            """).first() != nil
    }

    func execution(projectID: String, agentID: String, key: String, on db: any SQLDatabase) async throws -> ExecutionRow? {
        try await db.raw("""
            SELECT * FROM agent_executions WHERE project_id = \(bind: projectID) AND agent_id = \(bind: agentID) AND idempotency_key = \(bind: key)
            """).first().map(Self.executionRow)
    }

    func execution(id: String, projectID: String, on db: any SQLDatabase) async throws -> ExecutionRow? {
        try await db.raw("SELECT * FROM agent_executions WHERE id = \(bind: id) AND project_id = \(bind: projectID)").first().map(Self.executionRow)
    }

    /// Newest first: ids below `before` (empty: from the newest).
    func executions(projectID: String, agentID: String?, before: String, limit: Int, on db: any SQLDatabase) async throws -> [ExecutionRow] {
        let upper = before.isEmpty ? "~" : before
        if let agentID {
            return try await db.raw("""
                SELECT * FROM agent_executions WHERE project_id = \(bind: projectID) AND agent_id = \(bind: agentID) AND id < \(bind: upper)
                ORDER BY id DESC LIMIT \(bind: limit)
                """).all().map(Self.executionRow)
        }
        return try await db.raw("""
            SELECT * FROM agent_executions WHERE project_id = \(bind: projectID) AND id < \(bind: upper) ORDER BY id DESC LIMIT \(bind: limit)
            """).all().map(Self.executionRow)
    }

    /// Takes over a step that was `running` past its deadline (its caller or this service died);
    /// true when this caller now owns it.
    func retake(_ execution: ExecutionRow, from old: ExecutionRow, on db: any SQLDatabase) async throws -> Bool {
        try await db.raw("""
            UPDATE agent_executions SET id = \(bind: execution.id), started_at = \(bind: execution.startedAt), deadline_at = \(bind: execution.deadlineAt),
                agent_version = \(bind: execution.agentVersion), started_by = \(bind: execution.startedBy), status = 'running'
            WHERE id = \(bind: old.id) AND status IN ('running', 'held')
            """).run()
        return try await self.execution(projectID: execution.projectID, agentID: execution.agentID, key: execution.key, on: db)?.id == execution.id
    }

    func finish(id: String, status: String, record: String, resume: String = "", on db: any SQLDatabase) async throws {
        try await db.raw("""
            UPDATE agent_executions SET status = \(bind: status), record = \(bind: record), resume = \(bind: resume)
            WHERE id = \(bind: id) AND status = 'running'
            """).run()
    }

    // MARK: Rows

    static func memoryRow(_ row: any SQLRow) throws -> MemoryRow {
        MemoryRow(
            key: try row.decode(column: "memory_key", as: String.self),
            value: try row.decode(column: "value", as: String.self),
            updatedAt: try row.decode(column: "updated_at", as: Int64.self),
            updatedBy: try row.decode(column: "updated_by", as: String.self)
        )
    }

    static func executionRow(_ row: any SQLRow) throws -> ExecutionRow {
        ExecutionRow(
            id: try row.decode(column: "id", as: String.self),
            projectID: try row.decode(column: "project_id", as: String.self),
            agentID: try row.decode(column: "agent_id", as: String.self),
            agentVersion: try row.decode(column: "agent_version", as: Int.self),
            key: try row.decode(column: "idempotency_key", as: String.self),
            requestHash: try row.decode(column: "request_hash", as: String.self),
            runID: try row.decode(column: "run_id", as: String.self),
            stepID: try row.decode(column: "step_id", as: String.self),
            status: try row.decode(column: "status", as: String.self),
            record: try row.decode(column: "record", as: String.self),
            startedAt: try row.decode(column: "started_at", as: Int64.self),
            startedBy: try row.decode(column: "started_by", as: String.self),
            deadlineAt: try row.decode(column: "deadline_at", as: Int64.self),
            resume: try row.decode(column: "resume", as: String.self)
        )
    }
}
