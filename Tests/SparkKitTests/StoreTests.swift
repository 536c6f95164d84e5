import Foundation
import SQLKit
import SparkKit
import SparkTesting
import Synchronization
import Testing

/// The store, migrations included, on SQLite and (when configured) PostgreSQL.
@Suite("Store")
struct StoreTests {
    func withStore<T: Sendable>(_ backend: TestBackend, service: String = "store_test", _ body: @Sendable (SparkStore) async throws -> T) async throws -> T {
        try await backend.withDatabase { url in
            let directory = FileManager.default.temporaryDirectory.appending(path: "sparkops-store-\(UUID().uuidString)").path
            defer { try? FileManager.default.removeItem(atPath: directory) }
            let store = try SparkStore(service: service, location: url.map { .postgres(url: $0) } ?? .sqlite(directory: directory))
            return try await withThrowingTaskGroup(of: T?.self) { group in
                group.addTask {
                    try await store.run()
                    return nil
                }
                defer { group.cancelAll() }
                return try await body(store)
            }
        }
    }

    static let migrations = [
        SparkMigration("0001_things", ["CREATE TABLE things (id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, size BIGINT NOT NULL)"]),
        SparkMigration("0002_index", ["CREATE INDEX things_size ON things (size)"]),
    ]

    @Test("migrations apply once, in order, and are recorded", arguments: TestBackend.all)
    func migrations(backend: TestBackend) async throws {
        try await self.withStore(backend) { store in
            let first = try await store.migrate(Self.migrations)
            #expect(first == ["0001_things", "0002_index"])
            let second = try await store.migrate(Self.migrations)
            #expect(second == [])
            let recorded = try await store.appliedMigrations()
            #expect(recorded == ["0001_things", "0002_index"])
            let more = Self.migrations + [SparkMigration("0003_column", ["ALTER TABLE things ADD COLUMN note TEXT NOT NULL DEFAULT ''"])]
            let third = try await store.migrate(more)
            #expect(third == ["0003_column"])
        }
    }

    @Test("replicas migrating at once apply each migration exactly once", arguments: TestBackend.all)
    func concurrentMigrations(backend: TestBackend) async throws {
        try await self.withStore(backend) { store in
            let results = try await withThrowingTaskGroup(of: [String].self) { group in
                for _ in 0 ..< 4 { group.addTask { try await store.migrate(Self.migrations) } }
                var all: [[String]] = []
                for try await result in group { all.append(result) }
                return all
            }
            #expect(results.flatMap { $0 }.sorted() == ["0001_things", "0002_index"])
        }
    }

    @Test("a failing migration leaves nothing half-applied", arguments: TestBackend.all)
    func failingMigration(backend: TestBackend) async throws {
        try await self.withStore(backend) { store in
            try await store.migrate(Self.migrations)
            let broken = Self.migrations + [SparkMigration("0003_broken", ["CREATE TABLE extra (id TEXT)", "THIS IS NOT SQL"])]
            await #expect(throws: (any Error).self) { try await store.migrate(broken) }
            let recorded = try await store.appliedMigrations()
            #expect(recorded == ["0001_things", "0002_index"])
            // The first statement of the failed migration was rolled back with it.
            try await store.sql { db in
                try await db.raw("CREATE TABLE extra (id TEXT)").run()
            }
        }
    }

