import VaporCSQLite
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
import PostgresNIO
import SparkExpr
import SparkKit
import SparkWorkflow

/// Runs a sql tool's query, read-only, with a statement timeout and a row cap, its parameters
/// bound and never spliced into the text.
///
/// - PostgreSQL (`postgres://user:password@host:5432/db`, `?sslmode=require|prefer|disable`): the
///   host goes through the outbound guard and the connection is made to the address it checked;
///   the query runs in `BEGIN READ ONLY` with `SET LOCAL statement_timeout`, as
///   `SELECT row_to_json(q)::text FROM (<query>) q LIMIT <max_rows + 1>`, then the transaction is
///   rolled back.
/// - SQLite (`sqlite:///absolute/path.db`): only files under `tool.sqliteDirectories`, opened
///   read-only; the statement must be read-only by SQLite's own account (`sqlite_nio_sqlite3_stmt_readonly`),
///   and a progress handler interrupts it at the timeout.
struct SQLRunner: Sendable {
    let outbound: OutboundGuard
    let sqliteDirectories: [String]
    let tls: TLSConfiguration

    struct Result: Sendable {
        var rows: [ExprValue]
        var truncated: Bool
    }

    typealias Failure = ToolRunner.Failure

    func run(_ spec: ToolDefinition.SQL, connection: String, parameters: [ExprValue], timeout: Duration) async throws(Failure) -> Result {
        if connection.hasPrefix("sqlite:") {
            return try await self.sqlite(spec, connection: connection, parameters: parameters, timeout: timeout)
        }
        guard connection.hasPrefix("postgres://") || connection.hasPrefix("postgresql://") else {
            throw Failure(reason: "invalid_request", message: "the connection string in secret \(spec.connection) is neither postgres:// nor sqlite://")
        }
        do {
            return try await self.postgres(spec, connection: connection, parameters: parameters, timeout: timeout)
        } catch let failure as Failure {
            throw failure
        } catch let error as PSQLError {
            throw Failure(reason: Self.reason(error), message: Self.message(error))
        } catch {
            throw Failure(reason: "sql_error", message: "\(error)")
        }
    }

    // MARK: PostgreSQL

    func postgres(_ spec: ToolDefinition.SQL, connection text: String, parameters: [ExprValue], timeout: Duration) async throws -> Result {
        guard let url = URLComponents(string: text), let host = url.host, !host.isEmpty else {
            throw Failure(reason: "invalid_request", message: "the connection string in secret \(spec.connection) names no host")
        }
        let port = url.port ?? 5432
        let addresses: [SocketAddress]
        do {
            addresses = try await self.outbound.resolve(host: host, port: port)
        } catch {
            throw Failure(reason: "outbound_refused", message: error.message)
        }
        let database = url.path.hasPrefix("/") ? String(url.path.dropFirst()) : url.path
        let mode = url.queryItems?.first { $0.name == "sslmode" }?.value ?? "prefer"
        let tls: PostgresConnection.Configuration.TLS
        switch mode {
        case "disable": tls = .disable
        case "require", "verify-full", "verify-ca": tls = .require(try NIOSSLContext(configuration: self.tls))
        default: tls = .prefer(try NIOSSLContext(configuration: self.tls))
        }
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connectTimeout(.milliseconds(Int64(min(timeout, .seconds(10)).components.seconds * 1000 + 1)))
            .connect(to: addresses[0])
            .get()
        var configuration = PostgresConnection.Configuration(
            establishedChannel: channel, tls: tls,
            username: url.user?.removingPercentEncoding ?? "", password: url.password?.removingPercentEncoding,
            database: database.isEmpty ? nil : database
        )
        if IPAddress(host) == nil { configuration.options.tlsServerName = host }
        let logger = Logger(label: "sparkops.tool.sql")
        let postgres = try await PostgresConnection.connect(on: channel.eventLoop, configuration: configuration, id: 1, logger: logger).get()
        do {
            let result = try await Self.withTimeout(timeout) {
                try await postgres.query("BEGIN READ ONLY", logger: logger)
                let milliseconds = max(1, timeout.components.seconds * 1000 + timeout.components.attoseconds / 1_000_000_000_000_000)
                try await postgres.query(PostgresQuery(unsafeSQL: "SET LOCAL statement_timeout = \(milliseconds)"), logger: logger)
                var bindings = PostgresBindings()
                for given in parameters {
                    // A number kept as written binds as the int or double it is, or as its text
                    // beyond them (PostgreSQL reads it into a numeric parameter exactly).
                    let value = given.sqlParameter
                    switch value {
                    case .null: bindings.appendNull()
                    case .bool(let flag): bindings.append(flag)
                    case .int(let number): bindings.append(number)
                    case .double(let number): bindings.append(number)
                    case .string(let text): bindings.append(text)
                    case .list, .map: bindings.append(value.jsonText)
                    case .number(let text): bindings.append(text)
                    }
                }
                var query = spec.query.trimmingCharacters(in: .whitespacesAndNewlines)
                while query.hasSuffix(";") { query.removeLast() }
                let wrapped = "SELECT row_to_json(sparkops_q)::text AS row FROM (\(query)\n) AS sparkops_q LIMIT \(spec.maxRows + 1)"
                let rows = try await postgres.query(PostgresQuery(unsafeSQL: wrapped, binds: bindings), logger: logger)
                var collected: [ExprValue] = []
                for try await (row) in rows.decode(String.self) {
                    collected.append((try? ExprValue(jsonText: row)) ?? .string(row))
                }
                _ = try? await postgres.query("ROLLBACK", logger: logger)
                let truncated = collected.count > spec.maxRows
                return Result(rows: Array(collected.prefix(spec.maxRows)), truncated: truncated)
            }
            try? await postgres.close()
            return result
        } catch {
            try? await postgres.close()
            throw error
        }
    }

