import Foundation
import SQLKit
import SparkKit

/// A budget as stored.
struct BudgetRow: Sendable {
    var id: String
    var projectID: String
    var name: String
    var workflow: String
    var agent: String
    var apiKeyID: String
    var period: BudgetPeriod
    var limitMicros: Int64
    var hard: Bool
    var description: String
    var createdAt: Int64
    var updatedAt: Int64
    var createdBy: String
}

/// One budget's figures in one period, as stored.
struct UsageRow: Sendable {
    var budgetID: String
    var period: String
    var limitMicros: Int64
    var spentMicros: Int64
    var reservedMicros: Int64
}

/// What spend is for, as stored with reservations and ledger entries.
struct AttributionRow: Sendable, Equatable {
    var workflow = ""
    var agent = ""
    var apiKeyID = ""
    var model = ""
    var tool = ""
    var runID = ""
    var stepID = ""
}

struct ReservationRow: Sendable {
    enum Status: String, Sendable {
        case held, settled, released, expired
    }

    var id: String
    var projectID: String
    var amountMicros: Int64
    var status: Status
    var actualMicros: Int64
    var late: Bool
    var attribution: AttributionRow
    var createdAt: Int64
    var expiresAt: Int64
    var finishedAt: Int64
    /// A run's envelope (its estimate, drawn on by the run's calls) rather than one call's.
    var envelope = false
    /// A call's: how much of its amount came from its run's envelope `envelopeID`.
    var drawnMicros: Int64 = 0
    var envelopeID = ""
}

/// A hold of a reservation on one budget's period.
struct HoldRow: Sendable {
    var budgetID: String
    var period: String
}

struct LedgerRow: Sendable {
    var seq: Int64
    var budgetID: String
    var period: String
    var kind: String
    var reservationID: String
    var amountMicros: Int64
    var spentAfter: Int64
    var reservedAfter: Int64
    var attribution: AttributionRow
    var createdAt: Int64
}

struct AlertRow: Sendable {
    var budgetID: String
    var budgetName: String
    var period: String
    var threshold: Int
    var spentMicros: Int64
    var reservedMicros: Int64
    var limitMicros: Int64
    var createdAt: Int64
}

/// The budget service's schema and queries. Every change of a period's figures is one
/// conditional `UPDATE … RETURNING`: the database, not this process, decides whether an amount
/// fits, so that any number of callers and replicas cannot overspend.
struct BudgetStore: Sendable {
    let store: SparkStore

    /// Budgets in one project, at most.
    static let maxBudgets = 100
    /// The largest limit (1 billion USD) and the largest amount of one reservation or settle
    /// (1 million USD), in micro-dollars: sums of them stay far inside 64 bits.
    static let maxLimit: Int64 = 1_000_000_000_000_000
    static let maxAmount: Int64 = 1_000_000_000_000
    static let thresholds = [50, 80, 100]

