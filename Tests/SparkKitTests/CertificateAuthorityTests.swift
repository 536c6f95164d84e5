import Foundation
import GRPCCore
import SparkKit
import SparkProto
import SparkRuntime
import Logging
import SparkTesting
import SparkWire
import SwiftProtobuf
import Testing
import X509
import SwiftASN1

@Suite("Certificates")
struct CertificateAuthorityTests {
    func temporaryDirectory() -> URL {
        FileManager.default.temporaryDirectory.appending(path: "sparkops-ca-\(UUID().uuidString)")
    }

    @Test("init writes a CA, a trust bundle and a leaf per service, keys readable by the owner only")
    func initialize() throws {
        let directory = self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        try CertificateAuthority.initialize(directory: directory, services: ["gateway", "project"])
        try CertificateAuthority.issueLeaf(in: directory, service: "project", extraDNSNames: ["project.sparkops.svc"])
        for file in ["ca.pem", "ca.key", "trust.pem", "gateway.pem", "gateway.key", "project.pem", "project.key"] {
            #expect(FileManager.default.fileExists(atPath: directory.appending(path: file).path), "\(file)")
        }
        for key in ["ca.key", "gateway.key", "project.key"] {
            let attributes = try FileManager.default.attributesOfItem(atPath: directory.appending(path: key).path)
            #expect((attributes[.posixPermissions] as? Int) == 0o600, "\(key)")
        }
        let leaf = try Certificate(pemEncoded: String(contentsOf: directory.appending(path: "project.pem"), encoding: .utf8))
        let peer = SparkWirePeer(certificate: leaf)
        #expect(peer.identity == "project")
        #expect(peer.dnsNames == ["project", "project.sparkops.svc"])
        let usages = try leaf.extensions.extendedKeyUsage.map { Array($0) } ?? []
        #expect(usages.contains(.serverAuth) && usages.contains(.clientAuth))
        let ca = try CertificateAuthority.load(from: directory)
        #expect(leaf.issuer == ca.certificate.subject)
        #expect(try ca.certificate.extensions.basicConstraints == .isCertificateAuthority(maxPathLength: 0))

        // A second init refuses to replace the CA.
        #expect(throws: CertificateDirectoryError.self) {
            try CertificateAuthority.initialize(directory: directory, services: ["gateway"])
        }
    }

    @Test("a CA never gives one name to two services: init with --dns-name for several, or issue with another's name, is refused")
    func oneNameOneService() throws {
        let directory = self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        #expect(throws: CertificateDirectoryError.self) {
            try CertificateAuthority.initialize(directory: directory, services: ["project", "run"], extraDNSNames: ["localhost"])
        }
        #expect(!FileManager.default.fileExists(atPath: directory.appending(path: "ca.key").path))
        try CertificateAuthority.initialize(directory: directory, services: ["project", "run"])
        try CertificateAuthority.issueLeaf(in: directory, service: "project", extraDNSNames: ["localhost", "project.sparkops.svc"])
        let before = try String(contentsOf: directory.appending(path: "run.pem"), encoding: .utf8)
        for names in [["localhost"], ["LOCALHOST"], ["project"], ["project.sparkops.svc"], ["budget"]] {
            #expect(throws: CertificateDirectoryError.self, "\(names)") {
                try CertificateAuthority.issueLeaf(in: directory, service: "run", extraDNSNames: names)
            }
        }
        // Nothing was written for a refused name; the service's own names may be issued again.
        #expect(try String(contentsOf: directory.appending(path: "run.pem"), encoding: .utf8) == before)
        try CertificateAuthority.issueLeaf(in: directory, service: "project", extraDNSNames: ["localhost"])
        try CertificateAuthority.issueLeaf(in: directory, service: "run", extraDNSNames: ["run.sparkops.svc"])
    }

    @Test("bad service names are refused with the rule")
    func serviceNames() throws {
        let directory = self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        for name in ["", "Gateway", "-run", "run-", "a b", "x/y", String(repeating: "a", count: 64)] {
            #expect(throws: CertificateDirectoryError.self, "\(name)") {
                try CertificateAuthority.initialize(directory: directory, services: [name], overwrite: true)
            }
        }
        #expect(throws: CertificateDirectoryError.self) {
            try CertificateAuthority.initialize(directory: directory, services: [])
        }
    }

    @Test("rotating the CA keeps old and new leaves working together until the old CA is pruned")
    func rotation() async throws {
        let directory = self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        try CertificateAuthority.initialize(directory: directory, services: ["echo", "client"])
        try CertificateAuthority.issueLeaf(in: directory, service: "echo", extraDNSNames: ["localhost"])
        let oldClient = try String(contentsOf: directory.appending(path: "client.pem"), encoding: .utf8)
        let oldClientKey = try String(contentsOf: directory.appending(path: "client.key"), encoding: .utf8)

        try CertificateAuthority.rotateAuthority(in: directory)
        #expect(try CertificateAuthority.trustBundle(in: directory).count == 2)
        try CertificateAuthority.issueLeaf(in: directory, service: "echo", extraDNSNames: ["localhost"])
        let trust = try String(contentsOf: directory.appending(path: "trust.pem"), encoding: .utf8)

        // A server with a leaf of the new CA accepts a client whose leaf the old CA signed.
        let certificates = TestCertificates(directory: directory)
        let oldSecurity = SparkWireSecurity.mutualTLS(.init(certificateChain: .pem(oldClient), privateKey: .pem(oldClientKey), trustBundle: .pem(trust)))
        try await withWireServer(services: [EchoService()], security: certificates.security("echo")) { _, port in
            try await withWireClient(endpoints: [.init(host: "127.0.0.1", port: port)], security: oldSecurity) { client, _ in
                let response = try await Sparkops_Testing_V1_EchoService.Client(wrapping: client).get(.with { $0.text = "across CAs" })
                #expect(response.text == "across CAs")
            }
        }

        try CertificateAuthority.pruneTrust(in: directory)
        #expect(try CertificateAuthority.trustBundle(in: directory).count == 1)
        _ = try await withWireServer(services: [EchoService()], security: certificates.security("echo")) { _, port in
            try await withWireClient(
                endpoints: [.init(host: "127.0.0.1", port: port)],
                security: oldSecurity,
                configure: { $0.backoff = SparkWireBackoff(initial: .seconds(5)) }
            ) { client, _ in
                await #expect(throws: RPCError.self) {
                    _ = try await Sparkops_Testing_V1_EchoService.Client(wrapping: client).record(.with { $0.text = "x" })
                }
            }
        }
    }

    @Test("dev certificates name only their service: a client expecting project refuses the run certificate")
    func devCertificateIdentities() async throws {
        let home = self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: home) }
        let host = try HostConfig(config: try await SparkConfiguration.reader(overrides: ["home": home.path], environment: [:]))
        try SparkRuntime.ensureCertificates(host: host, logger: Logger(label: "test"))
        let directory = URL(filePath: host.certificateDirectory)
        for service in ServiceName.allCases {
            let leaf = try Certificate(pemEncoded: String(contentsOf: directory.appending(path: "\(service.rawValue).pem"), encoding: .utf8))
            // No name shared between services (such as localhost) that a client could check instead.
            #expect(SparkWirePeer(certificate: leaf).dnsNames == [service.rawValue])
        }
        let certificates = TestCertificates(directory: directory)
        try await withWireServer(services: [EchoService()], security: certificates.security("run")) { _, port in
            for expected in ["project", "localhost"] {
                try await withWireClient(
                    endpoints: [.init(host: "127.0.0.1", port: port)],
                    serverIdentity: expected,
                    security: certificates.security("gateway"),
                    configure: { $0.backoff = SparkWireBackoff(initial: .seconds(5)) }
                ) { client, _ in
                    await #expect(throws: RPCError.self, "a client expecting \(expected) accepted the run certificate") {
                        _ = try await Sparkops_Testing_V1_EchoService.Client(wrapping: client).record(.with { $0.text = "x" })
                    }
                }
            }
            try await withWireClient(endpoints: [.init(host: "127.0.0.1", port: port)], serverIdentity: "run", security: certificates.security("gateway")) { client, _ in
                let reply = try await Sparkops_Testing_V1_EchoService.Client(wrapping: client).get(.with { $0.text = "to run" })
                #expect(reply.text == "to run")
            }
        }
    }
}
