public import SQLKit

/// A durable queue of tasks in a service's own database: tasks are written in the caller's
/// transaction (so that the work and the record that asks for it commit together), claimed in
/// batches under a lease, kept by heartbeats, and finished in the caller's transaction again.
///
/// Every claim raises the task's lease version, a fencing token: a worker that lost its lease
/// (paused past it, partitioned away) and reports late holds an old version, and its heartbeat,
/// completion or release is refused, so that it cannot overwrite what the task's new holder did.
/// An expired lease is claimed again by any replica's next claim.
///
/// PostgreSQL claims with `FOR UPDATE SKIP LOCKED`, so that replicas claiming at once never wait
/// for or take each other's tasks; SQLite claims through its single writer. Times are
/// microseconds since 1970, given by the caller.
public struct TaskQueue: Sendable {
    /// A claimed task, with the lease that must accompany everything done with it.
    public struct Claim: Sendable, Hashable {
        public var id: String
        public var kind: String
        public var payload: String
        /// How many times the task has been claimed, this claim included.
        public var claims: Int
        /// The fencing token: the lease's version.
        public var version: Int64
        public var leaseUntil: Int64
    }

    /// A task to add: `id` is the caller's (unique: adding an id twice is refused), `payload`
    /// opaque text, `runAt` when it may be claimed.
    public struct NewTask: Sendable, Hashable {
        public var id: String
        public var kind: String
        public var payload: String
        public var runAt: Int64

        public init(id: String, kind: String, payload: String, runAt: Int64) {
            self.id = id
            self.kind = kind
            self.payload = payload
            self.runAt = runAt
        }
    }

    /// The queue's table; include it in the service's migrations.
    public static let migration = SparkMigration("task_queue_0001", [
        """
        CREATE TABLE task_queue (
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            payload TEXT NOT NULL,
            run_at BIGINT NOT NULL,
            status TEXT NOT NULL,
            lease_owner TEXT NOT NULL DEFAULT '',
            lease_until BIGINT NOT NULL DEFAULT 0,
            lease_version BIGINT NOT NULL DEFAULT 0,
            claims INTEGER NOT NULL DEFAULT 0,
            created_at BIGINT NOT NULL
        )
        """,
        "CREATE INDEX task_queue_due ON task_queue (status, run_at)",
        "CREATE INDEX task_queue_leases ON task_queue (status, lease_until)",
    ])

    public let store: SparkStore

    public init(store: SparkStore) {
        self.store = store
    }

    /// Adds `tasks` in the caller's transaction `db`, and `claimed` tasks already claimed by
    /// their owner until their lease's end: the worker whose commit asks for a task takes it
    /// itself, without a claim round trip or a wake-up. Should that worker stop, the lease
    /// expires and any replica's next claim takes the task, as with one it had claimed. One
    /// statement; the claims of the `claimed` tasks, in their order.
    @discardableResult
    public func enqueue(
        _ tasks: [NewTask], claimed: [(task: NewTask, owner: String, leaseUntil: Int64)] = [], now: Int64, on db: any SQLDatabase
    ) async throws -> [Claim] {
        if let insert = self.insertion(queued: tasks, claimed: claimed, now: now) { try await db.raw(insert).run() }
        return claimed.map { Self.claim(of: $0.task, leaseUntil: $0.leaseUntil) }
    }

    /// The claim of a task added claimed (``enqueue(_:claimed:now:on:)``, ``insertion(queued:claimed:now:)``).
    public static func claim(of task: NewTask, leaseUntil: Int64) -> Claim {
        Claim(id: task.id, kind: task.kind, payload: task.payload, claims: 1, version: 1, leaseUntil: leaseUntil)
    }

    /// One INSERT of `queued` tasks and of `claimed` ones (each already claimed by its owner
    /// until its lease's end), for a caller that runs it within a statement of its own (a
    /// PostgreSQL `WITH`), in its transaction. Nil when there is nothing to add.
    public func insertion(queued: [NewTask], claimed: [(task: NewTask, owner: String, leaseUntil: Int64)], now: Int64) -> SQLQueryString? {
        let rows: [SQLQueryString] = queued.map { task in
            "(\(bind: task.id), \(bind: task.kind), \(bind: task.payload), \(bind: task.runAt), 'queued', '', 0, 0, 0, \(bind: now))"
        } + claimed.map { task, owner, leaseUntil in
            "(\(bind: task.id), \(bind: task.kind), \(bind: task.payload), \(bind: task.runAt), 'claimed', \(bind: owner), \(bind: leaseUntil), 1, 1, \(bind: now))"
        }
        guard !rows.isEmpty else { return nil }
        return """
            INSERT INTO task_queue (id, kind, payload, run_at, status, lease_owner, lease_until, lease_version, claims, created_at)
            VALUES \(rows.joined(separator: ", "))
            """
    }

