import GRPCCore
import SparkKit
import SparkProto
import SparkTesting
import SparkWire
import SwiftProtobuf
import Testing

@Suite("Health service")
struct HealthServiceTests {
    let certificates: TestCertificates

    init() throws {
        self.certificates = try TestCertificates.make()
    }

    @Test("Check answers each service's status and NOT_FOUND for unknown ones; Watch streams changes")
    func checkAndWatch() async throws {
        let health = HealthService()
        health.setStatus(.notServing, forService: "sparkops.testing.v1.EchoService")
        try await withWireServer(services: [health], security: self.certificates.security("echo")) { _, port in
            try await withWireClient(endpoints: [.init(host: "127.0.0.1", port: port)], security: self.certificates.security("client")) { client, _ in
                let stub = Sparkops_Health_V1_Health.Client(wrapping: client)
                let whole = try await stub.check(.init())
                #expect(whole.status == .serving)
                let echo = try await stub.check(.with { $0.service = "sparkops.testing.v1.EchoService" })
                #expect(echo.status == .notServing)
                await #expect {
                    _ = try await stub.check(.with { $0.service = "nope" })
                } throws: { error in
                    (error as? RPCError)?.code == .notFound
                }

                let seen = try await stub.watch(.with { $0.service = "sparkops.testing.v1.EchoService" }) { response in
                    var seen: [Sparkops_Health_V1_HealthCheckResponse.ServingStatus] = []
                    for try await message in response.messages {
                        seen.append(message.status)
                        if seen.count == 1 { health.setStatus(.serving, forService: "sparkops.testing.v1.EchoService") }
                        if seen.count == 2 { health.markAllNotServing() }
                        if seen.count == 3 { break }
                    }
                    return seen
                }
                #expect(seen == [.notServing, .serving, .notServing])

                let unknown = try await stub.watch(.with { $0.service = "later" }) { response in
                    for try await message in response.messages { return message.status }
                    return .unspecified
                }
                #expect(unknown == .serviceUnknown)
            }
        }
    }
}
