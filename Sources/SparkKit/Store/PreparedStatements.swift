import NIOCore
import Logging
public import PostgresNIO
import PostgresKit
public import SQLKit

/// The text of a statement that a hot path runs often enough to keep prepared: constant SQL
/// with `$1`, `$2`… placeholders (each may appear more than once).
///
/// ```swift
/// enum ProjectByID: SparkStatementText {
///     static let sql = "SELECT * FROM projects WHERE id = $1 AND deleted_at IS NULL"
/// }
/// let row = try await db.prepared(ProjectByID.self, [id]).first
/// ```
public protocol SparkStatementText {
    static var sql: String { get }
}

/// A value bound to a prepared statement's placeholder: one PostgreSQL encodes, and SQLKit binds.
public typealias SparkStatementBind = PostgresThrowingDynamicTypeEncodable & Encodable & Sendable

extension SQLDatabase {
    /// Runs a ``SparkStatementText`` with `binds` for its placeholders, in order.
    ///
    /// On PostgreSQL the statement is prepared once per connection (the first run on a connection
    /// sends Parse and Describe; every later one only Bind and Execute), so PostgreSQL neither
    /// parses nor plans it again, and the client does not decode its row description again: for
    /// a one-row read by primary key that is most of the statement's cost on both sides. On SQLite
    /// it runs through SQLKit as any other statement (`$n` becomes SQLite's `?n`).
    ///
    /// Only constant texts belong here: each one stays prepared on every connection until it closes.
    public func prepared<Text: SparkStatementText>(_ text: Text.Type, _ binds: [any SparkStatementBind]) async throws -> [any SQLRow] {
        if let postgres = self as? SparkPostgresDatabase {
            var bindings = PostgresBindings(capacity: binds.count)
            for bind in binds { try bindings.append(bind) }
            let rows = try await postgres.connection.execute(PreparedStatement<Text>(bindings: bindings), logger: postgres.logger)
            var result: [any SQLRow] = []
            for try await row in rows { result.append(row.sql()) }
            return result
        }
        return try await self.raw(try SparkStatement.numberedBinds(Text.sql, binds)).all()
    }
}

/// A ``SparkStatementText`` as PostgresNIO prepares it: named after the text's type.
private struct PreparedStatement<Text: SparkStatementText>: PostgresPreparedStatement {
    typealias Row = PostgresRow

    static var sql: String { Text.sql }
    static var name: String { String(reflecting: Text.self) }

    let bindings: PostgresBindings

    func makeBindings() throws -> PostgresBindings { self.bindings }
    func decodeRow(_ row: PostgresRow) throws -> PostgresRow { row }
}

enum SparkStatement {
    /// The SQL with each `$n` replaced by a bind of `binds[n - 1]`, for SQLKit (and so SQLite).
    static func numberedBinds(_ sql: String, _ binds: [any SparkStatementBind]) throws -> SQLQueryString {
        var query = SQLQueryString("")
        var literal = ""
        var characters = sql.makeIterator()
        var pending = characters.next()
        while let character = pending {
            pending = characters.next()
            guard character == "$", let first = pending, let digit = first.wholeNumberValue else {
                literal.append(character)
                continue
            }
            var number = digit
            pending = characters.next()
            while let next = pending, let more = next.wholeNumberValue {
                number = number * 10 + more
                pending = characters.next()
            }
            guard number >= 1 && number <= binds.count else {
                throw SparkStoreError("$\(number) has no bind (\(binds.count) given) in \(sql)")
            }
            query.appendLiteral(literal)
            literal = ""
            query.appendInterpolation(bind: binds[number - 1])
        }
        query.appendLiteral(literal)
        return query
    }
}

/// The SQLDatabase a ``SparkStore`` hands out on PostgreSQL: postgres-kit's, and the connection
/// under it for ``SQLDatabase/prepared(_:_:)``.
struct SparkPostgresDatabase: SQLDatabase {
    let connection: PostgresConnection
    let base: any SQLDatabase

    init(connection: PostgresConnection) {
        self.connection = connection
        self.base = connection.sql()
    }

    var logger: Logger { self.base.logger }
    var eventLoop: any EventLoop { self.base.eventLoop }
    var version: (any SQLDatabaseReportedVersion)? { self.base.version }
    var dialect: any SQLDialect { self.base.dialect }
    var queryLogLevel: Logger.Level? { self.base.queryLogLevel }

    func execute(sql query: any SQLExpression, _ onRow: @escaping @Sendable (any SQLRow) -> Void) -> EventLoopFuture<Void> {
        self.base.execute(sql: query, onRow)
    }

    func execute(sql query: any SQLExpression, _ onRow: @escaping @Sendable (any SQLRow) -> Void) async throws {
        try await self.base.execute(sql: query, onRow)
    }

    func withSession<R>(_ closure: @escaping @Sendable (any SQLDatabase) async throws -> R) async throws -> R {
        try await closure(self)
    }
}
