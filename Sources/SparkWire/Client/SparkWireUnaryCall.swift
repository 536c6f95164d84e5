public import GRPCCore
public import NIOCore

/// What a lean unary call's exchange ended with, before the response message is decoded.
@usableFromInline
enum SparkWireUnaryOutcome: Sendable {
    /// An OK status: initial metadata, the message's bytes, trailing metadata.
    case answered(Metadata, SparkWireBytes, Metadata)
    /// The call failed: the initial metadata received (if any) and the error.
    case failed(Metadata, RPCError)
}

extension SparkWireClientTransport {
    /// Sends a unary call on SparkWire's lean path, without GRPCCore's client executor: the request
    /// is serialized and written as one frame (headers, message, end of stream), and the task waits
    /// for the response's one frame, all on the caller's own executor. No task group, no async
    /// sequences, no interceptors, no hop to the connection's event loop.
    ///
    /// Behaves as `GRPCClient.unary` does over this transport: the same deadline (the smaller of
    /// `options.timeout` and ``SparkWireDeadline/remaining``, enforced here and sent to the server),
    /// the same metadata, the same errors, and cancelling the calling task cancels the call at the
    /// server. ``SparkWireChannel`` uses it for every unary method without a retry policy.
    ///
    /// Inlinable, so that it is specialized for the caller's message types; the exchange itself is
    /// not generic.
    @inlinable
    public func unary<Request, Response, Result: Sendable>(
        request: ClientRequest<Request>,
        descriptor: MethodDescriptor,
        serializer: some MessageSerializer<Request>,
        deserializer: some MessageDeserializer<Response>,
        options: CallOptions,
        onResponse handleResponse: @Sendable @escaping (ClientResponse<Response>) async throws -> Result
    ) async throws -> Result {
        let message: SparkWireBytes = try serializer.serialize(request.message)
        let response: ClientResponse<Response>
        switch try await self.exchange(descriptor: descriptor, message: message, metadata: request.metadata, options: options) {
        case .answered(let initial, let bytes, let trailing):
            do {
                response = ClientResponse(message: try deserializer.deserialize(bytes), metadata: initial, trailingMetadata: trailing)
            } catch let error as RPCError {
                response = ClientResponse(of: Response.self, metadata: initial, error: error)
            } catch {
                // GRPCCore's answer to a deserializer that throws something else.
                response = ClientResponse(of: Response.self, error: RPCError(code: .unknown, message: String(describing: error)))
            }
        case .failed(let initial, let error):
            response = ClientResponse(of: Response.self, metadata: initial, error: error)
        }
        return try await handleResponse(response)
    }

    /// Opens a stream, sends the request's frame and reads the answer's.
    @usableFromInline
    func exchange(descriptor: MethodDescriptor, message: SparkWireBytes, metadata: Metadata, options: CallOptions) async throws -> SparkWireUnaryOutcome {
        let micros = try SparkWireDeadline.wireTimeout(requested: options.timeout)
        let headers = WireFrame.Headers(method: descriptor.wirePath, timeoutMicros: micros, metadata: metadata)
        let (connection, stream) = try await self.openStream(holdUntilEnd: true, waitForReady: options.waitForReady ?? false)
        // Where the caller runs: no hop to the connection's event loop and back. A caller on a
        // pool thread writes from there (the event loop drains the frame) and is resumed there;
        // a caller on the event loop (a SparkOps handler) writes and resumes on it.
        let outcome = await Self.exchange(on: stream, headers: headers, message: message.buffer)
        if !stream.isComplete {
            stream.cancel(RPCError(code: .cancelled, message: "the client abandoned the call"))
        }
        connection.outbox.releaseStreamSlot()
        return outcome
    }

    private static func exchange(on stream: StreamChannel, headers: WireFrame.Headers, message: ByteBuffer) async -> SparkWireUnaryOutcome {
        do {
            try await stream.writeUnary(headers: headers, message: message, end: .endStream)
            return try await Self.readResponse(on: stream)
        } catch let error as RPCError {
            return .failed([:], error)
        } catch is CancellationError {
            return .failed([:], RPCError(code: .cancelled, message: "the call was cancelled"))
        } catch let error as any RPCErrorConvertible {
            return .failed([:], RPCError(error))
        } catch {
            return .failed([:], RPCError(code: .unknown, message: "The transport threw an unexpected error.", cause: error))
        }
    }

