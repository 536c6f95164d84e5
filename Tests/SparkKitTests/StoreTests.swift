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
