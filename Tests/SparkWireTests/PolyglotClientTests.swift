import Foundation
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
        let process = Process()
        process.executableURL = URL(filePath: "/usr/bin/env")
        process.arguments = [executable] + arguments
        process.currentDirectoryURL = Self.repository
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        let deadline = ContinuousClock.now + timeout
        while process.isRunning {
            if ContinuousClock.now > deadline {
                process.terminate()
                throw PolyglotError(description: "\(executable) did not finish within \(timeout)")
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        return (process.terminationStatus, text)
    }

    func withEchoServer(_ body: (TestCertificates, Int) async throws -> Void) async throws {
        let certificates = try TestCertificates.make()
        try await withWireServer(services: [EchoService(), HealthService()], security: certificates.security("echo")) { _, port in
            try await body(certificates, port)
        }
    }

    @Test("the C client (protobuf-c, OpenSSL) calls Health/Check and EchoService unary and server-streaming")
    func cClient() async throws {
        let (buildStatus, buildOutput) = try await Self.run("make", ["-s", "-C", "clients/c"])
        try #require(buildStatus == 0, "building clients/c failed:\n\(buildOutput)")
        try await self.withEchoServer { certificates, port in
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

    @Test("the Python client (protobuf, ssl) calls Health/Check and EchoService unary and server-streaming")
    func pythonClient() async throws {
        try await self.withEchoServer { certificates, port in
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
