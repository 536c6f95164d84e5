public import GRPCCore
import SwiftProtobuf
public import SparkProto
import Synchronization

/// `sparkops.health.v1.Health` for one server: a status per service name ("" for the server as a
/// whole) that the host updates as it starts, becomes ready and shuts down.
public final class HealthService: Sparkops_Health_V1_Health.SimpleServiceProtocol {
    public typealias ServingStatus = Sparkops_Health_V1_HealthCheckResponse.ServingStatus

    private struct State {
        var statuses: [String: ServingStatus] = ["": .serving]
        var watchers: [UInt64: (service: String, continuation: AsyncStream<ServingStatus>.Continuation)] = [:]
        var nextWatcher: UInt64 = 0
    }

    private let state = Mutex(State())

    public init() {}

    /// Sets the status of `service` and tells every watcher of it.
    public func setStatus(_ status: ServingStatus, forService service: String = "") {
        let watchers = self.state.withLock { state in
            state.statuses[service] = status
            return state.watchers.values.filter { $0.service == service }.map(\.continuation)
        }
        for watcher in watchers { watcher.yield(status) }
    }

    /// NOT_SERVING for every service, as a server does when it starts shutting down.
    public func markAllNotServing() {
        let services = self.state.withLock { Array($0.statuses.keys) }
        for service in services { self.setStatus(.notServing, forService: service) }
    }

    public func check(
        request: Sparkops_Health_V1_HealthCheckRequest,
        context: ServerContext
    ) async throws -> Sparkops_Health_V1_HealthCheckResponse {
        guard let status = self.state.withLock({ $0.statuses[request.service] }) else {
            throw RPCError(code: .notFound, message: "unknown service \(request.service.debugDescription)")
        }
        return .with { $0.status = status }
    }

    public func watch(
        request: Sparkops_Health_V1_HealthCheckRequest,
        response: RPCWriter<Sparkops_Health_V1_HealthCheckResponse>,
        context: ServerContext
    ) async throws {
        let (stream, continuation) = AsyncStream.makeStream(of: ServingStatus.self, bufferingPolicy: .bufferingNewest(16))
        let id = self.state.withLock { state in
            defer { state.nextWatcher += 1 }
            state.watchers[state.nextWatcher] = (request.service, continuation)
            continuation.yield(state.statuses[request.service] ?? .serviceUnknown)
            return state.nextWatcher
        }
        defer { _ = self.state.withLock { $0.watchers.removeValue(forKey: id) } }
        try await withTaskCancellationHandler {
            var last: ServingStatus?
            for await status in stream where status != last {
                last = status
                try await response.write(.with { $0.status = status })
            }
        } onCancel: {
            continuation.finish()
        }
    }
}