    static var migrations: [SparkMigration] {
        [
            SparkMigration("0001_budgets") { dialect in
                let sequence = dialect == .postgres ? "seq BIGSERIAL PRIMARY KEY" : "seq INTEGER PRIMARY KEY AUTOINCREMENT"
                return [
                    """
                    CREATE TABLE budgets (
                        id TEXT PRIMARY KEY,
                        project_id TEXT NOT NULL,
                        name TEXT NOT NULL,
                        workflow TEXT NOT NULL,
                        agent TEXT NOT NULL,
                        api_key_id TEXT NOT NULL,
                        period TEXT NOT NULL,
                        limit_micros BIGINT NOT NULL,
                        kind TEXT NOT NULL,
                        description TEXT NOT NULL,
                        created_at BIGINT NOT NULL,
                        updated_at BIGINT NOT NULL,
                        created_by TEXT NOT NULL,
                        UNIQUE (project_id, name)
                    )
                    """,
                    """
                    CREATE TABLE budget_usage (
                        budget_id TEXT NOT NULL,
                        period TEXT NOT NULL,
                        limit_micros BIGINT NOT NULL,
                        spent_micros BIGINT NOT NULL,
                        reserved_micros BIGINT NOT NULL,
                        PRIMARY KEY (budget_id, period)
                    )
                    """,
                    """
                    CREATE TABLE budget_reservations (
                        id TEXT PRIMARY KEY,
                        project_id TEXT NOT NULL,
                        amount_micros BIGINT NOT NULL,
                        status TEXT NOT NULL,
                        actual_micros BIGINT NOT NULL,
                        late BIGINT NOT NULL,
                        workflow TEXT NOT NULL,
                        agent TEXT NOT NULL,
                        api_key_id TEXT NOT NULL,
                        model TEXT NOT NULL,
                        tool TEXT NOT NULL,
                        run_id TEXT NOT NULL,
                        step_id TEXT NOT NULL,
                        created_at BIGINT NOT NULL,
                        expires_at BIGINT NOT NULL,
                        finished_at BIGINT NOT NULL
                    )
                    """,
                    "CREATE INDEX budget_reservations_held ON budget_reservations (status, expires_at)",
                    """
                    CREATE TABLE budget_holds (
                        reservation_id TEXT NOT NULL,
                        budget_id TEXT NOT NULL,
                        period TEXT NOT NULL,
                        PRIMARY KEY (reservation_id, budget_id)
                    )
                    """,
                    "CREATE INDEX budget_holds_budget ON budget_holds (budget_id)",
                    """
                    CREATE TABLE budget_ledger (
                        \(sequence),
                        budget_id TEXT NOT NULL,
                        period TEXT NOT NULL,
                        kind TEXT NOT NULL,
                        reservation_id TEXT NOT NULL,
                        amount_micros BIGINT NOT NULL,
                        spent_after BIGINT NOT NULL,
                        reserved_after BIGINT NOT NULL,
                        workflow TEXT NOT NULL,
                        agent TEXT NOT NULL,
                        api_key_id TEXT NOT NULL,
                        model TEXT NOT NULL,
                        tool TEXT NOT NULL,
                        run_id TEXT NOT NULL,
                        step_id TEXT NOT NULL,
                        created_at BIGINT NOT NULL
                    )
                    """,
                    "CREATE INDEX budget_ledger_budget ON budget_ledger (budget_id, period, seq)",
                    """
                    CREATE TABLE budget_alerts (
                        budget_id TEXT NOT NULL,
                        period TEXT NOT NULL,
                        threshold BIGINT NOT NULL,
                        project_id TEXT NOT NULL,
                        budget_name TEXT NOT NULL,
                        spent_micros BIGINT NOT NULL,
                        reserved_micros BIGINT NOT NULL,
                        limit_micros BIGINT NOT NULL,
                        created_at BIGINT NOT NULL,
                        PRIMARY KEY (budget_id, period, threshold)
                    )
                    """,
                    "CREATE INDEX budget_alerts_project ON budget_alerts (project_id, created_at)",
                ]
            },
            SparkMigration("0002_run_envelopes") { _ in
                [
                    "ALTER TABLE budget_reservations ADD COLUMN envelope BIGINT NOT NULL DEFAULT 0",
                    "ALTER TABLE budget_reservations ADD COLUMN drawn_micros BIGINT NOT NULL DEFAULT 0",
                    "ALTER TABLE budget_reservations ADD COLUMN envelope_id TEXT NOT NULL DEFAULT ''",
                    "CREATE INDEX budget_reservations_run ON budget_reservations (project_id, run_id, envelope, status)",
                ]
            },
        ]
    }

    static func now() -> Int64 { Int64(Date().timeIntervalSince1970 * 1_000_000) }

    // MARK: Budgets

    func budget(_ reference: String, projectID: String, on db: any SQLDatabase) async throws -> BudgetRow? {
        try await db.raw("""
            SELECT * FROM budgets WHERE project_id = \(bind: projectID) AND (id = \(bind: reference) OR name = \(bind: reference))
            """).first().map(Self.budgetRow)
    }

    func budgets(projectID: String, after: String, limit: Int, on db: any SQLDatabase) async throws -> [BudgetRow] {
        try await db.raw("""
            SELECT * FROM budgets WHERE project_id = \(bind: projectID) AND id > \(bind: after) ORDER BY id LIMIT \(bind: limit)
            """).all().map(Self.budgetRow)
    }

