import Foundation
import Logging
import PostgresNIO

/// The databases the store, gateway and multi-process tests run against: SQLite always, and
/// PostgreSQL when `SPARKOPS_TEST_DATABASE_URL` names a server (CI sets it). Each PostgreSQL test
/// gets a database of its own, dropped afterwards.
public enum TestBackend: Sendable, CustomStringConvertible {
    case sqlite
    case postgres(url: String)

    public static var all: [TestBackend] {
        var backends: [TestBackend] = [.sqlite]
        if let url = ProcessInfo.processInfo.environment["SPARKOPS_TEST_DATABASE_URL"], !url.isEmpty {
            backends.append(.postgres(url: url))
        }
        return backends
    }

    /// Redis for the tests run on PostgreSQL, when `SPARKOPS_TEST_REDIS_URL` is set.
    public var redisURL: String? {
        guard case .postgres = self else { return nil }
        let url = ProcessInfo.processInfo.environment["SPARKOPS_TEST_REDIS_URL"]
        return url?.isEmpty == false ? url : nil
    }

    public var description: String {
        switch self {
        case .sqlite: return "SQLite"
        case .postgres: return "PostgreSQL"
        }
    }

    /// Runs `body` with a fresh database: nil (SQLite under the test's home) or a PostgreSQL URL.
    public func withDatabase<T: Sendable>(_ body: (_ databaseURL: String?) async throws -> T) async throws -> T {
        guard case .postgres(let url) = self else { return try await body(nil) }
        let name = "sparkops_t_\(UUID().uuidString.prefix(8).lowercased())"
        try await Self.admin(url, "CREATE DATABASE \(name)")
        do {
            let result = try await body(Self.replacingDatabase(in: url, with: name))
            try? await Self.admin(url, "DROP DATABASE IF EXISTS \(name) WITH (FORCE)")
            return result
        } catch {
            try? await Self.admin(url, "DROP DATABASE IF EXISTS \(name) WITH (FORCE)")
            throw error
        }
    }

    static func replacingDatabase(in url: String, with name: String) -> String {
        guard var components = URLComponents(string: url) else { return url }
        components.path = "/\(name)"
        return components.string ?? url
    }

    private static func admin(_ url: String, _ statement: String) async throws {
        guard let components = URLComponents(string: url), let host = components.host, let user = components.user else {
            throw TestSetupError(description: "SPARKOPS_TEST_DATABASE_URL must be postgres://user:password@host:port/database")
        }
        let configuration = PostgresClient.Configuration(
            host: host,
            port: components.port ?? 5432,
            username: user,
            password: components.password,
            database: String(components.path.dropFirst()),
            tls: .disable
        )
        let client = PostgresClient(configuration: configuration)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await client.run() }
            defer { group.cancelAll() }
            try await client.query(PostgresQuery(unsafeSQL: statement))
        }
    }
}

public struct TestSetupError: Error, CustomStringConvertible {
    public var description: String

    public init(description: String) {
        self.description = description
    }
}
