import Foundation
import SQLKit
import SparkKit

/// A run as stored. The machine's changing state is `state` (its snapshot); the columns beside
/// it repeat what lists filter and sort on.
struct RunRow: Sendable {
    var id: String
    var projectID: String
    var workflowID: String
    var workflowName: String
    var workflowVersion: Int
    var contentHash: String
    var status: String
    var inputs: String
    var outputs: String
    var errorReason: String
    var errorMessage: String
    var state: String
    /// The principal that started the run, as protobuf JSON: the workers act for it.
    var principal: String
    var idempotencyKey: String
    var costMicros: Int64
    var rerunOf: String
    var rerunFromStep: String
    var seed: Int64
    var deadline: Int64?
    var createdBy: String
    var createdAt: Int64
    var startedAt: Int64
    var endedAt: Int64
    var updatedAt: Int64
    /// When a tick next changes something (microseconds), if a timer is set for it.
    var wakeAt: Int64?
    /// The budget reservation holding the run's estimated cost (`res_…`), released when it ends.
    var envelopeID = ""
    var estimatedCostMicros: Int64 = 0
}

/// One attempt of a step, as stored.
struct AttemptRow: Sendable {
    var runID: String
    var stepID: String
    var attempt: Int
    var status: String
    var idempotencyKey: String
    var startedAt: Int64
    var endedAt: Int64
    var errorReason: String
    var errorMessage: String
    var costMicros: Int64
    var callID: String
    var worker: String
}

struct EventRow: Sendable {
    var projectID: String
    var sequence: Int64
    var runID: String
    var workflowName: String
    var kind: String
    var stepID: String
    var attempt: Int
    var message: String
    var createdAt: Int64
}

struct ApprovalRow: Sendable {
    var id: String
    var projectID: String
    var runID: String
    var stepID: String
    var status: String
    var message: String
    var approvers: [String]
    var workflowName: String
    var requestedBy: String
    var createdAt: Int64
    var expiresAt: Int64?
    var decidedBy: String
    var decidedAt: Int64
    var comment: String
    /// The call a policy held, as JSON (kind, target, arguments, digest, rule, message,
    /// violation_id); empty for an approval step or a run's hold.
    var heldCall: String = ""
}

/// The run service's tables: runs, the definitions they pin, step attempts, events with their
/// per-project sequence, approvals, idempotency keys, and the task queue.
struct RunStore: Sendable {
    let store: SparkStore

    static func now() -> Int64 { Int64(Date().timeIntervalSince1970 * 1_000_000) }