    func count(projectID: String, on db: any SQLDatabase) async throws -> Int {
        try await db.raw("SELECT COUNT(*) AS n FROM budgets WHERE project_id = \(bind: projectID)").first()?.decode(column: "n", as: Int.self) ?? 0
    }

    /// The budgets that count spend of this attribution, by id (the order their periods are
    /// locked in, so that two transactions never wait on each other in a circle).
    func covering(projectID: String, _ attribution: AttributionRow, on db: any SQLDatabase) async throws -> [BudgetRow] {
        try await db.raw("""
            SELECT * FROM budgets WHERE project_id = \(bind: projectID)
                AND (workflow = '' OR workflow = \(bind: attribution.workflow))
                AND (agent = '' OR agent = \(bind: attribution.agent))
                AND (api_key_id = '' OR api_key_id = \(bind: attribution.apiKeyID))
            ORDER BY id LIMIT \(bind: Self.maxBudgets)
            """).all().map(Self.budgetRow)
    }

    func insert(_ budget: BudgetRow, on db: any SQLDatabase) async throws {
        try await db.raw("""
            INSERT INTO budgets (id, project_id, name, workflow, agent, api_key_id, period, limit_micros, kind, description, created_at, updated_at, created_by)
            VALUES (\(bind: budget.id), \(bind: budget.projectID), \(bind: budget.name), \(bind: budget.workflow), \(bind: budget.agent),
                    \(bind: budget.apiKeyID), \(bind: budget.period.rawValue), \(bind: budget.limitMicros), \(bind: budget.hard ? "hard" : "soft"),
                    \(bind: budget.description), \(bind: budget.createdAt), \(bind: budget.updatedAt), \(bind: budget.createdBy))
            """).run()
    }

    /// Changes a budget; the limit applies to its current period at once.
    func update(_ budget: BudgetRow, currentPeriod: String, on db: any SQLDatabase) async throws {
        try await db.raw("""
            UPDATE budgets SET workflow = \(bind: budget.workflow), agent = \(bind: budget.agent), api_key_id = \(bind: budget.apiKeyID),
                limit_micros = \(bind: budget.limitMicros), kind = \(bind: budget.hard ? "hard" : "soft"),
                description = \(bind: budget.description), updated_at = \(bind: budget.updatedAt)
            WHERE id = \(bind: budget.id)
            """).run()
        try await db.raw("""
            UPDATE budget_usage SET limit_micros = \(bind: budget.limitMicros) WHERE budget_id = \(bind: budget.id) AND period = \(bind: currentPeriod)
            """).run()
    }

    func delete(_ budgetID: String, on db: any SQLDatabase) async throws {
        for table in ["budget_usage", "budget_holds", "budget_ledger", "budget_alerts"] {
            try await db.raw("DELETE FROM \(ident: table) WHERE budget_id = \(bind: budgetID)").run()
        }
        try await db.raw("DELETE FROM budgets WHERE id = \(bind: budgetID)").run()
    }

    // MARK: Periods

    func usage(budgetID: String, period: String, on db: any SQLDatabase) async throws -> UsageRow? {
        try await db.raw("SELECT * FROM budget_usage WHERE budget_id = \(bind: budgetID) AND period = \(bind: period)").first().map(Self.usageRow)
    }

    /// The period's row, created at the budget's limit if this is its first spend.
    func ensureUsage(_ budget: BudgetRow, period: String, on db: any SQLDatabase) async throws {
        try await db.raw("""
            INSERT INTO budget_usage (budget_id, period, limit_micros, spent_micros, reserved_micros)
            VALUES (\(bind: budget.id), \(bind: period), \(bind: budget.limitMicros), 0, 0)
            ON CONFLICT (budget_id, period) DO NOTHING
            """).run()
    }