    /// Headers, one message and trailers; GRPCCore's errors for a server that sends otherwise.
    private static func readResponse(on stream: StreamChannel) async throws -> SparkWireUnaryOutcome {
        var initial: Metadata = [:]
        var message: ByteBuffer?
        while let part = try await stream.next() {
            switch part {
            case .headers(let metadata):
                initial = metadata
            case .message(let bytes):
                guard message == nil else {
                    return .failed(initial, RPCError(
                        code: .unimplemented,
                        message: """
                            Multiple messages received, but only one is expected. The server may have \
                            incorrectly implemented the RPC or the client and server may have a different \
                            opinion on whether this RPC streams responses.
                            """
                    ))
                }
                message = bytes
            case .trailers(let status, let trailing):
                if let error = RPCError(status: status, metadata: trailing) {
                    return .failed(initial, error)
                }
                guard let message else {
                    return .failed(initial, RPCError(code: .unimplemented, message: "No messages received, exactly one was expected."))
                }
                return .answered(initial, SparkWireBytes(message), trailing)
            }
        }
        return .failed([:], RPCError(
            code: .internalError,
            message: "The stream from the client transport is invalid: it ended without a status."
        ))
    }
}

/// What generated SparkWire clients (`<Service>.SparkWireClient`) call through: a `GRPCClient`
/// over a ``SparkWireClientTransport``, and the transport itself. Unary methods take the transport's
/// lean path unless a retry policy covers them; streaming methods go through GRPCCore.
///
/// ```swift
/// let channel = SparkWireChannel(transport: try SparkWireClientTransport(config: …))
/// // run channel.runConnections() in a task, as with a GRPCClient
/// let tools = Sparkops_Tool_V1_ToolService.SparkWireClient(wrapping: channel)
/// let reply = try await tools.invokeTool(request)
/// ```
public struct SparkWireChannel: Sendable {
    public let grpc: GRPCClient<SparkWireClientTransport>
    public let transport: SparkWireClientTransport
    /// Whether unary calls take the lean path; false sends every call through GRPCCore.
    public let leanUnary: Bool

    public init(transport: SparkWireClientTransport, leanUnary: Bool = true) {
        self.transport = transport
        self.grpc = GRPCClient(transport: transport)
        self.leanUnary = leanUnary
    }

    /// Runs the transport's connections until graceful shutdown.
    public func runConnections() async throws {
        try await self.grpc.runConnections()
    }

    public func beginGracefulShutdown() {
        self.grpc.beginGracefulShutdown()
    }

    @inlinable
    public func unary<Request, Response, Result: Sendable>(
        request: ClientRequest<Request>,
        descriptor: MethodDescriptor,
        serializer: some MessageSerializer<Request>,
        deserializer: some MessageDeserializer<Response>,
        options: CallOptions,
        onResponse handleResponse: @Sendable @escaping (ClientResponse<Response>) async throws -> Result
    ) async throws -> Result {
        if !self.leanUnary || self.transport.config(forMethod: descriptor) != nil {
            // A retry policy covers the method: GRPCCore's retrying executor runs it.
            return try await self.grpc.unary(
                request: request, descriptor: descriptor, serializer: serializer, deserializer: deserializer,
                options: options, onResponse: handleResponse
            )
        }
        return try await self.transport.unary(
            request: request, descriptor: descriptor, serializer: serializer, deserializer: deserializer,
            options: options, onResponse: handleResponse
        )
    }

    public func clientStreaming<Request, Response, Result: Sendable>(
        request: StreamingClientRequest<Request>,
        descriptor: MethodDescriptor,
        serializer: some MessageSerializer<Request>,
        deserializer: some MessageDeserializer<Response>,
        options: CallOptions,
        onResponse handleResponse: @Sendable @escaping (ClientResponse<Response>) async throws -> Result
    ) async throws -> Result {
        try await self.grpc.clientStreaming(
            request: request, descriptor: descriptor, serializer: serializer, deserializer: deserializer,
            options: options, onResponse: handleResponse
        )
    }

    public func serverStreaming<Request, Response, Result: Sendable>(
        request: ClientRequest<Request>,
        descriptor: MethodDescriptor,
        serializer: some MessageSerializer<Request>,
        deserializer: some MessageDeserializer<Response>,
        options: CallOptions,
        onResponse handleResponse: @Sendable @escaping (StreamingClientResponse<Response>) async throws -> Result
    ) async throws -> Result {
        try await self.grpc.serverStreaming(
            request: request, descriptor: descriptor, serializer: serializer, deserializer: deserializer,
            options: options, onResponse: handleResponse
        )
    }

    public func bidirectionalStreaming<Request, Response, Result: Sendable>(
        request: StreamingClientRequest<Request>,
        descriptor: MethodDescriptor,
        serializer: some MessageSerializer<Request>,
        deserializer: some MessageDeserializer<Response>,
        options: CallOptions,
        onResponse handleResponse: @Sendable @escaping (StreamingClientResponse<Response>) async throws -> Result
    ) async throws -> Result {
        try await self.grpc.bidirectionalStreaming(
            request: request, descriptor: descriptor, serializer: serializer, deserializer: deserializer,
            options: options, onResponse: handleResponse
        )
    }
}
