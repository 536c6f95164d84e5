import Foundation
import GRPCCore
import SparkProto
import SparkKit
import SparkTesting
import SparkWire
import Testing

/// The C and Python clients in clients/ speak SparkWire to a live Swift server.
@Suite("Polyglot clients", .serialized)
struct PolyglotClientTests {
    static let repository = URL(filePath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    static let expectedOutput = [
        "health SERVING",
        "expand 0 one", "expand 1 two", "expand 2 three", "expand 3 four", "expand 4 five", "expand 5 six",
        "expand 6 seven", "expand 7 eight", "expand 8 nine", "expand 9 ten", "expand 10 eleven", "expand 11 twelve",
        "unknown-method status 12",
    ]

    /// Runs a program to completion (bounded by `timeout`) and returns its exit status and output.
    static func run(_ executable: String, _ arguments: [String], timeout: Duration = .seconds(120)) async throws -> (Int32, String) {
        let log = FileManager.default.temporaryDirectory.appending(path: "sparkops-polyglot-\(UUID().uuidString).log").path
        defer { try? FileManager.default.removeItem(atPath: log) }
        let process = try await ChildProcess("/usr/bin/env", [executable] + arguments, environment: ProcessInfo.processInfo.environment, directory: Self.repository.path, outputPath: log)
        guard let status = await process.wait(within: timeout) else {
            _ = await process.stop(within: .seconds(1))
            throw PolyglotError(description: "\(executable) did not finish within \(timeout)")
        }
        return (status, process.output)
    }

    /// A server whose unary methods take `path`: the clients must not see a difference.
    func withEchoServer(_ path: WirePath, _ body: (TestCertificates, Int) async throws -> Void) async throws {
        let certificates = try TestCertificates.make()
        let services: [any RegistrableRPCService] = [EchoService(), HealthService()]
        try await withWireServer(
            services: services,
            security: certificates.security("echo"),
            configure: { if path == .lean { $0.unaryMethods = SparkProtoMethods.unary(of: services) } }
        ) { _, port in
            try await body(certificates, port)
        }
    }

    @Test("the C client (protobuf-c, OpenSSL) calls Health/Check and EchoService unary and server-streaming", arguments: WirePath.allCases)
    func cClient(path: WirePath) async throws {
        let (buildStatus, buildOutput) = try await Self.run("make", ["-s", "-C", "clients/c"])
        try #require(buildStatus == 0, "building clients/c failed:\n\(buildOutput)")
        try await self.withEchoServer(path) { certificates, port in
            let (status, output) = try await Self.run(
                "clients/c/build/sparkwire-example",
                ["--host", "127.0.0.1", "--port", "\(port)", "--certs", certificates.directory.path, "--identity", "gateway"]
            )
            #expect(status == 0, "\(output)")
            let lines = output.split(separator: "\n").map(String.init)
            #expect(lines.contains("get hello from C 3"), "\(output)")
            #expect(lines.filter { $0 != "get hello from C 3" } == Self.expectedOutput, "\(output)")

            // The wrong server identity is refused by the C client's certificate check.
            let (refused, refusal) = try await Self.run(
                "clients/c/build/sparkwire-example",
                ["--port", "\(port)", "--certs", certificates.directory.path, "--server-identity", "project"]
            )
            #expect(refused != 0)
            #expect(refusal.contains("certificate verify failed"), "\(refusal)")
        }
    }

    @Test("the Python client (protobuf, ssl) calls Health/Check and EchoService unary and server-streaming", arguments: WirePath.allCases)
    func pythonClient(path: WirePath) async throws {
        try await self.withEchoServer(path) { certificates, port in
            let (status, output) = try await Self.run(
                "python3",
                ["clients/python/example.py", "--port", "\(port)", "--certs", certificates.directory.path]
            )
            #expect(status == 0, "\(output)")
            let lines = output.split(separator: "\n").map(String.init)
            #expect(lines.contains("get hello from Python 3"), "\(output)")
            #expect(lines.filter { $0 != "get hello from Python 3" } == Self.expectedOutput, "\(output)")
        }
    }
}

struct PolyglotError: Error, CustomStringConvertible {
    var description: String
}
