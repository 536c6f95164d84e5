import Foundation
public import GRPCCore
import SQLKit
import ServiceLifecycle
import SparkKit
public import SparkProto
import SwiftProtobuf

extension RunService {
    public func listRunEvents(
        request: ServerRequest<Sparkops_Run_V1_ListRunEventsRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Run_V1_ListRunEventsResponse> {
        let message = request.message
        try await self.access.require(request.metadata, projectID: message.projectID, permission: "run.read")
        try Self.validateEvents(runID: message.runID, after: message.afterSequence)
        guard message.pageSize >= 0 && message.pageSize <= 1000 else { throw SparkError.invalid("page_size", "must be between 0 and 1000") }
        let limit = message.pageSize == 0 ? 100 : Int(message.pageSize)
        let (events, last) = try await self.store.store.sql { db in
            (
                try await self.store.events(projectID: message.projectID, runID: message.runID, after: message.afterSequence, limit: limit, on: db),
                try await self.store.lastSequence(projectID: message.projectID, on: db)
            )
        }
        return ServerResponse(message: .with {
            $0.events = events.map(Self.message)
            $0.lastSequence = last
        })
    }

    /// The stored events after `after_sequence`, then each new one, in sequence order, each
    /// once. Commits here (and, with Redis, on other replicas) hand their events to the stream as
    /// they commit; otherwise, or when a batch is missing, the stream reads the store: at a
    /// PostgreSQL notification, and at least every `run.watchIntervalMilliseconds`.
    public func watchEvents(
        request: ServerRequest<Sparkops_Run_V1_WatchEventsRequest>,
        context: ServerContext
    ) async throws -> StreamingServerResponse<Sparkops_Run_V1_RunEvent> {
        let message = request.message
        try await self.access.require(request.metadata, projectID: message.projectID, permission: "run.read")
        try Self.validateEvents(runID: message.runID, after: message.afterSequence)
        let interval = self.settings.watchInterval
        return StreamingServerResponse { writer in
            let (batches, poke, stop) = self.engine.signals.watch(projectID: message.projectID)
            defer { stop() }
            // Every event of the project up to `cursor` has been sent or passed over. Sequence
            // numbers commit in order, so whatever the store says is the last is all there.
            var cursor = message.afterSequence
            func send(_ events: [EventRow]) async throws {
                for event in events where event.sequence > cursor && (message.runID.isEmpty || event.runID == message.runID) {
                    try await writer.write(Self.message(event))
                }
            }
            func readStore() async throws {
                let last = try await self.store.store.sql { try await self.store.lastSequence(projectID: message.projectID, on: $0) }
                while cursor < last {
                    let through = cursor
                    let page = try await self.store.store.sql {
                        try await self.store.events(projectID: message.projectID, runID: message.runID, after: through, through: last, limit: 500, on: $0)
                    }
                    try await send(page)
                    cursor = page.count < 500 ? last : page.last?.sequence ?? last
                }
            }
            // At a graceful shutdown the stream ends at once (with OK): the replica need not wait
            // for its watchers, and a watcher resumes on another replica after its last sequence.
            try await withGracefulShutdownHandler {
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask {
                        while !Task.isCancelled {
                            try await Task.sleep(for: interval)
                            poke()
                        }
                    }
                    poke()
                    for await batch in batches {
                        if let first = batch.first, let end = batch.last?.sequence, first.sequence <= cursor + 1 {
                            try await send(batch)
                            cursor = max(cursor, end)
                        } else {
                            try await readStore()
                        }
                    }
                    group.cancelAll()
                }
            } onGracefulShutdown: {
                stop()
            }
            return [:]
        }
    }

    static func validateEvents(runID: String, after: Int64) throws {
        guard runID.isEmpty || SparkID.isValid(runID, prefix: "run") else { throw SparkError.invalid("run_id", "is not a run_… id") }
        guard after >= 0 else { throw SparkError.invalid("after_sequence", "must be 0 or more") }
    }
}
