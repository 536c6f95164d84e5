import Foundation
import Metrics
import Synchronization
public import Logging
import NIOCore
import NIOPosix
import PostgresKit
import PostgresNIO
public import SQLKit
import SQLiteKit
public import ServiceLifecycle

/// The database of one service: a SQLite file (the embedded default) or a schema of its own in
/// PostgreSQL. Both speak sql-kit, so a service's queries and migrations are written once.
///
/// ```swift
/// let store = try SparkStore(service: "project", location: .sqlite(directory: home + "/data"))
/// try await store.migrate(ProjectMigrations.all)
/// let name = try await store.sql { db in
///     try await db.raw("SELECT name FROM projects WHERE id = \(bind: id)").first(decoding: String.self)
/// }
/// ```
///
/// It is a `Service`: run it in the service group (PostgreSQL connections live in its `run()`).
public final class SparkStore: Service, Sendable {
    public enum Dialect: String, Sendable {
        case sqlite
        case postgres
    }

    /// How a PostgreSQL store keeps its idle connections.
    ///
    /// Each time a connection goes back to the pool with no call waiting for it, PostgresNIO's
    /// pool starts a keep-alive timer and, above `minConnections`, an idle-timeout timer, and
    /// cancels them when the connection is next leased. A cancelled `Task.sleep` keeps its memory
    /// until its deadline would have passed (swiftlang/swift#60441), so under a steady load of
    /// short queries the timers cost CPU and hold memory in proportion to their durations
    /// (docs/benchmarks.md). Connections below `minConnections` never get the idle timer.
    public struct PostgresPool: Sendable, Hashable {
        /// Connections kept open even when idle.
        public var minConnections: Int
        /// How long a connection may sit idle before `SELECT 1` checks it; nil turns checks off.
        public var keepAlive: Duration?

        public init(minConnections: Int = 0, keepAlive: Duration? = .seconds(30)) {
            self.minConnections = minConnections
            self.keepAlive = keepAlive
        }
    }

    public enum Location: Sendable {
        /// `<directory>/<service>.sqlite`.
        case sqlite(directory: String)
        /// A `postgres://user:password@host:port/database` URL; the service gets the schema named
        /// after it, and at most `maxConnections` connections, kept as `pool` says.
        case postgres(url: String, maxConnections: Int = 20, pool: PostgresPool = .init())
    }

    private enum Backend: Sendable {
        case sqlite(SQLitePool)
        case postgres(PostgresClient)
    }

    public let service: String
    public let dialect: Dialect
    private let backend: Backend
    private let logger: Logger
    private let usage: StoreUsage
    /// Opens when `run()` starts the PostgreSQL client: a query asked for before then (migrations
    /// racing the service group's start) waits here instead of leasing from a client that is not
    /// running yet, which PostgresNIO answers with a warning.
    private let running = OneTimeGate()
    /// SQLite: transactions one at a time in this process.
    private let writers = WriterLock()

