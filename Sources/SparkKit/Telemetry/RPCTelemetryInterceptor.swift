public import GRPCCore
public import Logging
import Metrics
import Foundation
import Synchronization

/// Counts and times every RPC a service serves, by method and status
/// (`sparkops_rpc_server_calls_total{service,method,code}`,
/// `sparkops_rpc_server_duration_seconds{service,method}`), and logs failures with the call's
/// request and trace ids (`x-request-id` and W3C `traceparent` metadata).
public struct RPCTelemetryInterceptor: ServerInterceptor {
    public let service: String
    private let logger: Logger
    private let metrics: RPCMetricsCache

    public init(service: String, logger: Logger) {
        self.service = service
        self.logger = logger
        self.metrics = RPCMetricsCache(service: service)
    }

    public func intercept<Input: Sendable, Output: Sendable>(
        request: StreamingServerRequest<Input>,
        context: ServerContext,
        next: @Sendable (StreamingServerRequest<Input>, ServerContext) async throws -> StreamingServerResponse<Output>
    ) async throws -> StreamingServerResponse<Output> {
        let method = context.descriptor.method
        let started = ContinuousClock.now
        func record(_ code: String) {
            let metrics = self.metrics.metrics(method: method, code: code)
            metrics.calls.increment()
            metrics.duration.recordInterval(since: started)
        }
        do {
            let response = try await next(request, context)
            // Unary and server-streaming responses complete later; record acceptance here.
            switch response.accepted {
            case .success: record("OK")
            case .failure(let error): record("\(error.code)")
            }
            return response
        } catch let error as RPCError {
            record("\(error.code)")
            if error.code == .internalError || error.code == .unknown {
                var logger = self.logger
                logger[metadataKey: "request_id"] = "\(request.metadata[stringValues: "x-request-id"].first(where: { _ in true }) ?? "")"
                logger[metadataKey: "trace_id"] = "\(Self.traceID(request.metadata) ?? "")"
                logger.error("rpc failed", metadata: ["method": "\(method)", "code": "\(error.code)", "error": "\(error.message)"])
            }
            throw error
        } catch let error as any (RPCErrorConvertible & Error) {
            record("\(error.rpcErrorCode)")
            throw error
        } catch where SparkStore.isUnavailable(error) {
            // The service's database is down or restarting: the caller may send the call again.
            record("unavailable")
            self.logger.warning("rpc failed: the database is unavailable", metadata: ["method": "\(method)", "error": "\(String(reflecting: error).prefix(500))"])
            throw RPCError(code: .unavailable, message: "the service's database is unavailable; try again")
        } catch {
            // Not an RPC error: the caller sees UNKNOWN and nothing else, so the log says what it was.
            record("unknown")
            var logger = self.logger
            logger[metadataKey: "request_id"] = "\(request.metadata[stringValues: "x-request-id"].first(where: { _ in true }) ?? "")"
            logger[metadataKey: "trace_id"] = "\(Self.traceID(request.metadata) ?? "")"
            logger.error("rpc failed", metadata: ["method": "\(method)", "code": "unknown", "error": "\(String(reflecting: error).prefix(2000))"])
            throw error
        }
    }

    /// The trace id of a W3C `traceparent` (`00-<trace id>-<span id>-<flags>`).
    static func traceID(_ metadata: Metadata) -> String? {
        guard let parent = metadata[stringValues: "traceparent"].first(where: { _ in true }) else { return nil }
        let parts = parent.split(separator: "-")
        return parts.count == 4 ? String(parts[1]) : nil
    }
}

/// The counter and timer of each method and status, made once: asking the metrics factory for
/// them on every call (a registry lookup under a lock, label arrays built each time) cost a
/// tenth of a small RPC's time.
final class RPCMetricsCache: Sendable {
    struct Handles: Sendable {
        let calls: Counter
        let duration: Metrics.Timer
    }

    private struct Key: Hashable {
        let method: String
        let code: String
    }

    private let service: String
    private let cache = Mutex<[Key: Handles]>([:])

    init(service: String) {
        self.service = service
    }

    func metrics(method: String, code: String) -> Handles {
        let key = Key(method: method, code: code)
        if let cached = self.cache.withLock({ $0[key] }) { return cached }
        let made = Handles(
            calls: Counter(label: "sparkops_rpc_server_calls_total", dimensions: [("service", self.service), ("method", method), ("code", code)]),
            duration: Metrics.Timer(
                label: "sparkops_rpc_server_duration_seconds",
                dimensions: [("service", self.service), ("method", method)],
                preferredDisplayUnit: .seconds
            )
        )
        return self.cache.withLock { cache in
            if let raced = cache[key] { return raced }
            cache[key] = made
            return made
        }
    }
}

extension Metrics.Timer {
    func recordInterval(since start: ContinuousClock.Instant) {
        let (seconds, attoseconds) = (ContinuousClock.now - start).components
        self.recordNanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
    }
}