    static let migrations: [SparkMigration] = [
        SparkMigration("run_0001_runs") { dialect in
            [
                """
                CREATE TABLE runs (
                    id TEXT PRIMARY KEY,
                    project_id TEXT NOT NULL,
                    workflow_id TEXT NOT NULL,
                    workflow_name TEXT NOT NULL,
                    workflow_version INTEGER NOT NULL,
                    content_hash TEXT NOT NULL,
                    status TEXT NOT NULL,
                    inputs TEXT NOT NULL,
                    outputs TEXT NOT NULL DEFAULT '{}',
                    error_reason TEXT NOT NULL DEFAULT '',
                    error_message TEXT NOT NULL DEFAULT '',
                    state TEXT NOT NULL,
                    principal TEXT NOT NULL,
                    idempotency_key TEXT NOT NULL DEFAULT '',
                    cost_micros BIGINT NOT NULL DEFAULT 0,
                    rerun_of TEXT NOT NULL DEFAULT '',
                    rerun_from_step TEXT NOT NULL DEFAULT '',
                    seed BIGINT NOT NULL,
                    deadline BIGINT,
                    created_by TEXT NOT NULL,
                    created_at BIGINT NOT NULL,
                    started_at BIGINT NOT NULL DEFAULT 0,
                    ended_at BIGINT NOT NULL DEFAULT 0,
                    updated_at BIGINT NOT NULL,
                    wake_at BIGINT
                )
                """,
                "CREATE INDEX runs_project ON runs (project_id, id)",
                "CREATE INDEX runs_project_status ON runs (project_id, status, id)",
                "CREATE INDEX runs_project_workflow ON runs (project_id, workflow_id, id)",
                "CREATE TABLE run_definitions (content_hash TEXT PRIMARY KEY, definition TEXT NOT NULL)",
                """
                CREATE TABLE step_attempts (
                    run_id TEXT NOT NULL,
                    step_id TEXT NOT NULL,
                    attempt INTEGER NOT NULL,
                    status TEXT NOT NULL,
                    idempotency_key TEXT NOT NULL,
                    started_at BIGINT NOT NULL DEFAULT 0,
                    ended_at BIGINT NOT NULL DEFAULT 0,
                    error_reason TEXT NOT NULL DEFAULT '',
                    error_message TEXT NOT NULL DEFAULT '',
                    cost_micros BIGINT NOT NULL DEFAULT 0,
                    call_id TEXT NOT NULL DEFAULT '',
                    worker TEXT NOT NULL DEFAULT '',
                    PRIMARY KEY (run_id, step_id, attempt)
                )
                """,
                """
                CREATE TABLE run_events (
                    project_id TEXT NOT NULL,
                    sequence BIGINT NOT NULL,
                    run_id TEXT NOT NULL,
                    workflow_name TEXT NOT NULL,
                    kind TEXT NOT NULL,
                    step_id TEXT NOT NULL DEFAULT '',
                    attempt INTEGER NOT NULL DEFAULT 0,
                    message TEXT NOT NULL DEFAULT '',
                    created_at BIGINT NOT NULL,
                    PRIMARY KEY (project_id, sequence)
                )
                """,
                "CREATE INDEX run_events_run ON run_events (run_id, sequence)",
                "CREATE TABLE run_sequences (project_id TEXT PRIMARY KEY, last BIGINT NOT NULL)",
                """
                CREATE TABLE run_approvals (
                    id TEXT PRIMARY KEY,
                    project_id TEXT NOT NULL,
                    run_id TEXT NOT NULL,
                    step_id TEXT NOT NULL DEFAULT '',
                    status TEXT NOT NULL,
                    message TEXT NOT NULL DEFAULT '',
                    approvers TEXT NOT NULL DEFAULT '[]',
                    workflow_name TEXT NOT NULL,
                    requested_by TEXT NOT NULL,
                    created_at BIGINT NOT NULL,
                    expires_at BIGINT,
                    decided_by TEXT NOT NULL DEFAULT '',
                    decided_at BIGINT NOT NULL DEFAULT 0,
                    comment TEXT NOT NULL DEFAULT ''
                )
                """,
                "CREATE INDEX run_approvals_project ON run_approvals (project_id, status, id)",
                "CREATE INDEX run_approvals_run ON run_approvals (run_id, step_id, status)",
                """
                CREATE TABLE run_idempotency (
                    project_id TEXT NOT NULL,
                    key TEXT NOT NULL,
                    request_hash TEXT NOT NULL,
                    run_id TEXT NOT NULL,
                    response TEXT NOT NULL,
                    created_at BIGINT NOT NULL,
                    PRIMARY KEY (project_id, key)
                )
                """,
                "CREATE INDEX run_idempotency_age ON run_idempotency (created_at)",
            ]
        },
        TaskQueue.migration,
        SparkMigration("run_0002_envelopes") { _ in
            [
                "ALTER TABLE runs ADD COLUMN envelope_id TEXT NOT NULL DEFAULT ''",
                "ALTER TABLE runs ADD COLUMN estimated_cost_micros BIGINT NOT NULL DEFAULT 0",
            ]
        },
        SparkMigration("run_0003_held_calls") { _ in
            ["ALTER TABLE run_approvals ADD COLUMN held_call TEXT NOT NULL DEFAULT ''"]
        },
    ]

    // MARK: Runs

    func insert(_ run: RunRow, on db: any SQLDatabase) async throws {
        try await db.raw("""
            INSERT INTO runs (id, project_id, workflow_id, workflow_name, workflow_version, content_hash, status, inputs, outputs,
                error_reason, error_message, state, principal, idempotency_key, cost_micros, rerun_of, rerun_from_step, seed, deadline,
                created_by, created_at, started_at, ended_at, updated_at, wake_at, envelope_id, estimated_cost_micros)
            VALUES (\(bind: run.id), \(bind: run.projectID), \(bind: run.workflowID), \(bind: run.workflowName), \(bind: run.workflowVersion),
                \(bind: run.contentHash), \(bind: run.status), \(bind: run.inputs), \(bind: run.outputs), \(bind: run.errorReason),
                \(bind: run.errorMessage), \(bind: run.state), \(bind: run.principal), \(bind: run.idempotencyKey), \(bind: run.costMicros),
                \(bind: run.rerunOf), \(bind: run.rerunFromStep), \(bind: run.seed), \(bind: run.deadline), \(bind: run.createdBy),
                \(bind: run.createdAt), \(bind: run.startedAt), \(bind: run.endedAt), \(bind: run.updatedAt), \(bind: run.wakeAt),
                \(bind: run.envelopeID), \(bind: run.estimatedCostMicros))
            """).run()
    }

