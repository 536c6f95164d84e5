import Foundation
import Logging
import Metrics
import ServiceLifecycle
import SparkKit
import SparkProto
import SwiftProtobuf
import Synchronization

/// Shares each commit with every other replica through Redis, when `redis.url` is set: the
/// events themselves (so a watcher anywhere sends them without reading the store) and whether
/// tasks were queued (so idle workers anywhere wake). Redis is a fast path, never the record:
/// a message lost while Redis is away is caught up from the store, by each watcher's periodic
/// read and by a read of every watcher when the subscription holds again.
///
/// A message on `<redis.keyPrefix>:run` is `<replica>|<kinds>|<project>|` followed by a
/// `ListRunEventsResponse` holding the commit's events; `kinds` is `t`, `e` or `te` as in the
/// PostgreSQL notification. A replica skips its own messages.
final class RunRelay: Service, Sendable {
    let redis: RedisClient
    let channel: String
    let replica = UUID().uuidString.lowercased()
    private let signals: RunSignals
    private let logger: Logger
    private let outbox: AsyncStream<[UInt8]>
    private let post: AsyncStream<[UInt8]>.Continuation

    init(redis: RedisClient, prefix: String, signals: RunSignals, logger: Logger) {
        self.redis = redis
        self.channel = "\(prefix):run"
        self.signals = signals
        self.logger = logger
        // A commit never waits for Redis: messages queue here (the newest 4,096 if Redis is slow;
        // a watcher that misses one sees the gap and reads the store).
        (self.outbox, self.post) = AsyncStream<[UInt8]>.makeStream(bufferingPolicy: .bufferingNewest(4096))
    }

    /// Queues the commit's message.
    func publish(_ committed: RunEngine.Committed) {
        guard committed.enqueued || !committed.events.isEmpty else { return }
        let kinds = (committed.enqueued ? "t" : "") + (committed.events.isEmpty ? "" : "e")
        var payload = Array("\(self.replica)|\(kinds)|\(committed.projectID)|".utf8)
        let events = Sparkops_Run_V1_ListRunEventsResponse.with { $0.events = committed.events.map(RunService.message) }
        if let bytes: [UInt8] = try? events.serializedBytes() { payload += bytes }
        self.post.yield(payload)
    }

    /// What one message means here; nil for this replica's own messages and for what is not ours.
    static func decode(_ payload: [UInt8], skipping replica: String) -> (tasks: Bool, projectID: String, events: [EventRow])? {
        var fields: [ArraySlice<UInt8>] = []
        var rest = payload[...]
        for _ in 0 ..< 3 {
            guard let bar = rest.firstIndex(of: UInt8(ascii: "|")) else { return nil }
            fields.append(rest[..<bar])
            rest = rest[(bar + 1)...]
        }
        let (sender, kinds, project) = (String(decoding: fields[0], as: UTF8.self), String(decoding: fields[1], as: UTF8.self), String(decoding: fields[2], as: UTF8.self))
        guard sender != replica, !project.isEmpty else { return nil }
        var events: [EventRow] = []
        if kinds.contains("e") {
            guard let message = try? Sparkops_Run_V1_ListRunEventsResponse(serializedBytes: Array(rest)) else { return nil }
            events = message.events.map(EventRow.init)
        }
        return (kinds.contains("t"), project, events)
    }

    func run() async throws {
        await cancelWhenGracefulShutdown {
            await withTaskGroup(of: Void.self) { group in
                group.addTask { await self.sendMessages() }
                group.addTask { await self.receiveMessages() }
                await group.waitForAll()
            }
        }
    }

    private func sendMessages() async {
        var failing = false
        for await payload in self.outbox {
            do {
                try await self.redis.publish(payload, on: self.channel)
                Counter(label: "sparkops_run_relay_messages_total", dimensions: [("direction", "published")]).increment()
                if failing { self.logger.info("publishing commits on Redis again") }
                failing = false
            } catch {
                if !failing { self.logger.warning("cannot publish commits on Redis; other replicas read them from the store", metadata: ["error": "\(error)"]) }
                failing = true
            }
        }
    }

    private func receiveMessages() async {
        let failures = Atomic<Int>(0)
        while !Task.isCancelled {
            do {
                try await self.redis.subscribe(to: [self.channel]) {
                    if failures.exchange(0, ordering: .relaxed) > 0 { self.logger.info("subscribed to other replicas' commits on Redis again") }
                    // What was published while not subscribed is read from the store.
                    self.signals.catchUp()
                } message: { _, payload in
                    guard let (tasks, project, events) = Self.decode(payload, skipping: self.replica) else { return }
                    Counter(label: "sparkops_run_relay_messages_total", dimensions: [("direction", "received")]).increment()
                    if tasks { self.signals.tasksAdded() }
                    if !events.isEmpty { self.signals.published(events, projectID: project) }
                }
            } catch {
                if failures.add(1, ordering: .relaxed).oldValue == 0, !Task.isCancelled {
                    self.logger.warning("not subscribed to other replicas' commits on Redis; retrying", metadata: ["error": "\(error)"])
                }
            }
            try? await Task.sleep(for: .milliseconds(min(5000, 100 << min(failures.load(ordering: .relaxed), 6))))
        }
    }
}

extension EventRow {
    init(_ message: Sparkops_Run_V1_RunEvent) {
        self.init(
            projectID: message.projectID, sequence: message.sequence, runID: message.runID, workflowName: message.workflowName,
            kind: message.kind, stepID: message.stepID, attempt: Int(message.attempt), message: message.message,
            createdAt: message.time.microseconds
        )
    }
}
