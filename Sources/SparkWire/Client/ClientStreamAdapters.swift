import GRPCCore
import NIOCore

/// The response parts of a client stream, as GRPCCore reads them.
struct ClientInboundParts: AsyncSequence, Sendable {
    typealias Element = RPCResponsePart<SparkWireBytes>
    let channel: StreamChannel

    struct AsyncIterator: AsyncIteratorProtocol {
        let channel: StreamChannel

        mutating func next() async throws -> RPCResponsePart<SparkWireBytes>? {
            guard let part = try await self.channel.next() else { return nil }
            switch part {
            case .headers(let metadata): return .metadata(metadata)
            case .message(let buffer): return .message(SparkWireBytes(buffer))
            case .trailers(let status, let metadata): return .status(status, metadata)
            }
        }
    }

    func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(channel: self.channel)
    }
}

/// The request writer of a client stream. Moves GRPCCore's `grpc-timeout` metadata into the
/// headers' `timeout_micros`, shortened to the deadline the task inherited from the call it serves.
struct ClientOutboundWriter: ClosableRPCWriterProtocol {
    typealias Element = RPCRequestPart<SparkWireBytes>
    let channel: StreamChannel
    let path: String

    func write(_ element: RPCRequestPart<SparkWireBytes>) async throws {
        switch element {
        case .metadata(var metadata):
            let timeout = metadata[stringValues: "grpc-timeout"].first(where: { _ in true }).flatMap(GRPCTimeout.parse)
            metadata.removeAllValues(forKey: "grpc-timeout")
            let micros = try SparkWireDeadline.wireTimeout(requested: timeout)
            try self.channel.writeHeaders(WireFrame.Headers(method: self.path, timeoutMicros: micros, metadata: metadata))
        case .message(let bytes):
            try await self.channel.writeMessage(bytes.buffer)
        }
    }

    func write(contentsOf elements: some Sequence<RPCRequestPart<SparkWireBytes>>) async throws {
        for element in elements {
            try await self.write(element)
        }
    }

    func finish() async {
        try? self.channel.writeEndStream()
    }

    func finish(throwing error: any Error) async {
        let rpcError = (error as? RPCError) ?? RPCError(code: .cancelled, message: "the client abandoned the call")
        self.channel.cancel(rpcError)
    }
}

/// The `grpc-timeout` value GRPCCore writes: up to 8 digits and a unit (H, M, S, m, u, n).
enum GRPCTimeout {
    static func parse(_ text: String) -> Duration? {
        guard let unit = text.last, text.count >= 2, text.count <= 9, let amount = Int64(text.dropLast()), amount >= 0 else {
            return nil
        }
        switch unit {
        case "H": return .seconds(amount * 3600)
        case "M": return .seconds(amount * 60)
        case "S": return .seconds(amount)
        case "m": return .milliseconds(amount)
        case "u": return .microseconds(amount)
        case "n": return .nanoseconds(amount)
        default: return nil
        }
    }
}