    /// The run's changing columns, after a transition.
    func update(_ run: RunRow, on db: any SQLDatabase) async throws {
        try await db.raw(Self.updating(run)).run()
    }

    /// The statement of ``update(_:on:)``.
    static func updating(_ run: RunRow) -> SQLQueryString {
        """
        UPDATE runs SET status = \(bind: run.status), outputs = \(bind: run.outputs), error_reason = \(bind: run.errorReason),
            error_message = \(bind: run.errorMessage), state = \(bind: run.state), cost_micros = \(bind: run.costMicros),
            started_at = \(bind: run.startedAt), ended_at = \(bind: run.endedAt), updated_at = \(bind: run.updatedAt), wake_at = \(bind: run.wakeAt)
        WHERE id = \(bind: run.id)
        """
    }

    /// On PostgreSQL, what a transition writes after reading its run, as one statement: the
    /// run's new state, its attempts, its tasks (`tasks`, an INSERT from ``TaskQueue``), the
    /// project's sequence advance, the events and the notification. Data-modifying `WITH` parts
    /// all run to completion, so one round trip does what took one per row. The events, numbered.
    ///
    /// With `completing` (a task's fenced completion from ``TaskQueue``), the task is deleted in
    /// the same statement, and nil is returned when its lease was no longer the claim's: the
    /// caller must then roll back.
    func writeTransition(
        _ run: RunRow, attempts: [AttemptRow], tasks: SQLQueryString?, completing: SQLQueryString?, events: [EventRow], notify: String?,
        on db: any SQLDatabase
    ) async throws -> [EventRow]? {
        var parts: [SQLQueryString] = ["u AS (\(Self.updating(run)) RETURNING id)"]
        if let completing { parts.append("d AS (\(completing))") }
        // A row changes once per statement: the last record of an attempt is the one to keep.
        var latest: [String: AttemptRow] = [:]
        var order: [String] = []
        for attempt in attempts {
            let key = "\(attempt.stepID)/\(attempt.attempt)"
            if latest.updateValue(attempt, forKey: key) == nil { order.append(key) }
        }
        let attemptRows = order.compactMap { latest[$0] }
        if !attemptRows.isEmpty {
            parts.append("a AS (\(Self.upserting(attemptRows)) RETURNING run_id)")
        }
        if let tasks { parts.append("t AS (\(tasks) RETURNING id)") }
        let count = Int64(events.count)
        var lastColumn: SQLQueryString = "CAST(0 AS BIGINT)"
        var from: SQLQueryString = ""
        if !events.isEmpty {
            let rows: [SQLQueryString] = events.enumerated().map { index, event in
                """
                (CAST(\(bind: Int64(index + 1)) AS BIGINT), CAST(\(bind: event.runID) AS TEXT), CAST(\(bind: event.workflowName) AS TEXT),
                CAST(\(bind: event.kind) AS TEXT), CAST(\(bind: event.stepID) AS TEXT), CAST(\(bind: Int64(event.attempt)) AS BIGINT),
                CAST(\(bind: event.message) AS TEXT), CAST(\(bind: event.createdAt) AS BIGINT))
                """
            }
            parts.append("""
                s AS (
                    INSERT INTO run_sequences (project_id, last) VALUES (\(bind: run.projectID), \(bind: count))
                    ON CONFLICT (project_id) DO UPDATE SET last = run_sequences.last + \(bind: count)
                    RETURNING last
                )
                """)
            parts.append("""
                e AS (
                    INSERT INTO run_events (project_id, sequence, run_id, workflow_name, kind, step_id, attempt, message, created_at)
                    SELECT \(bind: run.projectID), s.last - \(bind: count) + v.k, v.run_id, v.workflow_name, v.kind, v.step_id, v.attempt, v.message, v.created_at
                    FROM s, (VALUES \(rows.joined(separator: ", "))) AS v(k, run_id, workflow_name, kind, step_id, attempt, message, created_at)
                )
                """)
            lastColumn = "s.last"
            from = " FROM s"
        }
        let notification: SQLQueryString = notify.map { ", pg_notify(\(bind: RunListener.channel), \(bind: $0))" } ?? ""
        let completed: SQLQueryString = completing == nil ? "" : ", (SELECT COUNT(*) FROM d) AS completed"
        guard let row = try await db.raw("WITH \(parts.joined(separator: ", ")) SELECT \(lastColumn) AS last\(completed)\(notification)\(from)").first() else {
            throw SparkStoreError("the project's event sequence did not advance")
        }
        if completing != nil, try row.decode(column: "completed", as: Int64.self) == 0 { return nil }
        let last = try row.decode(column: "last", as: Int64.self)
        var numbered = events
        for index in numbered.indices {
            numbered[index].sequence = last - count + Int64(index) + 1
        }
        return numbered
    }

