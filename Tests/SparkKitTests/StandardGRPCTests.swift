import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import SparkKit
import SparkProto
import SparkTesting
import SparkWire
import SwiftProtobuf
import Testing

@Suite("Standard gRPC listener")
struct StandardGRPCTests {
    @Test("a gRPC HTTP/2 client with a SparkOps certificate calls the same services, under the same allowlist")
    func http2() async throws {
        let certificates = try TestCertificates.make()
        let transport = StandardGRPC.serverTransport(host: "127.0.0.1", port: 0, certificateDirectory: certificates.directory.path, service: "echo")
        let allowlist = CallerAllowlist(
            methods: ["/sparkops.testing.v1.EchoService/Record": ["gateway"]],
            services: ["sparkops.testing.v1.EchoService": ["*"]]
        )
        try await withGRPCServer(transport: transport, services: [EchoService()], interceptors: [CallerAllowlistInterceptor.anyTransport(allowlist)]) { _ in
            let port = try await transport.listeningAddress.ipv4!.port
            let client = try StandardGRPC.clientTransport(
                host: "127.0.0.1",
                port: port,
                certificateDirectory: certificates.directory.path,
                identity: "client",
                serverIdentity: "echo"
            )
            try await withGRPCClient(transport: client) { grpc in
                let echo = Sparkops_Testing_V1_EchoService.Client(wrapping: grpc)
                let plain = try await echo.get(.with { $0.text = "h2" })
                #expect(plain.text == "h2")
                let whoami = try await echo.get(.with { $0.text = "?" }, metadata: ["echo-whoami": "1"])
                #expect(whoami.text == "client")
                await #expect {
                    _ = try await echo.record(.with { $0.text = "x" })
                } throws: { error in
                    (error as? RPCError)?.code == .permissionDenied
                }
            }
        }
    }
}
