public import Logging
public import ServiceLifecycle

/// Background upkeep that runs every `interval` until graceful shutdown: pruning old rows,
/// expiring what was forgotten. A failing round is logged and the next one comes as planned.
///
/// ```swift
/// PeriodicJob("prune old keys", every: .seconds(600), logger: logger) { try await store.prune() }
/// ```
public struct PeriodicJob: ServiceLifecycle.Service {
    let name: String
    let interval: Duration
    let logger: Logger
    let body: @Sendable () async throws -> Void

    public init(_ name: String, every interval: Duration, logger: Logger, _ body: @escaping @Sendable () async throws -> Void) {
        self.name = name
        self.interval = interval
        self.logger = logger
        self.body = body
    }

    public func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                try? await Task.sleep(for: self.interval)
                guard !Task.isCancelled else { return }
                do {
                    try await self.body()
                } catch {
                    self.logger.warning("could not \(self.name)", metadata: ["error": "\(String(reflecting: error).prefix(1000))"])
                }
            }
        }
    }
}