    /// Adds `amount` to the period's reservations if spent + reserved + amount stays within the
    /// limit (or whatever it comes to, when `bounded` is false): the one statement that admits
    /// spend, with its ledger entry. nil when it does not fit (and nothing is written).
    func reserve(
        budgetID: String, period: String, amount: Int64, bounded: Bool, recording reservation: ReservationRow, now: Int64, on db: any SQLDatabase
    ) async throws -> UsageRow? {
        let bound: SQLQueryString = bounded ? "AND spent_micros + reserved_micros + \(bind: amount) <= limit_micros" : ""
        return try await self.updateRecording("""
            UPDATE budget_usage SET reserved_micros = reserved_micros + \(bind: amount)
            WHERE budget_id = \(bind: budgetID) AND period = \(bind: period) \(bound)
            RETURNING *
            """, kind: "reserve", reservation: reservation, amount: amount, now: now, on: db)
    }

    /// Moves a reservation's amount out of the period's reservations, and `spent` into its spend,
    /// with the ledger entry `kind` of `amount`.
    func move(
        budgetID: String, period: String, unreserve: Int64, spend: Int64, kind: String, amount: Int64, reservation: ReservationRow, now: Int64,
        on db: any SQLDatabase
    ) async throws -> UsageRow? {
        try await self.updateRecording("""
            UPDATE budget_usage SET reserved_micros = reserved_micros - \(bind: unreserve), spent_micros = spent_micros + \(bind: spend)
            WHERE budget_id = \(bind: budgetID) AND period = \(bind: period)
            RETURNING *
            """, kind: kind, reservation: reservation, amount: amount, now: now, on: db)
    }

    /// `update` (of one `budget_usage` row, `RETURNING *`) and the ledger entry with the figures
    /// it leaves. On PostgreSQL they are one statement, so that the row's lock, held to the
    /// commit, waits one round trip less; SQLite's single writer holds the whole database anyway.
    func updateRecording(
        _ update: SQLQueryString, kind: String, reservation: ReservationRow, amount: Int64, now: Int64, on db: any SQLDatabase
    ) async throws -> UsageRow? {
        let a = reservation.attribution
        guard self.store.dialect == .postgres else {
            guard let usage = try await db.raw(update).first().map(Self.usageRow) else { return nil }
            try await self.append(budgetID: usage.budgetID, period: usage.period, kind: kind, reservation: reservation, amount: amount, after: usage, now: now, on: db)
            return usage
        }
        return try await db.raw("""
            WITH u AS (\(update)), l AS (
                INSERT INTO budget_ledger (budget_id, period, kind, reservation_id, amount_micros, spent_after, reserved_after,
                    workflow, agent, api_key_id, model, tool, run_id, step_id, created_at)
                SELECT budget_id, period, \(bind: kind), \(bind: reservation.id), \(bind: amount), spent_micros, reserved_micros,
                    \(bind: a.workflow), \(bind: a.agent), \(bind: a.apiKeyID), \(bind: a.model), \(bind: a.tool), \(bind: a.runID),
                    \(bind: a.stepID), \(bind: now)
                FROM u
            )
            SELECT * FROM u
            """).first().map(Self.usageRow)
    }

    // MARK: Reservations

    func insert(_ reservation: ReservationRow, holds: [HoldRow], on db: any SQLDatabase) async throws {
        let a = reservation.attribution
        try await db.raw("""
            INSERT INTO budget_reservations (id, project_id, amount_micros, status, actual_micros, late, workflow, agent, api_key_id,
                model, tool, run_id, step_id, created_at, expires_at, finished_at, envelope, drawn_micros, envelope_id)
            VALUES (\(bind: reservation.id), \(bind: reservation.projectID), \(bind: reservation.amountMicros), \(bind: reservation.status.rawValue),
                    0, 0, \(bind: a.workflow), \(bind: a.agent), \(bind: a.apiKeyID), \(bind: a.model), \(bind: a.tool), \(bind: a.runID),
                    \(bind: a.stepID), \(bind: reservation.createdAt), \(bind: reservation.expiresAt), 0, \(bind: reservation.envelope ? 1 : 0),
                    \(bind: reservation.drawnMicros), \(bind: reservation.envelopeID))
            """).run()
        for hold in holds {
            try await db.raw("""
                INSERT INTO budget_holds (reservation_id, budget_id, period) VALUES (\(bind: reservation.id), \(bind: hold.budgetID), \(bind: hold.period))
                """).run()
        }
    }

