public import GRPCCore
import NIOCore
import Synchronization

/// A unary request on SparkWire's lean path: the caller's metadata and the message's bytes.
public struct SparkWireUnaryRequest: Sendable {
    public var metadata: Metadata
    public var message: SparkWireBytes

    public init(metadata: Metadata, message: SparkWireBytes) {
        self.metadata = metadata
        self.message = message
    }
}

/// A unary response on SparkWire's lean path: initial metadata, the message's bytes and the
/// trailing metadata of an OK status. A failed call throws its `RPCError` instead.
public struct SparkWireUnaryResponse: Sendable {
    public var metadata: Metadata
    public var message: SparkWireBytes
    public var trailingMetadata: Metadata

    public init(metadata: Metadata, message: SparkWireBytes, trailingMetadata: Metadata) {
        self.metadata = metadata
        self.message = message
        self.trailingMetadata = trailingMetadata
    }
}

/// A unary method that ``SparkWireServerTransport`` serves itself, without GRPCCore's server
/// executor: it reads the single request message, runs the ``SparkWireUnaryInterceptor``s and the
/// handler in one task on the connection's event loop, and writes headers, message and status as
/// one frame.
///
/// `protoc-gen-sparkops` generates these from a service's `ServiceProtocol` (the same handlers
/// GRPCCore calls): `SparkProtoMethods.unary(of: services)`.
///
/// ```swift
/// let transport = SparkWireServerTransport(config: .init(
///     host: "0.0.0.0", port: 7001, security: security,
///     methods: SparkProtoMethods.all,
///     unaryMethods: SparkProtoMethods.unary(of: services),
///     unaryInterceptors: [CallerAllowlistInterceptor(allowlist)]
/// ))
/// let server = GRPCServer(transport: transport, services: services, interceptors: [CallerAllowlistInterceptor(allowlist)])
/// ```
///
/// Streaming methods, and unary methods not given here, go through GRPCCore as before.
public struct SparkWireUnaryMethod: Sendable {
    public let descriptor: MethodDescriptor
    @usableFromInline
    let handler: @Sendable (SparkWireUnaryRequest, ServerContext) async throws -> SparkWireUnaryResponse

    /// Inlinable, so that the generated code that makes it specializes the closure for its
    /// message types (no generic metadata looked up at run time, per call).
    @inlinable
    public init<Input: Sendable, Output: Sendable>(
        descriptor: MethodDescriptor,
        deserializer: some MessageDeserializer<Input>,
        serializer: some MessageSerializer<Output>,
        handler: @escaping @Sendable (ServerRequest<Input>, ServerContext) async throws -> ServerResponse<Output>
    ) {
        self.descriptor = descriptor
        self.handler = { request, context in
            let message = try deserializer.deserialize(request.message)
            let response = try await handler(ServerRequest(metadata: request.metadata, message: message), context)
            let contents = try response.accepted.get()
            return SparkWireUnaryResponse(
                metadata: contents.metadata,
                message: try serializer.serialize(contents.message),
                trailingMetadata: contents.trailingMetadata
            )
        }
    }

    /// `/<service>/<method>`.
    public var path: String { self.descriptor.wirePath }
}

/// Intercepts the unary calls of SparkWire's lean path, as a GRPCCore `ServerInterceptor` does the
/// others: check the caller, record telemetry, map errors. Interceptors run in array order; the
/// first is outermost. An error thrown here or below reaches the caller as GRPCCore would send it:
/// an `RPCError` as it is, an `RPCErrorConvertible` converted, anything else as UNKNOWN.
public protocol SparkWireUnaryInterceptor: Sendable {
    func intercept(
        request: SparkWireUnaryRequest,
        context: ServerContext,
        next: (SparkWireUnaryRequest, ServerContext) async throws -> SparkWireUnaryResponse
    ) async throws -> SparkWireUnaryResponse
}

/// The lean unary methods a server transport serves, by path, with their interceptors.
struct SparkWireUnaryRouter: Sendable {
    let methods: [String: SparkWireUnaryMethod]
    let interceptors: [any SparkWireUnaryInterceptor]

    init?(methods: [SparkWireUnaryMethod], interceptors: [any SparkWireUnaryInterceptor]) {
        guard !methods.isEmpty else { return nil }
        var byPath: [String: SparkWireUnaryMethod] = [:]
        for method in methods { byPath[method.path] = method }
        self.methods = byPath
        self.interceptors = interceptors
    }

    subscript(path: String) -> SparkWireUnaryMethod? { self.methods[path] }

    func run(_ method: SparkWireUnaryMethod, request: SparkWireUnaryRequest, context: ServerContext) async throws -> SparkWireUnaryResponse {
        try await self.run(method, from: 0, request: request, context: context)
    }