    /// The run, locked until the transaction ends on PostgreSQL (SQLite's writer is alone).
    func lockedRun(_ id: String, on db: any SQLDatabase) async throws -> RunRow? {
        let lock: SQLQueryString = self.store.dialect == .postgres ? " FOR UPDATE" : ""
        return try await db.raw("SELECT * FROM runs WHERE id = \(bind: id)\(lock)").first().map(Self.runRow)
    }

    /// The run as it stands, for reading only.
    func run(_ id: String, on db: any SQLDatabase) async throws -> RunRow? {
        try await db.raw("SELECT * FROM runs WHERE id = \(bind: id)").first().map(Self.runRow)
    }

    func run(_ id: String, projectID: String, on db: any SQLDatabase) async throws -> RunRow? {
        try await db.raw("SELECT * FROM runs WHERE id = \(bind: id) AND project_id = \(bind: projectID)").first().map(Self.runRow)
    }

    struct RunFilter: Sendable {
        var status = ""
        var workflowID = ""
        var createdAfter: Int64?
        var createdBefore: Int64?
    }

    /// Newest first, after the page token's id.
    func runs(projectID: String, filter: RunFilter, before: String, limit: Int, on db: any SQLDatabase) async throws -> [RunRow] {
        var query = SQLQueryString("SELECT * FROM runs WHERE project_id = \(bind: projectID)")
        if !before.isEmpty { query = query + " AND id < \(bind: before)" }
        if !filter.status.isEmpty { query = query + " AND status = \(bind: filter.status)" }
        if !filter.workflowID.isEmpty { query = query + " AND workflow_id = \(bind: filter.workflowID)" }
        if let after = filter.createdAfter { query = query + " AND created_at >= \(bind: after)" }
        if let before = filter.createdBefore { query = query + " AND created_at < \(bind: before)" }
        query = query + " ORDER BY id DESC LIMIT \(bind: limit)"
        return try await db.raw(query).all().map(Self.runRow)
    }

    /// Runs whose timer is due, for the ticker.
    func dueRuns(now: Int64, limit: Int, on db: any SQLDatabase) async throws -> [String] {
        try await db.raw("SELECT id FROM runs WHERE wake_at IS NOT NULL AND wake_at <= \(bind: now) ORDER BY wake_at LIMIT \(bind: limit)")
            .all().map { try $0.decode(column: "id", as: String.self) }
    }