    func reservation(_ id: String, projectID: String, on db: any SQLDatabase) async throws -> ReservationRow? {
        try await db.raw("SELECT * FROM budget_reservations WHERE id = \(bind: id) AND project_id = \(bind: projectID)").first().map(Self.reservationRow)
    }

    /// The run's envelope, if one is held; on PostgreSQL locked to the commit, so that the run's
    /// calls draw on it one at a time.
    func heldEnvelope(projectID: String, runID: String, on db: any SQLDatabase) async throws -> ReservationRow? {
        let lock: SQLQueryString = self.store.dialect == .postgres ? "FOR UPDATE" : ""
        return try await db.raw("""
            SELECT * FROM budget_reservations
            WHERE project_id = \(bind: projectID) AND run_id = \(bind: runID) AND envelope = 1 AND status = 'held'
            ORDER BY created_at LIMIT 1 \(lock)
            """).first().map(Self.reservationRow)
    }

    /// Adds `delta` (negative: takes) to a held envelope's amount, never below 0; nil when it is
    /// no longer held.
    func adjustEnvelope(_ id: String, by delta: Int64, on db: any SQLDatabase) async throws -> ReservationRow? {
        try await db.raw("""
            UPDATE budget_reservations SET amount_micros = amount_micros + \(bind: delta)
            WHERE id = \(bind: id) AND envelope = 1 AND status = 'held' AND amount_micros + \(bind: delta) >= 0
            RETURNING *
            """).first().map(Self.reservationRow)
    }

    /// Moves a reservation from `from` to `to`, if it is still in `from`: the guard that makes a
    /// settle, release or expiry happen once however many callers or replicas try.
    func transition(
        _ id: String, projectID: String, from: ReservationRow.Status, to: ReservationRow.Status,
        actual: Int64 = 0, late: Bool = false, now: Int64, expiredBy: Int64? = nil, on db: any SQLDatabase
    ) async throws -> ReservationRow? {
        let expiry: SQLQueryString = expiredBy.map { "AND expires_at <= \(bind: $0)" } ?? ""
        return try await db.raw("""
            UPDATE budget_reservations SET status = \(bind: to.rawValue), actual_micros = \(bind: actual), late = \(bind: late ? 1 : 0), finished_at = \(bind: now)
            WHERE id = \(bind: id) AND project_id = \(bind: projectID) AND status = \(bind: from.rawValue) \(expiry)
            RETURNING *
            """).first().map(Self.reservationRow)
    }

    func holds(of reservationID: String, on db: any SQLDatabase) async throws -> [HoldRow] {
        try await db.raw("SELECT budget_id, period FROM budget_holds WHERE reservation_id = \(bind: reservationID) ORDER BY budget_id").all().map {
            HoldRow(budgetID: try $0.decode(column: "budget_id", as: String.self), period: try $0.decode(column: "period", as: String.self))
        }
    }

    /// Held reservations past their expiry, oldest first.
    func expired(now: Int64, limit: Int, on db: any SQLDatabase) async throws -> [(id: String, projectID: String)] {
        try await db.raw("""
            SELECT id, project_id FROM budget_reservations WHERE status = 'held' AND expires_at <= \(bind: now) ORDER BY expires_at LIMIT \(bind: limit)
            """).all().map { (try $0.decode(column: "id", as: String.self), try $0.decode(column: "project_id", as: String.self)) }
    }

    // MARK: Ledger

    func append(
        budgetID: String, period: String, kind: String, reservation: ReservationRow, amount: Int64, after: UsageRow, now: Int64, on db: any SQLDatabase
    ) async throws {
        let a = reservation.attribution
        try await db.raw("""
            INSERT INTO budget_ledger (budget_id, period, kind, reservation_id, amount_micros, spent_after, reserved_after,
                workflow, agent, api_key_id, model, tool, run_id, step_id, created_at)
            VALUES (\(bind: budgetID), \(bind: period), \(bind: kind), \(bind: reservation.id), \(bind: amount), \(bind: after.spentMicros),
                    \(bind: after.reservedMicros), \(bind: a.workflow), \(bind: a.agent), \(bind: a.apiKeyID), \(bind: a.model), \(bind: a.tool),
                    \(bind: a.runID), \(bind: a.stepID), \(bind: now))
            """).run()
    }