    static func reason(_ error: PSQLError) -> String {
        switch error.serverInfo?[.sqlState] {
        case "57014": return "timeout"
        case "25006": return "read_only"
        case "28P01", "28000": return "sql_auth"
        default: return "sql_error"
        }
    }

    static func message(_ error: PSQLError) -> String {
        if let message = error.serverInfo?[.message] {
            let state = error.serverInfo?[.sqlState].map { " (SQLSTATE \($0))" } ?? ""
            return "the database refused the query: \(message)\(state)"
        }
        return "the database connection failed: \(String(reflecting: error.code))"
    }

    static func withTimeout<T: Sendable>(_ timeout: Duration, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
        try await withThrowingTaskGroup(of: T?.self) { group in
            group.addTask { try await body() }
            group.addTask {
                try await Task.sleep(for: timeout + .seconds(1))
                return nil
            }
            defer { group.cancelAll() }
            guard let first = try await group.next(), let value = first else {
                throw Failure(reason: "timeout", message: "the query ran longer than its timeout of \(timeout)")
            }
            return value
        }
    }

    // MARK: SQLite

    func sqlite(_ spec: ToolDefinition.SQL, connection: String, parameters: [ExprValue], timeout: Duration) async throws(Failure) -> Result {
        var path = String(connection.dropFirst("sqlite:".count))
        while path.hasPrefix("//") { path.removeFirst() }
        let resolved = URL(filePath: path).standardizedFileURL.resolvingSymlinksInPath().path
        guard path.hasPrefix("/"), self.sqliteDirectories.contains(where: { resolved.hasPrefix($0.hasSuffix("/") ? $0 : $0 + "/") }) else {
            throw Failure(reason: "outbound_refused", message: "\(path) is not under a directory tool.sqliteDirectories allows")
        }
        let handle = InterruptHandle()
        // At the timeout, another thread interrupts the statement (SQLite allows exactly this).
        let timer = Task {
            try await Task.sleep(for: timeout)
            handle.interrupt()
        }
        defer { timer.cancel() }
        let outcome: Swift.Result<Result, Failure>
        do {
            outcome = try await NIOThreadPool.singleton.runIfActive {
                Self.sqliteQuery(path: resolved, spec: spec, parameters: parameters, handle: handle)
            }
        } catch {
            throw Failure(reason: "sql_error", message: "\(error)")
        }
        return try outcome.get()
    }

    /// Blocking: on a thread pool only.
    static func sqliteQuery(path: String, spec: ToolDefinition.SQL, parameters: [ExprValue], handle: InterruptHandle) -> Swift.Result<Result, Failure> {
        var db: OpaquePointer?
        guard sqlite_nio_sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, nil) == SQLITE_OK, let db else {
            let message = db.map { String(cString: sqlite_nio_sqlite3_errmsg($0)) } ?? "cannot open"
            sqlite_nio_sqlite3_close(db)
            return .failure(Failure(reason: "sql_error", message: "cannot open \(path): \(message)"))
        }
        handle.open(db)
        defer {
            handle.close()
            sqlite_nio_sqlite3_close(db)
        }