    /// Claims up to `limit` tasks that are due, or whose lease expired, for `owner` until
    /// `now + leaseMicros`, oldest first.
    public func claim(owner: String, limit: Int, leaseMicros: Int64, now: Int64) async throws -> [Claim] {
        guard limit > 0 else { return [] }
        let skipLocked: SQLQueryString = self.store.dialect == .postgres ? "FOR UPDATE SKIP LOCKED" : ""
        // The pick is a CTE, evaluated once (PostgreSQL materializes a locking one).
        let query: SQLQueryString = """
            WITH picked AS (
                SELECT id FROM task_queue
                WHERE (status = 'queued' AND run_at <= \(bind: now)) OR (status = 'claimed' AND lease_until <= \(bind: now))
                ORDER BY run_at, id LIMIT \(bind: limit) \(skipLocked)
            )
            UPDATE task_queue SET status = 'claimed', lease_owner = \(bind: owner), lease_until = \(bind: now + leaseMicros),
                lease_version = lease_version + 1, claims = claims + 1
            WHERE id IN (SELECT id FROM picked)
            RETURNING id, kind, payload, claims, lease_version, lease_until
            """
        let rows: [any SQLRow]
        switch self.store.dialect {
        case .postgres: rows = try await self.store.sql { try await $0.raw(query).all() }
        case .sqlite: rows = try await self.store.transaction { try await $0.raw(query).all() }
        }
        return try rows.map {
            Claim(
                id: try $0.decode(column: "id", as: String.self), kind: try $0.decode(column: "kind", as: String.self),
                payload: try $0.decode(column: "payload", as: String.self), claims: try $0.decode(column: "claims", as: Int.self),
                version: try $0.decode(column: "lease_version", as: Int64.self), leaseUntil: try $0.decode(column: "lease_until", as: Int64.self)
            )
        }.sorted { $0.id < $1.id }
    }

    /// Extends the lease of `claim` to `until`; false when the lease is no longer this claim's.
    public func heartbeat(_ claim: Claim, until: Int64) async throws -> Bool {
        try await self.store.sql { db in
            try await db.raw("""
                UPDATE task_queue SET lease_until = \(bind: until)
                WHERE id = \(bind: claim.id) AND status = 'claimed' AND lease_version = \(bind: claim.version)
                RETURNING id
                """).first() != nil
        }
    }

    /// Removes the finished task in the caller's transaction `db`; false when the lease is no
    /// longer this claim's, and then the caller must roll back what it was about to commit.
    public func complete(_ claim: Claim, on db: any SQLDatabase) async throws -> Bool {
        try await db.raw(self.completion(claim)).first() != nil
    }

    /// The statement of ``complete(_:on:)``, returning the task's `id` when the lease was still
    /// the claim's, for a caller that runs it within a statement of its own (a PostgreSQL `WITH`).
    public func completion(_ claim: Claim) -> SQLQueryString {
        """
        DELETE FROM task_queue WHERE id = \(bind: claim.id) AND status = 'claimed' AND lease_version = \(bind: claim.version)
        RETURNING id
        """
    }

    /// Hands the task back unfinished (a worker draining at shutdown), due at `runAt`; false when
    /// the lease is no longer this claim's.
    public func release(_ claim: Claim, runAt: Int64) async throws -> Bool {
        try await self.store.sql { db in
            try await db.raw("""
                UPDATE task_queue SET status = 'queued', lease_owner = '', lease_until = 0, run_at = \(bind: runAt)
                WHERE id = \(bind: claim.id) AND status = 'claimed' AND lease_version = \(bind: claim.version)
                RETURNING id
                """).first() != nil
        }
    }

    /// How many tasks are queued or claimed.
    public func count() async throws -> Int {
        try await self.store.sql { db in
            try await db.raw("SELECT COUNT(*) AS n FROM task_queue").first()?.decode(column: "n", as: Int.self) ?? 0
        }
    }
}