    /// Newest first: sequence numbers below `before` (0: from the newest).
    func ledger(budgetID: String, period: String, before: Int64, limit: Int, on db: any SQLDatabase) async throws -> [LedgerRow] {
        let upper = before > 0 ? before : Int64.max
        return try await db.raw("""
            SELECT * FROM budget_ledger WHERE budget_id = \(bind: budgetID) AND seq < \(bind: upper)
                AND (\(bind: period) = '' OR period = \(bind: period))
            ORDER BY seq DESC LIMIT \(bind: limit)
            """).all().map(Self.ledgerRow)
    }

    /// Spend of the period (settles and charges), summed by one attribution column.
    func spend(budgetID: String, period: String, by column: String, on db: any SQLDatabase) async throws -> [(key: String, spent: Int64, calls: Int64)] {
        try await db.raw("""
            SELECT \(ident: column) AS k, CAST(SUM(amount_micros) AS BIGINT) AS spent, COUNT(*) AS calls FROM budget_ledger
            WHERE budget_id = \(bind: budgetID) AND period = \(bind: period) AND kind IN ('settle', 'charge')
            GROUP BY \(ident: column) ORDER BY spent DESC, k LIMIT 100
            """).all().map {
            (try $0.decode(column: "k", as: String.self), try $0.decode(column: "spent", as: Int64.self), try $0.decode(column: "calls", as: Int64.self))
        }
    }

    // MARK: Alerts

    /// Stores the thresholds the period's spend has reached and had not before; returns the new ones.
    func alerts(for budget: BudgetRow, usage: UsageRow, now: Int64, on db: any SQLDatabase) async throws -> [AlertRow] {
        guard usage.limitMicros > 0 else { return [] }
        var fresh: [AlertRow] = []
        for threshold in Self.thresholds where Double(usage.spentMicros) * 100 >= Double(usage.limitMicros) * Double(threshold) {
            let alert = AlertRow(
                budgetID: budget.id, budgetName: budget.name, period: usage.period, threshold: threshold,
                spentMicros: usage.spentMicros, reservedMicros: usage.reservedMicros, limitMicros: usage.limitMicros, createdAt: now
            )
            let inserted = try await db.raw("""
                INSERT INTO budget_alerts (budget_id, period, threshold, project_id, budget_name, spent_micros, reserved_micros, limit_micros, created_at)
                VALUES (\(bind: alert.budgetID), \(bind: alert.period), \(bind: threshold), \(bind: budget.projectID), \(bind: alert.budgetName),
                        \(bind: alert.spentMicros), \(bind: alert.reservedMicros), \(bind: alert.limitMicros), \(bind: now))
                ON CONFLICT (budget_id, period, threshold) DO NOTHING
                RETURNING threshold
                """).first()
            if inserted != nil { fresh.append(alert) }
        }
        return fresh
    }

    func alerts(budgetID: String, period: String, on db: any SQLDatabase) async throws -> [AlertRow] {
        try await db.raw("""
            SELECT * FROM budget_alerts WHERE budget_id = \(bind: budgetID) AND period = \(bind: period) ORDER BY threshold
            """).all().map(Self.alertRow)
    }

    /// Newest first, from `before` (a `created_at`; 0: from the newest).
    func alerts(projectID: String, before: Int64, limit: Int, on db: any SQLDatabase) async throws -> [AlertRow] {
        let upper = before > 0 ? before : Int64.max
        return try await db.raw("""
            SELECT * FROM budget_alerts WHERE project_id = \(bind: projectID) AND created_at < \(bind: upper)
            ORDER BY created_at DESC LIMIT \(bind: limit)
            """).all().map(Self.alertRow)
    }

    // MARK: Rows

