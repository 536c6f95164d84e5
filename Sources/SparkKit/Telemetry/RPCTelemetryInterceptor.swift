public import GRPCCore
public import Logging
public import SparkWire
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
        let started = ContinuousClock.now
        let method = context.descriptor.method
        let response: StreamingServerResponse<Output>
        do {
            response = try await next(request, context)
        } catch {
            throw self.failed(error, method: method, metadata: request.metadata, since: started)
        }
        // Unary and server-streaming responses complete later; record acceptance here.
        switch response.accepted {
        case .success:
            self.record(method: method, code: "OK", since: started)
            return response
        case .failure(let error):
            // GRPCCore hands a handler's own error to the interceptor outside as a failed response
            // (UNKNOWN, the error as its cause), so it is examined here too.
            let answered = self.failed(error, method: method, metadata: request.metadata, since: started)
            return StreamingServerResponse(error: (answered as? RPCError) ?? RPCError(code: .unknown, message: "", cause: answered))
        }
    }

    private func record(method: String, code: String, since started: ContinuousClock.Instant) {
        let metrics = self.metrics.metrics(method: method, code: code)
        metrics.calls.increment()
        metrics.duration.recordInterval(since: started)
    }

    /// Records a failed call and returns the error its caller gets: a store that is down or
    /// restarting becomes UNAVAILABLE (the caller may send the call again); an error that is not an
    /// RPC error is logged, since the caller sees only UNKNOWN.
    private func failed(_ error: any Error, method: String, metadata: Metadata, since started: ContinuousClock.Instant) -> any Error {
        var underlying = error
        if let wrapped = error as? RPCError, wrapped.code == .unknown, let cause = wrapped.cause {
            underlying = cause
        }
        func logger() -> Logger {
            var logger = self.logger
            logger[metadataKey: "request_id"] = "\(metadata[stringValues: "x-request-id"].first(where: { _ in true }) ?? "")"
            logger[metadataKey: "trace_id"] = "\(Self.traceID(metadata) ?? "")"
            return logger
        }
        switch underlying {
        case let rpcError as RPCError:
            self.record(method: method, code: "\(rpcError.code)", since: started)
            if rpcError.code == .internalError || rpcError.code == .unknown {
                logger().error("rpc failed", metadata: ["method": "\(method)", "code": "\(rpcError.code)", "error": "\(rpcError.message)"])
            }
            return error
        case let convertible as any (RPCErrorConvertible & Error):
            self.record(method: method, code: "\(convertible.rpcErrorCode)", since: started)
            return convertible
        case _ where SparkStore.isUnavailable(underlying):
            self.record(method: method, code: "unavailable", since: started)
            self.logger.warning("rpc failed: the database is unavailable", metadata: ["method": "\(method)", "error": "\(String(reflecting: underlying).prefix(500))"])
            return RPCError(code: .unavailable, message: "the service's database is unavailable; try again")
        default:
            self.record(method: method, code: "unknown", since: started)
            logger().error("rpc failed", metadata: ["method": "\(method)", "code": "unknown", "error": "\(String(reflecting: underlying).prefix(2000))"])
            return underlying
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

extension RPCTelemetryInterceptor: SparkWireUnaryInterceptor {
    public func intercept(
        request: SparkWireUnaryRequest,
        context: ServerContext,
        next: (SparkWireUnaryRequest, ServerContext) async throws -> SparkWireUnaryResponse
    ) async throws -> SparkWireUnaryResponse {
        let started = ContinuousClock.now
        do {
            let response = try await next(request, context)
            self.record(method: context.descriptor.method, code: "OK", since: started)
            return response
        } catch {
            throw self.failed(error, method: context.descriptor.method, metadata: request.metadata, since: started)
        }
    }
}
