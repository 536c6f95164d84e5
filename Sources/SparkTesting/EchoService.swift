public import GRPCCore
import Foundation
import SwiftProtobuf
import NIOCore
public import SparkProto
public import SparkWire
import SparkKit
import Synchronization

/// `sparkops.testing.v1.EchoService`, with test behaviours chosen by request metadata:
///
/// - `echo-fail-attempts: N` — fail with UNAVAILABLE the first N calls that carry the same
///   `echo-fail-key` (default: the method name), so that retries can be counted;
/// - `echo-delay-ms: N` — wait N ms before answering (cancellation ends the wait);
/// - `echo-whoami: 1` — answer with the caller's certificate identity;
/// - `echo-report-deadline: 1` — answer with the microseconds left of the call's deadline, or "none";
/// - `echo-throw: rpc|convertible|plain|channel` — fail with an `RPCError` carrying metadata, with
///   an `RPCErrorConvertible` (FAILED_PRECONDITION), with an error of neither kind, or with NIO's
///   `ChannelError` (what a store's broken connection surfaces as);
/// - `echo-metadata: V` — answer with initial metadata `echo-initial: V` and trailing metadata
///   `echo-trailing: done` (unary methods);
/// - `echo-forward: 1` — make the same call (without `echo-forward`) to the downstream service and
///   return its answer, to test that deadlines propagate.
public final class EchoService: Sparkops_Testing_V1_EchoService.ServiceProtocol {
    public typealias Downstream = Sparkops_Testing_V1_EchoService.Client<SparkWireClientTransport>

    private let calls = Mutex<[String: Int]>([:])
    private let cancellations = Atomic<Int>(0)
    private let attempts = Mutex<[String: Int]>([:])
    private let downstream: Downstream?

    public init(downstream: Downstream? = nil) {
        self.downstream = downstream
    }

    /// How many times each method ("Get", "Record", …) was called, retries included.
    public func callCount(_ method: String) -> Int {
        self.calls.withLock { $0[method, default: 0] }
    }

    /// How many calls ended because they were cancelled (by the caller, a deadline or shutdown).
    public var cancelledCount: Int {
        self.cancellations.load(ordering: .relaxed)
    }

    /// Runs `body`, counting it as cancelled if it ends with the task cancelled.
    private func observing<T>(_ context: ServerContext, _ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch {
            if Task.isCancelled || error is CancellationError || context.cancellation.isCancelled {
                self.cancellations.add(1, ordering: .relaxed)
            }
            throw error
        }
    }

    private func begin(_ method: String, _ metadata: Metadata, _ context: ServerContext) async throws {
        self.calls.withLock { $0[method, default: 0] += 1 }
        if let text = metadata[stringValues: "echo-fail-attempts"].first(where: { _ in true }), let failures = Int(text) {
            let key = metadata[stringValues: "echo-fail-key"].first(where: { _ in true }) ?? method
            let attempt = self.attempts.withLock { attempts in
                attempts[key, default: 0] += 1
                return attempts[key]!
            }
            if attempt <= failures {
                throw RPCError(code: .unavailable, message: "failing attempt \(attempt) of \(failures) on purpose")
            }
        }
        if let text = metadata[stringValues: "echo-delay-ms"].first(where: { _ in true }), let millis = Int(text) {
            try await self.observing(context) { try await Task.sleep(for: .milliseconds(millis)) }
        }
        switch metadata[stringValues: "echo-throw"].first(where: { _ in true }) {
        case "rpc": throw RPCError(code: .aborted, message: "aborted on purpose", metadata: ["echo-reason": "asked"])
        case "convertible": throw EchoConvertibleError()
        case "plain": throw EchoPlainError()
        case "channel": throw ChannelError.ioOnClosedChannel
        default: break
        }
    }

    private func respond(_ message: Sparkops_Testing_V1_EchoResponse, _ metadata: Metadata) -> ServerResponse<Sparkops_Testing_V1_EchoResponse> {
        guard let value = metadata[stringValues: "echo-metadata"].first(where: { _ in true }) else {
            return ServerResponse(message: message)
        }
        return ServerResponse(message: message, metadata: ["echo-initial": "\(value)"], trailingMetadata: ["echo-trailing": "done"])
    }