    static func budgetRow(_ row: any SQLRow) throws -> BudgetRow {
        let period = try row.decode(column: "period", as: String.self)
        return BudgetRow(
            id: try row.decode(column: "id", as: String.self),
            projectID: try row.decode(column: "project_id", as: String.self),
            name: try row.decode(column: "name", as: String.self),
            workflow: try row.decode(column: "workflow", as: String.self),
            agent: try row.decode(column: "agent", as: String.self),
            apiKeyID: try row.decode(column: "api_key_id", as: String.self),
            period: BudgetPeriod(rawValue: period) ?? .total,
            limitMicros: try row.decode(column: "limit_micros", as: Int64.self),
            hard: try row.decode(column: "kind", as: String.self) == "hard",
            description: try row.decode(column: "description", as: String.self),
            createdAt: try row.decode(column: "created_at", as: Int64.self),
            updatedAt: try row.decode(column: "updated_at", as: Int64.self),
            createdBy: try row.decode(column: "created_by", as: String.self)
        )
    }

    static func usageRow(_ row: any SQLRow) throws -> UsageRow {
        UsageRow(
            budgetID: try row.decode(column: "budget_id", as: String.self),
            period: try row.decode(column: "period", as: String.self),
            limitMicros: try row.decode(column: "limit_micros", as: Int64.self),
            spentMicros: try row.decode(column: "spent_micros", as: Int64.self),
            reservedMicros: try row.decode(column: "reserved_micros", as: Int64.self)
        )
    }

    static func attribution(_ row: any SQLRow) throws -> AttributionRow {
        AttributionRow(
            workflow: try row.decode(column: "workflow", as: String.self),
            agent: try row.decode(column: "agent", as: String.self),
            apiKeyID: try row.decode(column: "api_key_id", as: String.self),
            model: try row.decode(column: "model", as: String.self),
            tool: try row.decode(column: "tool", as: String.self),
            runID: try row.decode(column: "run_id", as: String.self),
            stepID: try row.decode(column: "step_id", as: String.self)
        )
    }

    static func reservationRow(_ row: any SQLRow) throws -> ReservationRow {
        ReservationRow(
            id: try row.decode(column: "id", as: String.self),
            projectID: try row.decode(column: "project_id", as: String.self),
            amountMicros: try row.decode(column: "amount_micros", as: Int64.self),
            status: ReservationRow.Status(rawValue: try row.decode(column: "status", as: String.self)) ?? .expired,
            actualMicros: try row.decode(column: "actual_micros", as: Int64.self),
            late: try row.decode(column: "late", as: Int64.self) != 0,
            attribution: try Self.attribution(row),
            createdAt: try row.decode(column: "created_at", as: Int64.self),
            expiresAt: try row.decode(column: "expires_at", as: Int64.self),
            finishedAt: try row.decode(column: "finished_at", as: Int64.self),
            envelope: try row.decode(column: "envelope", as: Int64.self) != 0,
            drawnMicros: try row.decode(column: "drawn_micros", as: Int64.self),
            envelopeID: try row.decode(column: "envelope_id", as: String.self)
        )
    }

    static func ledgerRow(_ row: any SQLRow) throws -> LedgerRow {
        LedgerRow(
            seq: try row.decode(column: "seq", as: Int64.self),
            budgetID: try row.decode(column: "budget_id", as: String.self),
            period: try row.decode(column: "period", as: String.self),
            kind: try row.decode(column: "kind", as: String.self),
            reservationID: try row.decode(column: "reservation_id", as: String.self),
            amountMicros: try row.decode(column: "amount_micros", as: Int64.self),
            spentAfter: try row.decode(column: "spent_after", as: Int64.self),
            reservedAfter: try row.decode(column: "reserved_after", as: Int64.self),
            attribution: try Self.attribution(row),
            createdAt: try row.decode(column: "created_at", as: Int64.self)
        )
    }

    static func alertRow(_ row: any SQLRow) throws -> AlertRow {
        AlertRow(
            budgetID: try row.decode(column: "budget_id", as: String.self),
            budgetName: try row.decode(column: "budget_name", as: String.self),
            period: try row.decode(column: "period", as: String.self),
            threshold: try row.decode(column: "threshold", as: Int.self),
            spentMicros: try row.decode(column: "spent_micros", as: Int64.self),
            reservedMicros: try row.decode(column: "reserved_micros", as: Int64.self),
            limitMicros: try row.decode(column: "limit_micros", as: Int64.self),
            createdAt: try row.decode(column: "created_at", as: Int64.self)
        )
    }
}
