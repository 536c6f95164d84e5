public import Foundation
import SparkKit
public import SparkWire

/// A temporary certificate directory made by ``CertificateAuthority`` for tests.
public struct TestCertificates: Sendable {
    public let directory: URL

    /// A fresh CA with a leaf for each service. Each call makes a different CA.
    public static func make(
        services: [String] = ["gateway", "project", "run", "budget", "echo", "client", "intruder"]
    ) throws -> TestCertificates {
        let directory = FileManager.default.temporaryDirectory.appending(path: "sparkops-certs-\(UUID().uuidString)")
        try CertificateAuthority.initialize(directory: directory, services: services)
        return TestCertificates(directory: directory)
    }

    public init(directory: URL) {
        self.directory = directory
    }

    public func credentials(_ service: String) -> SparkWireCredentials {
        .directory(self.directory.path, service: service)
    }

    public func security(_ service: String) -> SparkWireSecurity {
        .mutualTLS(self.credentials(service))
    }

    public func path(_ file: String) -> String {
        self.directory.appending(path: file).path
    }

    public func remove() {
        try? FileManager.default.removeItem(at: self.directory)
    }
}
