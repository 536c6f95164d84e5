import ArgumentParser
import Foundation
import SparkKit
import X509

/// `sparkops certs`: the CA and the service certificates SparkWire authenticates with.
struct CertsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "certs",
        abstract: "Create and rotate the certificates services authenticate each other with.",
        subcommands: [Init.self, Issue.self, RotateCA.self, Prune.self]
    )

    static let allServices = "gateway,project,agent,workflow,run,tool,policy,budget,scheduler"

    struct Init: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write a new CA, a trust bundle and one certificate per service.",
            discussion: """
                Writes DIR/ca.pem, DIR/ca.key, DIR/trust.pem and DIR/<service>.pem and .key for each \
                service. Each service certificate names the service first (its identity) and is valid \
                for client and server use. Keys are written with mode 0600.
                """
        )

        @Option(help: "The directory to write to.")
        var dir: String

        @Option(help: "Comma-separated service names.")
        var services: String = CertsCommand.allServices

        @Option(name: .customLong("dns-name"), help: "An extra DNS name (repeatable), with one service in --services only: a CA never gives one name to two services.")
        var dnsNames: [String] = []

        @Flag(help: "Replace an existing CA.")
        var force = false

        func run() throws {
            let names = self.services.split(separator: ",").map { String($0).trimmingCharacters(in: .whitespaces) }
            try CertificateAuthority.initialize(
                directory: URL(filePath: self.dir),
                services: names,
                extraDNSNames: self.dnsNames,
                overwrite: self.force
            )
            print("wrote a CA and certificates for \(names.joined(separator: ", ")) to \(self.dir)")
        }
    }

    struct Issue: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Issue or re-issue one service's certificate with the current CA.")

        @Option(help: "The certificate directory.")
        var dir: String

        @Option(help: "The service name; it becomes the certificate's identity.")
        var service: String

        @Option(name: .customLong("dns-name"), help: "An extra DNS name (repeatable); refused when another service's certificate in the directory holds it.")
        var dnsNames: [String] = []

        func run() throws {
            try CertificateAuthority.issueLeaf(in: URL(filePath: self.dir), service: self.service, extraDNSNames: self.dnsNames)
            print("wrote \(self.dir)/\(self.service).pem and .key")
        }
    }

    struct RotateCA: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "rotate-ca",
            abstract: "Make a new CA and add it to the trust bundle beside the old one.",
            discussion: """
                Rotation without downtime: 1) rotate-ca, 2) deploy trust.pem everywhere, 3) issue \
                every service's certificate again and deploy them, 4) prune.
                """
        )

        @Option(help: "The certificate directory.")
        var dir: String

        func run() throws {
            let authority = try CertificateAuthority.rotateAuthority(in: URL(filePath: self.dir))
            let count = try CertificateAuthority.trustBundle(in: URL(filePath: self.dir)).count
            print("new CA \(authority.certificate.subject); trust.pem now holds \(count) CAs")
        }
    }

    struct Prune: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Drop every CA but the current one from the trust bundle.")

        @Option(help: "The certificate directory.")
        var dir: String

        func run() throws {
            try CertificateAuthority.pruneTrust(in: URL(filePath: self.dir))
            print("trust.pem now holds only the current CA")
        }
    }
}