    @Test("a transaction that throws is rolled back; SQL metacharacters are stored as written", arguments: TestBackend.all)
    func transactions(backend: TestBackend) async throws {
        try await self.withStore(backend) { store in
            try await store.migrate(Self.migrations)
            let nasty = "Robert'); DROP TABLE things;-- \"%_\\ ü 🚀"
            try await store.transaction { db in
                try await db.raw("INSERT INTO things (id, name, size) VALUES ('a', \(bind: nasty), 1)").run()
            }
            struct Abort: Error {}
            await #expect(throws: Abort.self) {
                try await store.transaction { db in
                    try await db.raw("INSERT INTO things (id, name, size) VALUES ('b', 'second', 2)").run()
                    throw Abort()
                }
            }
            let names = try await store.sql { db in
                try await db.raw("SELECT name FROM things ORDER BY id").all().map { try $0.decode(column: "name", as: String.self) }
            }
            #expect(names == [nasty])
        }
    }

    @Test("a unique violation surfaces as an error and changes nothing", arguments: TestBackend.all)
    func uniqueness(backend: TestBackend) async throws {
        try await self.withStore(backend) { store in
            try await store.migrate(Self.migrations)
            try await store.sql { try await $0.raw("INSERT INTO things (id, name, size) VALUES ('a', 'same', 1)").run() }
            await #expect(throws: (any Error).self) {
                try await store.sql { try await $0.raw("INSERT INTO things (id, name, size) VALUES ('b', 'same', 2)").run() }
            }
            let count = try await store.sql { try await $0.raw("SELECT COUNT(*) AS n FROM things").first()?.decode(column: "n", as: Int.self) }
            #expect(count == 1)
        }
    }

    @Test("many concurrent writers all land", arguments: TestBackend.all)
    func concurrentWrites(backend: TestBackend) async throws {
        try await self.withStore(backend) { store in
            try await store.migrate(Self.migrations)
            try await withThrowingTaskGroup(of: Void.self) { group in
                for index in 0 ..< 200 {
                    group.addTask {
                        try await store.transaction { db in
                            try await db.raw("INSERT INTO things (id, name, size) VALUES (\(bind: "id\(index)"), \(bind: "name\(index)"), \(bind: index))").run()
                        }
                    }
                }
                try await group.waitForAll()
            }
            let count = try await store.sql { try await $0.raw("SELECT COUNT(*) AS n FROM things").first()?.decode(column: "n", as: Int.self) }
            #expect(count == 200)
        }
    }

    @Test("queries asked for before the store runs wait for it instead of failing", arguments: TestBackend.all)
    func queriesBeforeRun(backend: TestBackend) async throws {
        try await backend.withDatabase { url in
            let directory = FileManager.default.temporaryDirectory.appending(path: "sparkops-store-\(UUID().uuidString)").path
            defer { try? FileManager.default.removeItem(atPath: directory) }
            let store = try SparkStore(service: "early", location: url.map { .postgres(url: $0) } ?? .sqlite(directory: directory))
            try await withThrowingTaskGroup(of: Int?.self) { group in
                // Asked first; the store starts running 200 ms later.
                group.addTask { try await store.sql { try await $0.raw("SELECT 41 + 1 AS answer").first()?.decode(column: "answer", as: Int.self) } }
                try await Task.sleep(for: .milliseconds(200))
                group.addTask {
                    try await store.run()
                    return nil
                }
                let answer = try await group.next()
                #expect(answer == 42)
                group.cancelAll()
            }
        }
    }

    @Test("a gate lets waiters through once opened, at once afterwards, and releases cancelled waiters")
    func gate() async throws {
        final class Counter: Sendable {
            let value = Mutex(0)
        }
        let gate = OneTimeGate()
        let passed = Counter()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0 ..< 10 {
                group.addTask {
                    try await gate.wait()
                    passed.value.withLock { $0 += 1 }
                }
            }
            try await Task.sleep(for: .milliseconds(100))
            #expect(passed.value.withLock { $0 } == 0)
            gate.open()
            try await group.waitForAll()
        }
        #expect(passed.value.withLock { $0 } == 10)
        try await gate.wait()

        let closed = OneTimeGate()
        let waiter = Task { try await closed.wait() }
        try await Task.sleep(for: .milliseconds(50))
        waiter.cancel()
        await #expect(throws: CancellationError.self) { try await waiter.value }
    }

    @Test("service names that are not schema names are refused")
    func badServiceName() {
        #expect(throws: SparkStoreError.self) { try SparkStore(service: "bad-name; DROP", location: .sqlite(directory: "/tmp")) }
        #expect(throws: SparkStoreError.self) { try SparkStore(service: "x", location: .postgres(url: "not a url")) }
    }
}

