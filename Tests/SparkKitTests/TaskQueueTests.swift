import Foundation
import SQLKit
import SparkKit
import SparkTesting
import Synchronization
import Testing

/// The durable task queue, on SQLite and (when configured) PostgreSQL. Times are given, not read
/// from a clock, so that leases expire exactly when a test says.
@Suite("Task queue")
struct TaskQueueTests {
    static let start: Int64 = 1_800_000_000_000_000
    static let second: Int64 = 1_000_000

    func withQueue(_ backend: TestBackend, _ body: @Sendable (TaskQueue) async throws -> Void) async throws {
        try await StoreTests().withStore(backend, service: "queue_test") { store in
            try await store.migrate([TaskQueue.migration])
            try await body(TaskQueue(store: store))
        }
    }

    func enqueue(_ queue: TaskQueue, _ count: Int, runAt: Int64 = start) async throws {
        try await queue.store.transaction { db in
            try await queue.enqueue((0 ..< count).map { TaskQueue.NewTask(id: String(format: "task-%04d", $0), kind: "step", payload: "{\"n\":\($0)}", runAt: runAt) }, now: Self.start, on: db)
        }
    }

    @Test("workers claiming at once take every task exactly once, in batches of at most their free slots", arguments: TestBackend.all)
    func concurrentClaims(backend: TestBackend) async throws {
        try await self.withQueue(backend) { queue in
            try await self.enqueue(queue, 200)
            let claimed = try await withThrowingTaskGroup(of: [TaskQueue.Claim].self) { group in
                for worker in 0 ..< 6 {
                    group.addTask {
                        var mine: [TaskQueue.Claim] = []
                        while true {
                            let batch = try await queue.claim(owner: "worker-\(worker)", limit: 7, leaseMicros: 60 * Self.second, now: Self.start)
                            guard !batch.isEmpty else { return mine }
                            #expect(batch.count <= 7)
                            mine += batch
                            // Finish them, each in a transaction of its own, as a worker would.
                            for claim in batch {
                                let done = try await queue.store.transaction { try await queue.complete(claim, on: $0) }
                                #expect(done)
                            }
                        }
                    }
                }
                return try await group.reduce(into: []) { $0 += $1 }
            }
            #expect(claimed.count == 200)
            #expect(Set(claimed.map(\.id)).count == 200, "a task was claimed twice")
            #expect(claimed.allSatisfy { $0.claims == 1 && $0.version == 1 })
            #expect(try await queue.count() == 0)
        }
    }

    @Test("an expired lease is claimed again with a new version; the old holder's heartbeat, completion and release are refused", arguments: TestBackend.all)
    func fencing(backend: TestBackend) async throws {
        try await self.withQueue(backend) { queue in
            try await self.enqueue(queue, 1)
            let first = try #require(try await queue.claim(owner: "a", limit: 10, leaseMicros: Self.second, now: Self.start).first)
            #expect(first.version == 1 && first.leaseUntil == Self.start + Self.second)
            #expect(first.payload == "{\"n\":0}")
            // Leased: nobody else gets it.
            #expect(try await queue.claim(owner: "b", limit: 10, leaseMicros: Self.second, now: Self.start + Self.second / 2).isEmpty)
            // A heartbeat keeps it past its first expiry.
            #expect(try await queue.heartbeat(first, until: Self.start + 2 * Self.second))
            #expect(try await queue.claim(owner: "b", limit: 10, leaseMicros: Self.second, now: Self.start + 3 * Self.second / 2).isEmpty)

            // a stops heartbeating; past the lease, b claims it.
            let second = try #require(try await queue.claim(owner: "b", limit: 10, leaseMicros: Self.second, now: Self.start + 2 * Self.second).first)
            #expect(second.id == first.id && second.version == 2 && second.claims == 2)
            // a comes back: everything it tries is refused, and b's lease stands.
            #expect(try await queue.heartbeat(first, until: Self.start + 10 * Self.second) == false)
            #expect(try await queue.store.transaction { try await queue.complete(first, on: $0) } == false)
            #expect(try await queue.release(first, runAt: Self.start) == false)
            #expect(try await queue.claim(owner: "c", limit: 10, leaseMicros: Self.second, now: Self.start + 5 * Self.second / 2).isEmpty)
            #expect(try await queue.store.transaction { try await queue.complete(second, on: $0) })
            #expect(try await queue.count() == 0)
        }
    }

