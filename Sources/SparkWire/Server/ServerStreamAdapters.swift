import GRPCCore
import NIOCore

/// The request parts of a server stream, as GRPCCore reads them.
struct ServerInboundParts: AsyncSequence, Sendable {
    typealias Element = RPCRequestPart<SparkWireBytes>
    let channel: StreamChannel

    struct AsyncIterator: AsyncIteratorProtocol {
        let channel: StreamChannel

        mutating func next() async throws -> RPCRequestPart<SparkWireBytes>? {
            while let part = try await self.channel.next() {
                switch part {
                case .headers(let metadata): return .metadata(metadata)
                case .message(let buffer): return .message(SparkWireBytes(buffer))
                case .trailers: continue  // the state machine never delivers these to a server
                }
            }
            return nil
        }
    }

    func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(channel: self.channel)
    }
}

/// The response writer of a server stream.
struct ServerOutboundWriter: ClosableRPCWriterProtocol {
    typealias Element = RPCResponsePart<SparkWireBytes>
    let channel: StreamChannel

    func write(_ element: RPCResponsePart<SparkWireBytes>) async throws {
        switch element {
        case .metadata(let metadata):
            try self.channel.writeHeaders(WireFrame.Headers(metadata: metadata))
        case .message(let bytes):
            try await self.channel.writeMessage(bytes.buffer)
        case .status(let status, let metadata):
            try self.channel.writeTrailers(
                WireFrame.Trailers(code: UInt32(status.code.rawValue), message: status.message, metadata: metadata)
            )
        }
    }

    func write(contentsOf elements: some Sequence<RPCResponsePart<SparkWireBytes>>) async throws {
        for element in elements {
            try await self.write(element)
        }
    }

    func finish() async {
        // GRPCCore writes the status before finishing; a stream left open still gets an ending.
        try? self.channel.writeTrailers(
            WireFrame.Trailers(code: UInt32(Status.Code.unknown.rawValue), message: "the handler ended without a status")
        )
    }

    func finish(throwing error: any Error) async {
        let rpcError = (error as? RPCError) ?? RPCError(code: .unknown, message: "the handler failed")
        try? self.channel.writeTrailers(
            WireFrame.Trailers(code: UInt32(rpcError.code.rawValue), message: rpcError.message, metadata: rpcError.metadata)
        )
    }
}

extension MethodDescriptor {
    /// Parses `/<service>/<method>`; a path of another shape keeps its text as the method name, so
    /// that the router answers UNIMPLEMENTED with the name the caller sent.
    init(path: String) {
        let trimmed = path.hasPrefix("/") ? path.dropFirst() : Substring(path)
        if let slash = trimmed.lastIndex(of: "/") {
            self.init(
                fullyQualifiedService: String(trimmed[..<slash]),
                method: String(trimmed[trimmed.index(after: slash)...])
            )
        } else {
            self.init(fullyQualifiedService: "", method: String(trimmed))
        }
    }
}
