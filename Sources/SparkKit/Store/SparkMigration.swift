import SQLKit

/// One step of a service's schema, applied once, in order, and recorded in `spark_migrations`.
///
/// Statements are written once for both dialects where they agree; `postgres` and `sqlite` give
/// dialect-specific statements where they do not.
public struct SparkMigration: Sendable {
    public var id: String
    public var statements: @Sendable (SparkStore.Dialect) -> [String]

    public init(_ id: String, _ statements: @escaping @Sendable (SparkStore.Dialect) -> [String]) {
        self.id = id
        self.statements = statements
    }

    public init(_ id: String, _ statements: [String]) {
        self.id = id
        self.statements = { _ in statements }
    }
}

extension SparkStore {
    /// Applies the migrations not yet recorded, each in a transaction of its own, in order.
    /// Replicas starting together are safe: PostgreSQL serializes them with an advisory lock, SQLite
    /// with its write lock. Returns the ids applied.
    @discardableResult
    public func migrate(_ migrations: [SparkMigration]) async throws -> [String] {
        // IF NOT EXISTS is not safe against a concurrent creator in PostgreSQL: hold the lock.
        try await self.transaction { db in
            if self.dialect == .postgres {
                try await db.raw("SELECT pg_advisory_xact_lock(\(bind: Self.lockKey(self.service)))").run()
                try await db.raw("CREATE SCHEMA IF NOT EXISTS \(ident: self.service)").run()
            }
            try await db.raw("CREATE TABLE IF NOT EXISTS spark_migrations (id TEXT PRIMARY KEY, applied_at BIGINT NOT NULL)").run()
        }
        var applied: [String] = []
        for migration in migrations {
            let ran = try await self.transaction { db -> Bool in
                if self.dialect == .postgres {
                    try await db.raw("SELECT pg_advisory_xact_lock(\(bind: Self.lockKey(self.service)))").run()
                }
                let done = try await db.raw("SELECT id FROM spark_migrations WHERE id = \(bind: migration.id)").first()
                guard done == nil else { return false }
                for statement in migration.statements(self.dialect) {
                    try await db.raw(SQLQueryString(statement)).run()
                }
                let now = Int64(Date().timeIntervalSince1970 * 1_000_000)
                try await db.raw("INSERT INTO spark_migrations (id, applied_at) VALUES (\(bind: migration.id), \(bind: now))").run()
                return true
            }
            if ran { applied.append(migration.id) }
        }
        return applied
    }

    /// The ids of the migrations already applied, in order.
    public func appliedMigrations() async throws -> [String] {
        try await self.sql { db in
            try await db.raw("SELECT id FROM spark_migrations ORDER BY applied_at, id").all().map { try $0.decode(column: "id", as: String.self) }
        }
    }

    private static func lockKey(_ service: String) -> Int64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in service.utf8 {
            hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3
        }
        return Int64(bitPattern: hash)
    }
}

import Foundation
