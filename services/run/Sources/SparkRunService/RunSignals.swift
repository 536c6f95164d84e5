import Foundation
import Logging
import ServiceLifecycle
import SparkKit
import Synchronization

/// What one commit tells the rest of this process at once: workers wake for new tasks, watchers
/// of a project get its new events, and attempts stopped by a cancel or a timeout are cancelled
/// where they run. Other replicas learn the same through Redis (``RunRelay``, with the events
/// themselves) or PostgreSQL notifications (``RunListener``, a nudge to read the store), and in
/// the end through the store itself: workers claim every `run.claimIntervalMilliseconds`, and
/// watchers read the events table every `run.watchIntervalMilliseconds`.
final class RunSignals: Sendable {
    private struct State {
        var wake: [UInt64: Waker] = [:]
        var watchers: [UInt64: (projectID: String, continuation: AsyncStream<[EventRow]>.Continuation)] = [:]
        var calls: [String: @Sendable () -> Void] = [:]
        var nextID: UInt64 = 0
    }

    private let state = Mutex(State())

    /// A waker that is signalled when tasks may have been added; signals that come while no one
    /// waits coalesce into one.
    func waker() -> (waker: Waker, cancel: @Sendable () -> Void) {
        let waker = Waker()
        let id = self.state.withLock { state in
            state.nextID += 1
            state.wake[state.nextID] = waker
            return state.nextID
        }
        return (waker, { [weak self] in
            _ = self?.state.withLock { $0.wake.removeValue(forKey: id) }
            waker.signal()
        })
    }

    func tasksAdded() {
        for waker in self.state.withLock({ Array($0.wake.values) }) { waker.signal() }
    }

    /// The events of `projectID` as they commit, each commit's events in sequence order; an
    /// empty batch means "read the store" (another replica committed, or messages may have been
    /// missed). Batches from several replicas may come out of order or not at all: a watcher
    /// keeps its place by sequence number. `poke` adds an empty batch.
    func watch(projectID: String) -> (stream: AsyncStream<[EventRow]>, poke: @Sendable () -> Void, cancel: @Sendable () -> Void) {
        let (stream, continuation) = AsyncStream<[EventRow]>.makeStream(bufferingPolicy: .bufferingNewest(1024))
        let id = self.state.withLock { state in
            state.nextID += 1
            state.watchers[state.nextID] = (projectID, continuation)
            return state.nextID
        }
        return (stream, { continuation.yield([]) }, { [weak self] in
            let watcher = self?.state.withLock { $0.watchers.removeValue(forKey: id) }
            watcher?.continuation.finish()
        })
    }

    /// Every watcher reads the store, and every worker claims: after a time when commits of other
    /// replicas may have gone unheard.
    func catchUp() {
        let watchers = self.state.withLock { $0.watchers.values.map(\.continuation) }
        for watcher in watchers { watcher.yield([]) }
        self.tasksAdded()
    }

    func published(_ events: [EventRow], projectID: String) {
        let watchers = self.state.withLock { $0.watchers.values.filter { $0.projectID == projectID }.map(\.continuation) }
        for watcher in watchers { watcher.yield(events) }
    }

    /// Registers how to stop the attempt `run/step/attempt` while it runs here.
    func running(attempt key: String, cancel: @escaping @Sendable () -> Void) {
        self.state.withLock { $0.calls[key] = cancel }
    }

    func finished(attempt key: String) {
        _ = self.state.withLock { $0.calls.removeValue(forKey: key) }
    }

    func cancel(attempt key: String) {
        self.state.withLock { $0.calls.removeValue(forKey: key) }?()
    }
}

/// One waiter's wake-up: ``wait(atMost:)`` returns when signalled (or was signalled since it last
/// returned), when the time is up, or when the task is cancelled.
final class Waker: Sendable {
    private struct State {
        var pending = false
        var continuation: CheckedContinuation<Void, Never>?
    }

    private let state = Mutex(State())

    func signal() {
        let continuation = self.state.withLock { state -> CheckedContinuation<Void, Never>? in
            if let continuation = state.continuation {
                state.continuation = nil
                return continuation
            }
            state.pending = true
            return nil
        }
        continuation?.resume()
    }

    func wait(atMost timeout: Duration) async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                await withTaskCancellationHandler {
                    await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                        let now = self.state.withLock { state -> Bool in
                            if state.pending || Task.isCancelled {
                                state.pending = false
                                return true
                            }
                            state.continuation = continuation
                            return false
                        }
                        if now { continuation.resume() }
                    }
                } onCancel: {
                    self.signal()
                }
            }
            group.addTask {
                try? await Task.sleep(for: timeout)
                if !Task.isCancelled { self.signal() }
            }
            await group.next()
            group.cancelAll()
        }
    }
}

/// Wakes this replica for what other replicas commit on PostgreSQL: each transition that queues
/// tasks or appends events notifies `sparkops_run` (`t`, `e` or `te`, then `:` and the project),
/// and this listener turns that into the same signals a commit in this process gives.
struct RunListener: Service {
    static let channel = "sparkops_run"

    let store: RunStore
    let signals: RunSignals
    let logger: Logger

    func run() async throws {
        // One SQLite process has no other replica to hear from; it waits to stop, as every part
        // of a service does (a part that returns would stop the service).
        guard self.store.store.dialect == .postgres else {
            try? await gracefulShutdown()
            return
        }
        await cancelWhenGracefulShutdown {
            var failing = false
            while !Task.isCancelled {
                do {
                    try await self.store.store.listen(Self.channel) { payload in
                        let (kinds, project) = (payload.prefix { $0 != ":" }, payload.drop { $0 != ":" }.dropFirst())
                        if kinds.contains("t") { self.signals.tasksAdded() }
                        if kinds.contains("e") { self.signals.published([], projectID: String(project)) }
                    }
                } catch {
                    if !failing, !Task.isCancelled {
                        self.logger.warning("not listening for other replicas' commits; retrying", metadata: ["error": "\(String(reflecting: error).prefix(500))"])
                    }
                    failing = true
                }
                try? await Task.sleep(for: .seconds(1))
            }
        }
    }
}