    /// - Parameter service: the owning service; names the SQLite file or the PostgreSQL schema.
    public init(service: String, location: Location, logger: Logger = Logger(label: "sparkops.store")) throws {
        guard service.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "_" }), !service.isEmpty else {
            throw SparkStoreError("service name \(service.debugDescription) is not a valid schema name")
        }
        self.service = service
        self.usage = StoreUsage(service: service)
        self.logger = logger
        switch location {
        case .sqlite(let directory):
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            self.dialect = .sqlite
            self.backend = .sqlite(SQLitePool(path: "\(directory)/\(service).sqlite", logger: logger))
        case .postgres(let url, let maxConnections, let pool):
            var configuration = try Self.postgresConfiguration(url: url)
            configuration.options.additionalStartupParameters = [("search_path", service)]
            configuration.options.maximumConnections = maxConnections
            configuration.options.minimumConnections = min(pool.minConnections, maxConnections)
            configuration.options.keepAliveBehavior = pool.keepAlive.map { .init(frequency: $0) }
            self.dialect = .postgres
            self.backend = .postgres(PostgresClient(configuration: configuration, backgroundLogger: logger))
        }
    }

    private static func postgresConfiguration(url: String) throws -> PostgresClient.Configuration {
        let sqlConfiguration: SQLPostgresConfiguration
        do {
            sqlConfiguration = try SQLPostgresConfiguration(url: url)
        } catch {
            throw SparkStoreError("SPARKOPS_DATABASE_URL is not a postgres:// URL")
        }
        let core = sqlConfiguration.coreConfiguration
        guard let host = core.host else { throw SparkStoreError("the database URL names no host") }
        let tls: PostgresClient.Configuration.TLS
        switch (core.tls.isEnforced, core.tls.isAllowed) {
        case (true, _): tls = .require(core.tls.sslContext.map { _ in .makeClientConfiguration() } ?? .makeClientConfiguration())
        case (false, true): tls = .prefer(.makeClientConfiguration())
        case (false, false): tls = .disable
        }
        return PostgresClient.Configuration(
            host: host,
            port: core.port ?? 5432,
            username: core.username,
            password: core.password,
            database: core.database,
            tls: tls
        )
    }

    public func run() async throws {
        switch self.backend {
        case .postgres(let client):
            await cancelWhenGracefulShutdown {
                self.running.open()
                await client.run()
            }
        case .sqlite(let pool):
            try? await gracefulShutdown()
            await pool.close()
        }
    }

    /// Runs `body` with a database connection.
    public func sql<T: Sendable>(_ body: (any SQLDatabase) async throws -> T) async throws -> T {
        let requested = ContinuousClock.now
        switch self.backend {
        case .sqlite(let pool):
            return try await pool.withConnection { connection in
                self.usage.leased(waitingSince: requested)
                defer { self.usage.returned() }
                return try await body(connection.sql())
            }
        case .postgres(let client):
            try await self.running.wait()
            return try await client.withConnection { connection in
                self.usage.leased(waitingSince: requested)
                defer { self.usage.returned() }
                return try await body(SparkPostgresDatabase(connection: connection))
            }
        }
    }

    /// Calls `notification` with the payload of each PostgreSQL `NOTIFY` on `channel`, on a
    /// connection of its own, until cancelled or the connection is lost (then it throws, and the
    /// caller listens again). SQLite has no notifications: it returns at once, and one process is
    /// all there is to wake.
    public func listen(_ channel: String, _ notification: @escaping @Sendable (String) -> Void) async throws {
        guard case .postgres(let client) = self.backend else { return }
        try await self.running.wait()
        try await client.withConnection { connection in
            try await connection.listen(on: channel) { notifications in
                for try await received in notifications { notification(received.payload) }
            }
        }
    }

    /// Runs `body` in a transaction: committed when it returns, rolled back when it throws.
    /// SQLite's transactions take turns in this process before they lease a connection, so that
    /// waiting writers neither hold connections nor run into `busy_timeout`.
    public func transaction<T: Sendable>(_ body: (any SQLDatabase) async throws -> T) async throws -> T {
        switch self.dialect {
        case .sqlite:
            return try await self.writers.withLock {
                try await self.sql { db in try await Self.inTransaction(db, dialect: .sqlite, body) }
            }
        case .postgres:
            return try await self.sql { db in try await Self.inTransaction(db, dialect: .postgres, body) }
        }
    }

    /// Runs `body` as a writer whose statements each commit on their own, without a
    /// transaction around them: on SQLite under the single writer's lock, on PostgreSQL in
    /// autocommit, which spares the round trips of BEGIN and COMMIT. A body of one statement is
    /// as atomic as a transaction of it.
    public func write<T: Sendable>(_ body: (any SQLDatabase) async throws -> T) async throws -> T {
        switch self.dialect {
        case .sqlite: return try await self.writers.withLock { try await self.sql(body) }
        case .postgres: return try await self.sql(body)
        }
    }

    private static func inTransaction<T: Sendable>(_ db: any SQLDatabase, dialect: Dialect, _ body: (any SQLDatabase) async throws -> T) async throws -> T {
        try await db.raw(dialect == .sqlite ? "BEGIN IMMEDIATE" : "BEGIN").run()
        do {
            let result = try await body(db)
            try await db.raw("COMMIT").run()
            return result
        } catch {
            try? await db.raw("ROLLBACK").run()
            throw error
        }
    }
}

