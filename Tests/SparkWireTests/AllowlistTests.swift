import GRPCCore
import SparkProto
import SparkTesting
import SparkWire
import SwiftProtobuf
import Testing

@Suite("Caller allowlists")
struct AllowlistTests {
    let certificates: TestCertificates

    init() throws {
        self.certificates = try TestCertificates.make()
    }

    static let allowlist = CallerAllowlist(
        methods: ["/sparkops.testing.v1.EchoService/Record": ["gateway"]],
        services: ["sparkops.testing.v1.EchoService": ["*"]],
        defaultCallers: [],
        principalSetters: ["gateway"]
    )

    func call(as identity: String, _ body: (Sparkops_Testing_V1_EchoService.Client<SparkWireClientTransport>) async throws -> Void) async throws {
        try await withEchoPair(
            certificates: self.certificates,
            interceptors: [CallerAllowlistInterceptor(Self.allowlist)],
            clientIdentity: identity
        ) { echo, _, _ in
            try await body(echo)
        }
    }

    @Test("a method rule admits only its callers; others get PERMISSION_DENIED")
    func methodRule() async throws {
        try await self.call(as: "client") { echo in
            await #expect {
                _ = try await echo.record(.with { $0.text = "x" })
            } throws: { error in
                let rpcError = error as? RPCError
                return rpcError?.code == .permissionDenied && rpcError?.message.contains("\"client\"") == true
            }
            // The service rule lets any authenticated caller use the other methods.
            let response = try await echo.get(.with { $0.text = "ok" })
            #expect(response.text == "ok")
        }
        try await self.call(as: "gateway") { echo in
            let response = try await echo.record(.with { $0.text = "allowed" })
            #expect(response.text == "allowed")
        }
    }

    @Test("only trusted callers may assert the end user's principal")
    func principal() async throws {
        try await self.call(as: "client") { echo in
            await #expect {
                _ = try await echo.get(.with { $0.text = "x" }, metadata: [CallerAllowlist.principalKey: "user_1"])
            } throws: { error in
                (error as? RPCError)?.code == .permissionDenied
            }
        }
        try await self.call(as: "gateway") { echo in
            let response = try await echo.get(.with { $0.text = "as user" }, metadata: [CallerAllowlist.principalKey: "user_1"])
            #expect(response.text == "as user")
        }
    }

    @Test("the rules resolve method, then service, then default")
    func resolution() {
        let get = MethodDescriptor(fullyQualifiedService: "sparkops.testing.v1.EchoService", method: "Get")
        let record = MethodDescriptor(fullyQualifiedService: "sparkops.testing.v1.EchoService", method: "Record")
        let other = MethodDescriptor(fullyQualifiedService: "sparkops.budget.v1.BudgetService", method: "Reserve")
        #expect(Self.allowlist.callers(of: get) == ["*"])
        #expect(Self.allowlist.callers(of: record) == ["gateway"])
        #expect(Self.allowlist.callers(of: other) == [])
        #expect(Self.allowlist.check(identity: "run", descriptor: other, metadata: [:])?.code == .permissionDenied)
        #expect(Self.allowlist.check(identity: nil, descriptor: get, metadata: [:])?.code == .unauthenticated)
        #expect(Self.allowlist.check(identity: "run", descriptor: get, metadata: [:]) == nil)
    }
}
