import DequeModule
import Logging
import NIOCore
import NIOPosix
import SQLiteKit
import SQLiteNIO
import Synchronization

/// A few connections to one SQLite file, each used by one task at a time.
///
/// The file is in WAL mode, so readers do not block the writer; transactions begin IMMEDIATE so that
/// concurrent writers queue on SQLite's lock (with a busy timeout) instead of failing to upgrade.
/// A connection waiting on that lock blocks a thread, so the pool has threads of its own, one per
/// connection: the connection holding the lock always has a thread to finish on.
final class SQLitePool: Sendable {
    private struct State {
        var idle: [SQLiteConnection] = []
        var open = 0
        var waiters = Deque<CheckedContinuation<SQLiteConnection, any Error>>()
        var closed = false
    }

    private let path: String
    private let maximum: Int
    private let logger: Logger
    private let state = Mutex(State())
    private let threadPool: NIOThreadPool

    init(path: String, maximum: Int = 4, logger: Logger) {
        self.path = path
        self.maximum = maximum
        self.logger = logger
        self.threadPool = NIOThreadPool(numberOfThreads: maximum)
        self.threadPool.start()
    }

    func withConnection<T>(_ body: (SQLiteConnection) async throws -> T) async throws -> T {
        let connection = try await self.acquire()
        do {
            let result = try await body(connection)
            self.release(connection)
            return result
        } catch {
            self.release(connection)
            throw error
        }
    }

    private func acquire() async throws -> SQLiteConnection {
        enum Next { case use(SQLiteConnection), open, wait, closed }
        let next = self.state.withLock { state -> Next in
            if state.closed { return .closed }
            if let connection = state.idle.popLast() { return .use(connection) }
            if state.open < self.maximum {
                state.open += 1
                return .open
            }
            return .wait
        }
        switch next {
        case .use(let connection):
            return connection
        case .closed:
            throw SparkStoreError("the store is closed")
        case .open:
            do {
                return try await self.openConnection()
            } catch {
                self.state.withLock { $0.open -= 1 }
                throw error
            }
        case .wait:
            return try await withCheckedThrowingContinuation { continuation in
                let immediate: SQLiteConnection? = self.state.withLock { state in
                    if let connection = state.idle.popLast() { return connection }
                    state.waiters.append(continuation)
                    return nil
                }
                if let immediate { continuation.resume(returning: immediate) }
            }
        }
    }

    private func release(_ connection: SQLiteConnection) {
        let (waiter, closed) = self.state.withLock { state -> (CheckedContinuation<SQLiteConnection, any Error>?, Bool) in
            if let waiter = state.waiters.popFirst() { return (waiter, false) }
            // Returned after the pool closed: closed here, not kept.
            if state.closed { return (nil, true) }
            state.idle.append(connection)
            return (nil, false)
        }
        if closed {
            connection.close().whenComplete { _ in self.state.withLock { $0.open -= 1 } }
            return
        }
        waiter?.resume(returning: connection)
    }

    private func openConnection() async throws -> SQLiteConnection {
        let connection = try await SQLiteConnection.open(
            storage: .file(path: self.path),
            threadPool: self.threadPool,
            logger: self.logger,
            on: MultiThreadedEventLoopGroup.singleton.any()
        ).get()
        let sql = connection.sql()
        do {
            for pragma in ["PRAGMA journal_mode = WAL", "PRAGMA busy_timeout = 10000", "PRAGMA foreign_keys = ON", "PRAGMA synchronous = NORMAL"] {
                try await sql.raw(SQLQueryString(pragma)).run()
            }
        } catch {
            // A connection is closed before it is dropped, whatever stopped its setup.
            try? await connection.close().get()
            throw error
        }
        return connection
    }

    func close() async {
        let (connections, waiters) = self.state.withLock { state in
            state.closed = true
            defer {
                state.idle.removeAll()
                state.waiters.removeAll()
            }
            return (state.idle, Array(state.waiters))
        }
        for waiter in waiters { waiter.resume(throwing: SparkStoreError("the store is closed")) }
        for connection in connections { try? await connection.close().get() }
        self.state.withLock { $0.open -= connections.count }
        // Connections still leased are closed as they come back (bounded): SQLite handles must be
        // closed on the thread pool before it stops.
        let deadline = ContinuousClock.now + .seconds(10)
        while self.state.withLock({ $0.open }) > 0 && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(10))
        }
        try? await self.threadPool.shutdownGracefully()
    }
}