    static func runRow(_ row: any SQLRow) throws -> RunRow {
        RunRow(
            id: try row.decode(column: "id", as: String.self),
            projectID: try row.decode(column: "project_id", as: String.self),
            workflowID: try row.decode(column: "workflow_id", as: String.self),
            workflowName: try row.decode(column: "workflow_name", as: String.self),
            workflowVersion: try row.decode(column: "workflow_version", as: Int.self),
            contentHash: try row.decode(column: "content_hash", as: String.self),
            status: try row.decode(column: "status", as: String.self),
            inputs: try row.decode(column: "inputs", as: String.self),
            outputs: try row.decode(column: "outputs", as: String.self),
            errorReason: try row.decode(column: "error_reason", as: String.self),
            errorMessage: try row.decode(column: "error_message", as: String.self),
            state: try row.decode(column: "state", as: String.self),
            principal: try row.decode(column: "principal", as: String.self),
            idempotencyKey: try row.decode(column: "idempotency_key", as: String.self),
            costMicros: try row.decode(column: "cost_micros", as: Int64.self),
            rerunOf: try row.decode(column: "rerun_of", as: String.self),
            rerunFromStep: try row.decode(column: "rerun_from_step", as: String.self),
            seed: try row.decode(column: "seed", as: Int64.self),
            deadline: try row.decode(column: "deadline", as: Int64?.self),
            createdBy: try row.decode(column: "created_by", as: String.self),
            createdAt: try row.decode(column: "created_at", as: Int64.self),
            startedAt: try row.decode(column: "started_at", as: Int64.self),
            endedAt: try row.decode(column: "ended_at", as: Int64.self),
            updatedAt: try row.decode(column: "updated_at", as: Int64.self),
            wakeAt: try row.decode(column: "wake_at", as: Int64?.self),
            envelopeID: try row.decode(column: "envelope_id", as: String.self),
            estimatedCostMicros: try row.decode(column: "estimated_cost_micros", as: Int64.self)
        )
    }

    // MARK: Definitions

    /// Stores a pinned version's canonical definition once per content hash.
    func putDefinition(_ hash: String, json: String, on db: any SQLDatabase) async throws {
        try await db.raw("""
            INSERT INTO run_definitions (content_hash, definition) VALUES (\(bind: hash), \(bind: json)) ON CONFLICT (content_hash) DO NOTHING
            """).run()
    }

    func definition(_ hash: String, on db: any SQLDatabase) async throws -> String? {
        try await db.raw("SELECT definition FROM run_definitions WHERE content_hash = \(bind: hash)").first()?.decode(column: "definition", as: String.self)
    }

    // MARK: Attempts

    func upsert(_ attempt: AttemptRow, on db: any SQLDatabase) async throws {
        try await db.raw(Self.upserting([attempt])).run()
    }

    /// One statement that stores `attempts` (each of another step or attempt), new or changed.
    static func upserting(_ attempts: [AttemptRow]) -> SQLQueryString {
        let rows: [SQLQueryString] = attempts.map { attempt in
            """
            (\(bind: attempt.runID), \(bind: attempt.stepID), \(bind: Int64(attempt.attempt)), \(bind: attempt.status), \(bind: attempt.idempotencyKey),
            \(bind: attempt.startedAt), \(bind: attempt.endedAt), \(bind: attempt.errorReason), \(bind: attempt.errorMessage),
            \(bind: attempt.costMicros), \(bind: attempt.callID), \(bind: attempt.worker))
            """
        }
        return """
            INSERT INTO step_attempts (run_id, step_id, attempt, status, idempotency_key, started_at, ended_at, error_reason, error_message,
                cost_micros, call_id, worker)
            VALUES \(rows.joined(separator: ", "))
            ON CONFLICT (run_id, step_id, attempt) DO UPDATE SET status = excluded.status, started_at = excluded.started_at,
                ended_at = excluded.ended_at, error_reason = excluded.error_reason, error_message = excluded.error_message,
                cost_micros = excluded.cost_micros, call_id = excluded.call_id, worker = excluded.worker
            """
    }

    func attempt(runID: String, stepID: String, attempt: Int, on db: any SQLDatabase) async throws -> AttemptRow? {
        try await db.raw("""
            SELECT * FROM step_attempts WHERE run_id = \(bind: runID) AND step_id = \(bind: stepID) AND attempt = \(bind: attempt)
            """).first().map(Self.attemptRow)
    }

    func attempts(runID: String, on db: any SQLDatabase) async throws -> [AttemptRow] {
        try await db.raw("SELECT * FROM step_attempts WHERE run_id = \(bind: runID) ORDER BY step_id, attempt").all().map(Self.attemptRow)
    }

    static func attemptRow(_ row: any SQLRow) throws -> AttemptRow {
        AttemptRow(
            runID: try row.decode(column: "run_id", as: String.self),
            stepID: try row.decode(column: "step_id", as: String.self),
            attempt: try row.decode(column: "attempt", as: Int.self),
            status: try row.decode(column: "status", as: String.self),
            idempotencyKey: try row.decode(column: "idempotency_key", as: String.self),
            startedAt: try row.decode(column: "started_at", as: Int64.self),
            endedAt: try row.decode(column: "ended_at", as: Int64.self),
            errorReason: try row.decode(column: "error_reason", as: String.self),
            errorMessage: try row.decode(column: "error_message", as: String.self),
            costMicros: try row.decode(column: "cost_micros", as: Int64.self),
            callID: try row.decode(column: "call_id", as: String.self),
            worker: try row.decode(column: "worker", as: String.self)
        )
    }