/// Waits until `open()` has been called once; cheap once open.
package final class OneTimeGate: Sendable {
    private struct State {
        var open = false
        var waiters: [UInt64: CheckedContinuation<Void, any Error>] = [:]
        var nextID: UInt64 = 0
    }

    private let isOpen = Atomic<Bool>(false)
    private let state = Mutex(State())

    package init() {}

    package func open() {
        let waiters = self.state.withLock { state in
            state.open = true
            defer { state.waiters.removeAll() }
            return Array(state.waiters.values)
        }
        self.isOpen.store(true, ordering: .releasing)
        for waiter in waiters { waiter.resume() }
    }

    /// Returns once the gate is open; throws `CancellationError` if the task is cancelled first.
    package func wait() async throws {
        if self.isOpen.load(ordering: .acquiring) { return }
        let id = self.state.withLock { state in
            defer { state.nextID += 1 }
            return state.nextID
        }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let resumeNow: Result<Void, any Error>? = self.state.withLock { state in
                    if state.open { return .success(()) }
                    if Task.isCancelled { return .failure(CancellationError()) }
                    state.waiters[id] = continuation
                    return nil
                }
                if let resumeNow { continuation.resume(with: resumeNow) }
            }
        } onCancel: {
            let waiter = self.state.withLock { $0.waiters.removeValue(forKey: id) }
            waiter?.resume(throwing: CancellationError())
        }
    }
}

/// A store that cannot be used as configured.
public struct SparkStoreError: Error, CustomStringConvertible, Sendable {
    public var description: String

    public init(_ description: String) {
        self.description = description
    }
}

/// Pool use of a store, as Prometheus sees it: `sparkops_store_connections_in_use{service}` (a
/// gauge) and `sparkops_store_connection_wait_seconds{service}` (how long callers waited for a
/// connection, a histogram).
final class StoreUsage: Sendable {
    private let inUse = Atomic<Int>(0)
    private let gauge: Gauge
    private let wait: Metrics.Timer

    init(service: String) {
        self.gauge = Gauge(label: "sparkops_store_connections_in_use", dimensions: [("service", service)])
        self.wait = Metrics.Timer(label: "sparkops_store_connection_wait_seconds", dimensions: [("service", service)], preferredDisplayUnit: .seconds)
    }

    func leased(waitingSince requested: ContinuousClock.Instant) {
        self.wait.recordInterval(since: requested)
        self.gauge.record(self.inUse.add(1, ordering: .relaxed).newValue)
    }

    func returned() {
        self.gauge.record(self.inUse.subtract(1, ordering: .relaxed).newValue)
    }
}

extension SparkStore {
    /// Whether `error` says the database cannot be reached right now (a connection that failed or
    /// dropped, a server shutting down or starting up) rather than that a statement was wrong:
    /// the call that met it can be sent again, and callers are told UNAVAILABLE.
    public static func isUnavailable(_ error: any Error) -> Bool {
        if let error = error as? PSQLError {
            switch error.code {
            case .connectionError, .serverClosedConnection, .clientClosedConnection, .uncleanShutdown, .poolClosed:
                return true
            case .server:
                // 08: connection exception; 53: insufficient resources (too many connections, as
                // every service reconnects at once after a restart); 57: operator intervention
                // (shutdown, starting up, crash recovery); 58: system error (I/O).
                let state = error.serverInfo?[.sqlState] ?? ""
                return ["08", "53", "57", "58"].contains(String(state.prefix(2)))
            default:
                return false
            }
        }
        // The pool's own errors (a request while no connection could be made) are of a type
        // PostgresNIO does not export; a connection that breaks under a query can surface as
        // NIO's own channel and I/O errors.
        return ["ConnectionPoolError", "ChannelError", "IOError", "NIOConnectionError"].contains(String(describing: type(of: error)))
    }
}