    private func answer(_ request: Sparkops_Testing_V1_EchoRequest, _ metadata: Metadata, _ context: ServerContext) async throws
        -> Sparkops_Testing_V1_EchoResponse
    {
        if metadata[stringValues: "echo-forward"].first(where: { _ in true }) != nil, let downstream = self.downstream {
            var forwarded = metadata
            forwarded.removeAllValues(forKey: "echo-forward")
            return try await downstream.get(request, metadata: forwarded)
        }
        var response = Sparkops_Testing_V1_EchoResponse()
        if metadata[stringValues: "echo-whoami"].first(where: { _ in true }) != nil {
            response.text = context.callerIdentity ?? "anonymous"
        } else if metadata[stringValues: "echo-report-deadline"].first(where: { _ in true }) != nil {
            response.text = SparkWireDeadline.remaining.map { "\($0.components.seconds * 1_000_000 + $0.components.attoseconds / 1_000_000_000_000)" } ?? "none"
        } else {
            response.text = request.text
        }
        response.payload = request.payload
        return response
    }

    public func get(request: ServerRequest<Sparkops_Testing_V1_EchoRequest>, context: ServerContext) async throws
        -> ServerResponse<Sparkops_Testing_V1_EchoResponse>
    {
        try await self.begin("Get", request.metadata, context)
        return self.respond(try await self.answer(request.message, request.metadata, context), request.metadata)
    }

    public func record(request: ServerRequest<Sparkops_Testing_V1_EchoRequest>, context: ServerContext) async throws
        -> ServerResponse<Sparkops_Testing_V1_EchoResponse>
    {
        try await self.begin("Record", request.metadata, context)
        return self.respond(try await self.answer(request.message, request.metadata, context), request.metadata)
    }

    public func expand(
        request: ServerRequest<Sparkops_Testing_V1_EchoRequest>,
        context: ServerContext
    ) async throws -> StreamingServerResponse<Sparkops_Testing_V1_EchoResponse> {
        try await self.begin("Expand", request.metadata, context)
        let message = request.message
        return StreamingServerResponse { writer in try await self.observing(context) {
            if message.count > 0 {
                var response = Sparkops_Testing_V1_EchoResponse()
                response.payload = message.payload
                response.text = message.text
                for index in 0 ..< message.count {
                    response.index = index
                    try await writer.write(response)
                }
            } else {
                for (index, word) in message.text.split(separator: " ").enumerated() {
                    try await writer.write(.with {
                        $0.text = String(word)
                        $0.index = UInt32(index)
                    })
                }
            }
            return [:]
        } }
    }

    public func collect(
        request: StreamingServerRequest<Sparkops_Testing_V1_EchoRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Testing_V1_EchoResponse> {
        try await self.begin("Collect", request.metadata, context)
        var texts: [String] = []
        var payload: [UInt8] = []
        for try await message in request.messages {
            texts.append(message.text)
            payload.append(contentsOf: message.payload)
        }
        let response = Sparkops_Testing_V1_EchoResponse.with {
            $0.text = texts.joined(separator: " ")
            $0.payload = .init(payload)
            $0.index = UInt32(texts.count)
        }
        return ServerResponse(message: response)
    }

    public func update(
        request: StreamingServerRequest<Sparkops_Testing_V1_EchoRequest>,
        context: ServerContext
    ) async throws -> StreamingServerResponse<Sparkops_Testing_V1_EchoResponse> {
        try await self.begin("Update", request.metadata, context)
        return StreamingServerResponse { writer in try await self.observing(context) {
            var index: UInt32 = 0
            for try await message in request.messages {
                try await writer.write(.with {
                    $0.text = message.text
                    $0.payload = message.payload
                    $0.index = index
                })
                index += 1
            }
            return [:]
        } }
    }
}

/// `echo-throw: convertible`.
struct EchoConvertibleError: Error, RPCErrorConvertible {
    var rpcErrorCode: RPCError.Code { .failedPrecondition }
    var rpcErrorMessage: String { "converted on purpose" }
}

/// `echo-throw: plain`.
struct EchoPlainError: Error {}