    // MARK: Events

    /// Appends `events` with the project's next sequence numbers, in the caller's transaction:
    /// the sequence row is held until it commits, so numbers follow commit order without gaps.
    /// (On PostgreSQL a transition writes its events in ``writeTransition``, in the statement
    /// that advances the sequence, so that the row stays locked one round trip less.)
    func append(_ events: [EventRow], projectID: String, on db: any SQLDatabase) async throws -> [EventRow] {
        guard !events.isEmpty else { return [] }
        let count = Int64(events.count)
        guard let last = try await db.raw("""
            INSERT INTO run_sequences (project_id, last) VALUES (\(bind: projectID), \(bind: count))
            ON CONFLICT (project_id) DO UPDATE SET last = run_sequences.last + \(bind: count)
            RETURNING last
            """).first()?.decode(column: "last", as: Int64.self) else {
            throw SparkStoreError("the project's event sequence did not advance")
        }
        var numbered = events
        for index in numbered.indices {
            numbered[index].sequence = last - count + Int64(index) + 1
        }
        // The transition's events in one statement.
        let rows: [SQLQueryString] = numbered.map { event in
            """
            (\(bind: projectID), \(bind: event.sequence), \(bind: event.runID), \(bind: event.workflowName), \(bind: event.kind),
            \(bind: event.stepID), \(bind: event.attempt), \(bind: event.message), \(bind: event.createdAt))
            """
        }
        try await db.raw("""
            INSERT INTO run_events (project_id, sequence, run_id, workflow_name, kind, step_id, attempt, message, created_at)
            VALUES \(rows.joined(separator: ", "))
            """).run()
        return numbered
    }

    /// The project's events (of `runID`, unless empty) after `after` and up to `through`.
    func events(projectID: String, runID: String, after: Int64, through: Int64 = .max, limit: Int, on db: any SQLDatabase) async throws -> [EventRow] {
        var query = SQLQueryString("SELECT * FROM run_events WHERE project_id = \(bind: projectID) AND sequence > \(bind: after)")
        if through < .max { query = query + " AND sequence <= \(bind: through)" }
        if !runID.isEmpty { query = query + " AND run_id = \(bind: runID)" }
        query = query + " ORDER BY sequence LIMIT \(bind: limit)"
        return try await db.raw(query).all().map(Self.eventRow)
    }

    func lastSequence(projectID: String, on db: any SQLDatabase) async throws -> Int64 {
        try await db.raw("SELECT last FROM run_sequences WHERE project_id = \(bind: projectID)").first()?.decode(column: "last", as: Int64.self) ?? 0
    }

    static func eventRow(_ row: any SQLRow) throws -> EventRow {
        EventRow(
            projectID: try row.decode(column: "project_id", as: String.self),
            sequence: try row.decode(column: "sequence", as: Int64.self),
            runID: try row.decode(column: "run_id", as: String.self),
            workflowName: try row.decode(column: "workflow_name", as: String.self),
            kind: try row.decode(column: "kind", as: String.self),
            stepID: try row.decode(column: "step_id", as: String.self),
            attempt: try row.decode(column: "attempt", as: Int.self),
            message: try row.decode(column: "message", as: String.self),
            createdAt: try row.decode(column: "created_at", as: Int64.self)
        )
    }

    // MARK: Approvals

    func insert(_ approval: ApprovalRow, on db: any SQLDatabase) async throws {
        let approvers = String(decoding: try JSONSerialization.data(withJSONObject: approval.approvers), as: UTF8.self)
        try await db.raw("""
            INSERT INTO run_approvals (id, project_id, run_id, step_id, status, message, approvers, workflow_name, requested_by, created_at, expires_at, held_call)
            VALUES (\(bind: approval.id), \(bind: approval.projectID), \(bind: approval.runID), \(bind: approval.stepID), \(bind: approval.status),
                \(bind: approval.message), \(bind: approvers), \(bind: approval.workflowName), \(bind: approval.requestedBy),
                \(bind: approval.createdAt), \(bind: approval.expiresAt), \(bind: approval.heldCall))
            """).run()
    }

