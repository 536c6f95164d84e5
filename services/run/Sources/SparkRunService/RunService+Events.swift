import Foundation
public import GRPCCore
import SQLKit
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

    /// The stored events after `after_sequence`, then each new one. The store is what is sent:
    /// a commit here wakes the stream at once, and the store is read again every
    /// `run.watchIntervalMilliseconds` for what other replicas committed, so that nothing is
    /// missed and nothing is sent twice or out of order.
    public func watchEvents(
        request: ServerRequest<Sparkops_Run_V1_WatchEventsRequest>,
        context: ServerContext
    ) async throws -> StreamingServerResponse<Sparkops_Run_V1_RunEvent> {
        let message = request.message
        try await self.access.require(request.metadata, projectID: message.projectID, permission: "run.read")
        try Self.validateEvents(runID: message.runID, after: message.afterSequence)
        let interval = self.settings.watchInterval
        return StreamingServerResponse { writer in
            let (wakeUps, stop) = self.engine.signals.watch(projectID: message.projectID)
            defer { stop() }
            var last = message.afterSequence
            try await withThrowingTaskGroup(of: Void.self) { group in
                // A tick wakes the loop below as a commit here would.
                let (ticks, tick) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
                group.addTask {
                    while !Task.isCancelled {
                        try await Task.sleep(for: interval)
                        tick.yield()
                    }
                }
                group.addTask {
                    for await _ in wakeUps { tick.yield() }
                }
                tick.yield()
                for await _ in ticks {
                    while true {
                        let events = try await self.store.store.sql {
                            try await self.store.events(projectID: message.projectID, runID: message.runID, after: last, limit: 500, on: $0)
                        }
                        for event in events { try await writer.write(Self.message(event)) }
                        last = events.last?.sequence ?? last
                        if events.count < 500 { break }
                    }
                }
                group.cancelAll()
            }
            return [:]
        }
    }

    static func validateEvents(runID: String, after: Int64) throws {
        guard runID.isEmpty || SparkID.isValid(runID, prefix: "run") else { throw SparkError.invalid("run_id", "is not a run_… id") }
        guard after >= 0 else { throw SparkError.invalid("after_sequence", "must be 0 or more") }
    }
}
