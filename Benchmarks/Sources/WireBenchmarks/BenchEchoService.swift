import Foundation
import GRPCCore
import SparkProto
import SwiftProtobuf

/// The echo service every transport serves in the benchmark: no test behaviours, no counters.
struct BenchEchoService: Sparkops_Testing_V1_EchoService.SimpleServiceProtocol {
    func get(request: Sparkops_Testing_V1_EchoRequest, context: ServerContext) async throws -> Sparkops_Testing_V1_EchoResponse {
        .with {
            $0.text = request.text
            $0.payload = request.payload
        }
    }

    func record(request: Sparkops_Testing_V1_EchoRequest, context: ServerContext) async throws -> Sparkops_Testing_V1_EchoResponse {
        try await self.get(request: request, context: context)
    }

    func expand(
        request: Sparkops_Testing_V1_EchoRequest,
        response: RPCWriter<Sparkops_Testing_V1_EchoResponse>,
        context: ServerContext
    ) async throws {
        var message = Sparkops_Testing_V1_EchoResponse()
        message.payload = request.payload
        for index in 0 ..< request.count {
            message.index = index
            try await response.write(message)
        }
    }

    func collect(
        request: RPCAsyncSequence<Sparkops_Testing_V1_EchoRequest, any Error>,
        context: ServerContext
    ) async throws -> Sparkops_Testing_V1_EchoResponse {
        var count: UInt32 = 0
        for try await _ in request { count += 1 }
        return .with { $0.index = count }
    }

    func update(
        request: RPCAsyncSequence<Sparkops_Testing_V1_EchoRequest, any Error>,
        response: RPCWriter<Sparkops_Testing_V1_EchoResponse>,
        context: ServerContext
    ) async throws {
        for try await message in request {
            try await response.write(.with { $0.payload = message.payload })
        }
    }
}
