import ArgumentParser
import Foundation
import GRPCCore
import SparkKit
import SparkProto
import SparkTesting
import SparkWire
import NIOCore
import SwiftProtobuf

/// `sparkops wire`: tools for SparkWire itself.
struct WireCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "wire",
        abstract: "Tools for SparkWire, the service-to-service protocol.",
        subcommands: [EchoServer.self, Health.self]
    )

    struct EchoServer: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "echo-server",
            abstract: "Serve sparkops.testing.v1.EchoService and Health over SparkWire, to try a client against.",
            discussion: "Stop it with Ctrl-C; calls in flight finish first."
        )

        @Option(help: "Address to listen on.")
        var host = "127.0.0.1"

        @Option(help: "Port to listen on (0 picks one and prints it).")
        var port = 7070

        @Option(help: "Certificate directory from `sparkops certs init`.")
        var certs: String

        @Option(help: "The certificate the server presents.")
        var identity = "echo"

        func run() async throws {
            let health = HealthService()
            let services: [any RegistrableRPCService] = [EchoService(), health]
            let transport = SparkWireServerTransport(config: .init(
                host: self.host,
                port: self.port,
                security: .mutualTLS(.directory(self.certs, service: self.identity)),
                methods: SparkProtoMethods.all,
                unaryMethods: SparkProtoMethods.unary(of: services)
            ))
            let server = GRPCServer(transport: transport, services: services)
            try await withThrowingDiscardingTaskGroup { group in
                group.addTask { try await server.serve() }
                let address = try await transport.listeningAddress
                print("SparkWire echo server on \(self.host):\(address.port ?? 0) as \(self.identity)")
                group.addTask {
                    await ShutdownSignal.wait()
                    // Watchers and checks see NOT_SERVING while the calls in flight finish.
                    health.markAllNotServing()
                    server.beginGracefulShutdown()
                }
            }
        }
    }

    struct Health: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Ask a service for its health over SparkWire.")

        @Option(help: "host:port of the service.")
        var address: String

        @Option(help: "Certificate directory.")
        var certs: String

        @Option(help: "The certificate to call with.")
        var identity = "gateway"

        @Option(name: .customLong("server-identity"), help: "The identity the server's certificate must name.")
        var serverIdentity: String

        @Option(help: "The service to ask about; empty for the server as a whole.")
        var service = ""

        func run() async throws {
            let transport = try SparkWireClientTransport(config: .init(
                endpoints: try SparkWireEndpoint.parseList(self.address),
                serverIdentity: self.serverIdentity,
                security: .mutualTLS(.directory(self.certs, service: self.identity)),
                methods: SparkProtoMethods.all
            ))
            let request = Sparkops_Health_V1_HealthCheckRequest.with { $0.service = self.service }
            let status = try await withGRPCClient(transport: transport) { client in
                var options = CallOptions.defaults
                options.timeout = .seconds(5)
                return try await Sparkops_Health_V1_Health.Client(wrapping: client).check(request, options: options).status
            }
            print(status)
            if status != .serving { throw ExitCode(1) }
        }
    }
}