    /// Closes the pending approvals of a run's step (`stepID` "" for the run itself): decided by
    /// a person, expired, or made moot by a cancel.
    func closeApprovals(runID: String, stepID: String?, status: String, by: String, comment: String, now: Int64, on db: any SQLDatabase) async throws {
        var query = SQLQueryString("""
            UPDATE run_approvals SET status = \(bind: status), decided_by = \(bind: by), decided_at = \(bind: now), comment = \(bind: comment)
            WHERE run_id = \(bind: runID) AND status = 'pending'
            """)
        if let stepID { query = query + " AND step_id = \(bind: stepID)" }
        try await db.raw(query).run()
    }

    func approval(_ id: String, projectID: String, on db: any SQLDatabase) async throws -> ApprovalRow? {
        try await db.raw("SELECT * FROM run_approvals WHERE id = \(bind: id) AND project_id = \(bind: projectID)").first().map(Self.approvalRow)
    }

    func approvals(projectID: String, status: String, runID: String, after: String, limit: Int, on db: any SQLDatabase) async throws -> [ApprovalRow] {
        var query = SQLQueryString("SELECT * FROM run_approvals WHERE project_id = \(bind: projectID) AND id > \(bind: after)")
        if !status.isEmpty { query = query + " AND status = \(bind: status)" }
        if !runID.isEmpty { query = query + " AND run_id = \(bind: runID)" }
        query = query + " ORDER BY id LIMIT \(bind: limit)"
        return try await db.raw(query).all().map(Self.approvalRow)
    }

    static func approvalRow(_ row: any SQLRow) throws -> ApprovalRow {
        let approvers = try row.decode(column: "approvers", as: String.self)
        return ApprovalRow(
            id: try row.decode(column: "id", as: String.self),
            projectID: try row.decode(column: "project_id", as: String.self),
            runID: try row.decode(column: "run_id", as: String.self),
            stepID: try row.decode(column: "step_id", as: String.self),
            status: try row.decode(column: "status", as: String.self),
            message: try row.decode(column: "message", as: String.self),
            approvers: (try? JSONSerialization.jsonObject(with: Data(approvers.utf8)) as? [String]) ?? [],
            workflowName: try row.decode(column: "workflow_name", as: String.self),
            requestedBy: try row.decode(column: "requested_by", as: String.self),
            createdAt: try row.decode(column: "created_at", as: Int64.self),
            expiresAt: try row.decode(column: "expires_at", as: Int64?.self),
            decidedBy: try row.decode(column: "decided_by", as: String.self),
            decidedAt: try row.decode(column: "decided_at", as: Int64.self),
            comment: try row.decode(column: "comment", as: String.self),
            heldCall: try row.decode(column: "held_call", as: String.self)
        )
    }

    // MARK: Idempotency

    struct KeyRow: Sendable {
        var requestHash: String
        var runID: String
        var response: String
    }

    func key(_ key: String, projectID: String, on db: any SQLDatabase) async throws -> KeyRow? {
        try await db.raw("SELECT * FROM run_idempotency WHERE project_id = \(bind: projectID) AND key = \(bind: key)").first().map {
            KeyRow(
                requestHash: try $0.decode(column: "request_hash", as: String.self), runID: try $0.decode(column: "run_id", as: String.self),
                response: try $0.decode(column: "response", as: String.self)
            )
        }
    }

    /// Records a key; false when another request took it first (then the caller rolls back and reads it).
    func insertKey(_ key: String, projectID: String, requestHash: String, runID: String, response: String, now: Int64, on db: any SQLDatabase) async throws -> Bool {
        try await db.raw("""
            INSERT INTO run_idempotency (project_id, key, request_hash, run_id, response, created_at)
            VALUES (\(bind: projectID), \(bind: key), \(bind: requestHash), \(bind: runID), \(bind: response), \(bind: now))
            ON CONFLICT (project_id, key) DO NOTHING
            RETURNING key
            """).first() != nil
    }

    /// Forgets keys older than `before`.
    func pruneKeys(before: Int64, on db: any SQLDatabase) async throws {
        try await db.raw("DELETE FROM run_idempotency WHERE created_at < \(bind: before)").run()
    }
}