/// Statements kept prepared on PostgreSQL, run as they are on SQLite.
@Suite("Store prepared statements")
struct PreparedStatementTests {
    enum ThingsBetween: SparkStatementText {
        // $2 before $1, and $1 twice: the numbers, not the order, pick the binds.
        static let sql = "SELECT id, name FROM things WHERE size <= $2 AND size >= $1 AND id <> $3 AND size + 0 >= $1 ORDER BY size"
    }

    enum ThingByName: SparkStatementText {
        static let sql = "SELECT id FROM things WHERE name = $1"
    }

    static func ids(_ rows: [any SQLRow], _ label: String) throws -> [String] {
        do {
            return try rows.map { try $0.decode(column: "id", as: String.self) }
        } catch {
            Issue.record("\(label): columns \(rows.map(\.allColumns))")
            throw error
        }
    }

    @Test("binds go to their numbered placeholders; a second run on a connection reuses the statement; a missing bind is an error", arguments: TestBackend.all)
    func prepared(backend: TestBackend) async throws {
        try await StoreTests().withStore(backend) { store in
            try await store.migrate(StoreTests.migrations)
            try await store.transaction { db in
                for (id, name, size) in [("t1", "one", 1), ("t2", "two", 2), ("t3", "three", 3), ("t4", "four", 4)] {
                    try await db.raw("INSERT INTO things (id, name, size) VALUES (\(bind: id), \(bind: name), \(bind: size))").run()
                }
            }
            try await store.sql { db in
                for _ in 0 ..< 3 {
                    let rows = try await db.prepared(ThingsBetween.self, [2, 4, "t3"])
                    #expect(try Self.ids(rows, "between") == ["t2", "t4"])
                }
                #expect(try Self.ids(try await db.prepared(ThingByName.self, ["three"]), "by name") == ["t3"])
                #expect(try await db.prepared(ThingByName.self, ["none"]).isEmpty)
                if store.dialect == .postgres {
                    // Prepared on this connection, once each, under the text's type name.
                    let names = try await db.raw("SELECT name FROM pg_prepared_statements WHERE name LIKE '%ThingsBetween%' OR name LIKE '%ThingByName%'").all()
                        .map { try $0.decode(column: "name", as: String.self) }
                    #expect(names.count == 2, "\(names)")
                }
                await #expect(throws: (any Error).self) { try await db.prepared(ThingsBetween.self, [2, 4]) }
            }
            // Across connections and after an error, the statements still run.
            let counts = try await withThrowingTaskGroup(of: Int.self) { group in
                for _ in 0 ..< 8 {
                    group.addTask { try await store.sql { db in try await db.prepared(ThingsBetween.self, [1, 3, ""]).count } }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            #expect(counts == Array(repeating: 3, count: 8))
        }
    }

    @Test("16 tasks at once prepare and run statements on fresh connections, a failed bind between their runs", arguments: TestBackend.all)
    func preparedAtOnce(backend: TestBackend) async throws {
        for round in 0 ..< 4 {
            try await StoreTests().withStore(backend) { store in
                try await store.migrate(StoreTests.migrations)
                try await store.transaction { db in
                    for (id, name, size) in [("t1", "one", 1), ("t2", "two", 2), ("t3", "three", 3), ("t4", "four", 4)] {
                        try await db.raw("INSERT INTO things (id, name, size) VALUES (\(bind: id), \(bind: name), \(bind: size))").run()
                    }
                }
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for task in 0 ..< 16 {
                        group.addTask { try await Self.runs(store, label: "round \(round), task \(task)") }
                    }
                    try await group.waitForAll()
                }
            }
        }
    }

    /// Four runs of each statement on one connection, a failed bind after the second.
    static func runs(_ store: SparkStore, label: String) async throws {
        try await store.sql { db -> Void in
            for run in 0 ..< 4 {
                let between = try await db.prepared(ThingsBetween.self, [2, 4, "t3"])
                #expect(try Self.ids(between, "\(label), run \(run)") == ["t2", "t4"])
                if run == 1 { _ = try? await db.prepared(ThingsBetween.self, [2, 4]) }
                let byName = try await db.prepared(ThingByName.self, ["three"])
                #expect(try Self.ids(byName, "\(label), run \(run)") == ["t3"])
            }
        }
    }
}