    @Test("a task added claimed is its worker's until its lease expires, then anyone's, fenced like a claimed one; rolled back, it is not there", arguments: TestBackend.all)
    func addedClaimed(backend: TestBackend) async throws {
        try await self.withQueue(backend) { queue in
            let task = TaskQueue.NewTask(id: "task-eager", kind: "step", payload: "{\"n\":1}", runAt: Self.start)
            // Added in a transaction that rolls back: no task, so no worker could hold a ghost lease.
            struct Abort: Error {}
            await #expect(throws: Abort.self) {
                try await queue.store.transaction { db in
                    try await queue.enqueue([], claimed: [(task, "a", Self.start + Self.second)], now: Self.start, on: db)
                    throw Abort()
                }
            }
            #expect(try await queue.count() == 0)

            let mine = try #require(try await queue.store.transaction {
                try await queue.enqueue([], claimed: [(task, "a", Self.start + Self.second)], now: Self.start, on: $0)
            }.first)
            #expect(mine.id == task.id && mine.version == 1 && mine.claims == 1 && mine.leaseUntil == Self.start + Self.second && mine.payload == task.payload)
            // Leased to a: no claim takes it, and a's heartbeat keeps it.
            #expect(try await queue.claim(owner: "b", limit: 10, leaseMicros: Self.second, now: Self.start).isEmpty)
            #expect(try await queue.heartbeat(mine, until: Self.start + 2 * Self.second))
            #expect(try await queue.claim(owner: "b", limit: 10, leaseMicros: Self.second, now: Self.start + 3 * Self.second / 2).isEmpty)
            // a stops: past the lease b claims it with the next version, and a is refused.
            let taken = try #require(try await queue.claim(owner: "b", limit: 10, leaseMicros: Self.second, now: Self.start + 2 * Self.second).first)
            #expect(taken.id == task.id && taken.version == 2 && taken.claims == 2 && taken.payload == task.payload)
            #expect(try await queue.store.transaction { try await queue.complete(mine, on: $0) } == false)
            #expect(try await queue.heartbeat(mine, until: Self.start + 10 * Self.second) == false)
            #expect(try await queue.store.transaction { try await queue.complete(taken, on: $0) })
            #expect(try await queue.count() == 0)
        }
    }

    @Test("tasks wait until they are due; a released task is claimed again; a completion rolled back with its transaction keeps the task", arguments: TestBackend.all)
    func dueReleaseAndRollback(backend: TestBackend) async throws {
        try await self.withQueue(backend) { queue in
            try await self.enqueue(queue, 3, runAt: Self.start + 10 * Self.second)
            #expect(try await queue.claim(owner: "a", limit: 10, leaseMicros: Self.second, now: Self.start).isEmpty)
            let due = try await queue.claim(owner: "a", limit: 2, leaseMicros: Self.second, now: Self.start + 10 * Self.second)
            #expect(due.map(\.id) == ["task-0000", "task-0001"])

            // Drained at shutdown: handed back, due again at once.
            #expect(try await queue.release(due[0], runAt: Self.start + 10 * Self.second))
            let again = try await queue.claim(owner: "b", limit: 10, leaseMicros: Self.second, now: Self.start + 21 * Self.second / 2)
            #expect(Set(again.map(\.id)) == ["task-0000", "task-0002"])
            #expect(again.first { $0.id == "task-0000" }?.version == 2)

            // The step's result failed to commit: the completion goes with it.
            struct Abort: Error {}
            let claim = try #require(again.first)
            await #expect(throws: Abort.self) {
                try await queue.store.transaction { db in
                    #expect(try await queue.complete(claim, on: db))
                    throw Abort()
                }
            }
            #expect(try await queue.count() == 3)
            #expect(try await queue.store.transaction { try await queue.complete(claim, on: $0) })
            #expect(try await queue.count() == 2)

            // An id added twice is refused, and the first task is unchanged.
            await #expect(throws: (any Error).self) {
                try await queue.store.transaction { db in
                    try await queue.enqueue([TaskQueue.NewTask(id: "task-0001", kind: "other", payload: "{}", runAt: Self.start)], now: Self.start, on: db)
                }
            }
            #expect(try await queue.count() == 2)
        }
    }
}