        var statement: OpaquePointer?
        var tail: UnsafePointer<CChar>?
        let prepared = spec.query.withCString { sqlite_nio_sqlite3_prepare_v2(db, $0, -1, &statement, &tail) }
        guard prepared == SQLITE_OK, let statement else {
            return .failure(Failure(reason: "sql_error", message: "the query does not prepare: \(String(cString: sqlite_nio_sqlite3_errmsg(db)))"))
        }
        defer { sqlite_nio_sqlite3_finalize(statement) }
        if let tail, !String(cString: tail).trimmingCharacters(in: .whitespacesAndNewlines.union(CharacterSet(charactersIn: ";"))).isEmpty {
            return .failure(Failure(reason: "invalid_request", message: "the query holds more than one statement"))
        }
        guard sqlite_nio_sqlite3_stmt_readonly(statement) != 0 else {
            return .failure(Failure(reason: "read_only", message: "the statement would write; a sql tool only reads"))
        }
        let transient = unsafeBitCast(-1, to: sqlite3_destructor_type.self)
        for (offset, given) in parameters.enumerated() {
            let index = Int32(offset + 1)
            let value = given.sqlParameter
            switch value {
            case .null: sqlite_nio_sqlite3_bind_null(statement, index)
            case .bool(let flag): sqlite_nio_sqlite3_bind_int64(statement, index, flag ? 1 : 0)
            case .int(let number): sqlite_nio_sqlite3_bind_int64(statement, index, number)
            case .double(let number): sqlite_nio_sqlite3_bind_double(statement, index, number)
            case .string(let text): sqlite_nio_sqlite3_bind_text(statement, index, text, -1, transient)
            case .list, .map: sqlite_nio_sqlite3_bind_text(statement, index, value.jsonText, -1, transient)
            case .number(let text): sqlite_nio_sqlite3_bind_text(statement, index, text, -1, transient)
            }
        }
        let columns = (0 ..< sqlite_nio_sqlite3_column_count(statement)).map { String(cString: sqlite_nio_sqlite3_column_name(statement, $0)) }
        var rows: [ExprValue] = []
        while true {
            let step = sqlite_nio_sqlite3_step(statement)
            if step == SQLITE_DONE { break }
            if step == SQLITE_INTERRUPT {
                return .failure(Failure(reason: "timeout", message: "the query ran past its timeout and was interrupted"))
            }
            guard step == SQLITE_ROW else {
                return .failure(Failure(reason: "sql_error", message: "the query failed: \(String(cString: sqlite_nio_sqlite3_errmsg(db)))"))
            }
            guard rows.count < spec.maxRows else { return .success(Result(rows: rows, truncated: true)) }
            var row: [String: ExprValue] = [:]
            for (index, name) in columns.enumerated() {
                let column = Int32(index)
                switch sqlite_nio_sqlite3_column_type(statement, column) {
                case SQLITE_INTEGER: row[name] = .int(sqlite_nio_sqlite3_column_int64(statement, column))
                case SQLITE_FLOAT: row[name] = .double(sqlite_nio_sqlite3_column_double(statement, column))
                case SQLITE_NULL: row[name] = .null
                case SQLITE_BLOB:
                    let count = Int(sqlite_nio_sqlite3_column_bytes(statement, column))
                    let bytes = sqlite_nio_sqlite3_column_blob(statement, column).map { Data(bytes: $0, count: count) } ?? Data()
                    row[name] = .string(bytes.base64EncodedString())
                default: row[name] = .string(sqlite_nio_sqlite3_column_text(statement, column).map { String(cString: $0) } ?? "")
                }
            }
            rows.append(.map(row))
        }
        return .success(Result(rows: rows, truncated: false))
    }
}

/// The open SQLite connection a timer may interrupt: never after it was closed.
final class InterruptHandle: @unchecked Sendable {
    private let lock = NIOLock()
    private var db: OpaquePointer?
    private var interrupted = false

    func open(_ db: OpaquePointer) {
        self.lock.withLock {
            self.db = db
            if self.interrupted { sqlite_nio_sqlite3_interrupt(db) }
        }
    }

    func close() {
        self.lock.withLock { self.db = nil }
    }

    func interrupt() {
        self.lock.withLock {
            self.interrupted = true
            if let db = self.db { sqlite_nio_sqlite3_interrupt(db) }
        }
    }
}

extension ExprValue {
    /// The value bound for a query parameter: a number kept as written as the int or double it
    /// is when one holds it (so `-0` binds 0 and `1.50` binds 1.5), else unchanged.
    var sqlParameter: ExprValue {
        if case .number(let text) = self, let number = ExprNumber.arithmetic(text) { return number }
        return self
    }
}