    private func run(_ method: SparkWireUnaryMethod, from index: Int, request: SparkWireUnaryRequest, context: ServerContext) async throws -> SparkWireUnaryResponse {
        guard index < self.interceptors.count else {
            return try await method.handler(request, context)
        }
        return try await self.interceptors[index].intercept(request: request, context: context) { request, context in
            try await self.run(method, from: index + 1, request: request, context: context)
        }
    }

    /// The status a failed call ends with, as GRPCCore's server executor makes it.
    func status(for error: any Error) -> RPCError {
        switch error {
        case let error as RPCError:
            return error
        case let error as any RPCErrorConvertible:
            return RPCError(error)
        default:
            // GRPCCore: an interceptor's unknown error has no message; without interceptors the
            // handler's has this one.
            let message = self.interceptors.isEmpty ? "Service method threw an unknown error." : ""
            return RPCError(code: .unknown, message: message, cause: error)
        }
    }
}

extension StreamChannel {
    /// Reads a unary request: its headers, exactly one message, and the end of the stream. The
    /// errors are GRPCCore's for the same malformed streams.
    func readUnaryRequest() async throws -> SparkWireUnaryRequest {
        guard case .headers(let metadata)? = try await self.next() else {
            throw RPCError(code: .internalError, message: "Empty inbound server stream.")
        }
        var message: ByteBuffer?
        while let part = try await self.next() {
            guard case .message(let bytes) = part else { continue }
            guard message == nil else {
                throw RPCError(code: .internalError, message: "Too many messages.")
            }
            message = bytes
        }
        guard let message else {
            throw RPCError(code: .internalError, message: "Empty stream.")
        }
        return SparkWireUnaryRequest(metadata: metadata, message: SparkWireBytes(message))
    }
}

/// Counts a connection's lean unary tasks, so that the connection's run ends after them.
final class UnaryTaskCount: Sendable {
    private struct State {
        var running = 0
        var waiter: CheckedContinuation<Void, Never>?
    }

    private let state = Mutex(State())

    func started() {
        self.state.withLock { $0.running += 1 }
    }

    func finished() {
        let waiter = self.state.withLock { state -> CheckedContinuation<Void, Never>? in
            state.running -= 1
            guard state.running == 0 else { return nil }
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume()
    }

    /// Returns once no task is running.
    func waitForNone() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let done = self.state.withLock { state in
                if state.running == 0 { return true }
                state.waiter = continuation
                return false
            }
            if done { continuation.resume() }
        }
    }
}

/// Starts a connection's lean unary calls, from its event loop as each stream opens: one `Task`
/// per call (preferring the event loop), which reads the request, runs the interceptors and the
/// handler, and writes the response. Its own task, so that the stream failing (the caller
/// cancelled, the deadline passed, the connection closed) cancels the handler without a task group
/// per call; `tasks` lets the connection's run end after them.
package final class UnaryDispatch: Sendable {
    let router: SparkWireUnaryRouter
    let executor: EventLoopTaskExecutor?
    let remotePeer: String
    let localPeer: String
    let tasks = UnaryTaskCount()

    init(router: SparkWireUnaryRouter, executor: EventLoopTaskExecutor?, channel: any Channel) {
        self.router = router
        self.executor = executor
        self.remotePeer = channel.remoteAddress.map(ServerConnection.describe) ?? "unknown"
        self.localPeer = channel.localAddress.map(ServerConnection.describe) ?? "unknown"
    }

    /// Starts the call if a lean method serves it; false leaves it to GRPCCore.
    func start(_ open: InboundStreamOpen) -> Bool {
        guard let method = self.router[open.method] else { return false }
        self.tasks.started()
        let task = Task(executorPreference: self.executor) {
            await self.run(open, method: method)
            self.tasks.finished()
        }
        open.channel.setTaskCancellation { task.cancel() }
        return true
    }

    private func run(_ open: InboundStreamOpen, method: SparkWireUnaryMethod) async {
        defer { open.channel.clearTaskCancellation() }
        await withServerContextRPCCancellationHandle { handle in
            open.channel.setCancellationHandle(handle)
            var context = ServerContext(
                descriptor: method.descriptor,
                remotePeer: self.remotePeer,
                localPeer: self.localPeer,
                cancellation: handle
            )
            context.transportSpecific = open.peer
            do {
                let request = try await open.channel.readUnaryRequest()
                let response = try await SparkWireDeadline.$current.withValue(open.deadline) {
                    try await self.router.run(method, request: request, context: context)
                }
                try await open.channel.writeUnary(
                    headers: WireFrame.Headers(metadata: response.metadata),
                    message: response.message.buffer,
                    end: .trailers(WireFrame.Trailers(code: 0, message: "", metadata: response.trailingMetadata))
                )
            } catch {
                let status = self.router.status(for: error)
                let trailers = WireFrame.Trailers(code: UInt32(status.code.rawValue), message: status.message, metadata: status.metadata)
                try? open.channel.writeTrailers(trailers)
            }
        }
    }
}
