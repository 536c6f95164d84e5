public import Crypto
public import Foundation
import SwiftASN1
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
public import X509

/// The certificates SparkOps services use to authenticate each other over SparkWire.
///
/// A directory holds one CA (`ca.pem`, `ca.key`), a trust bundle (`trust.pem`, every CA whose
/// certificates are accepted) and one leaf per service (`<service>.pem`, `<service>.key`). A leaf's
/// first DNS name is its service name, which SparkWire reports as the caller's identity and which
/// clients check when they connect to a service; each leaf is valid for both client and server use.
///
/// Rotating the CA without downtime: ``rotateAuthority(in:)`` makes a new CA and puts it in the
/// trust bundle beside the old one; deploy the bundle everywhere, re-issue every leaf with
/// ``issueLeaf(in:service:extraDNSNames:)``, then ``pruneTrust(in:keeping:)`` the old CA.
public struct CertificateAuthority: Sendable {
    public let certificate: Certificate
    let privateKey: P256.Signing.PrivateKey

    /// Lifetime of a new CA.
    public static let authorityValidity: TimeInterval = 10 * 365 * 24 * 3600
    /// Lifetime of a new leaf.
    public static let leafValidity: TimeInterval = 397 * 24 * 3600

    /// A new self-signed CA.
    public static func create(name: String? = nil, now: Date = Date()) throws -> CertificateAuthority {
        let key = P256.Signing.PrivateKey()
        let stamp = ISO8601DateFormatter().string(from: now)
        let subject = try DistinguishedName {
            OrganizationName("SparkOps")
            CommonName(name ?? "SparkOps CA \(stamp)")
        }
        let publicKey = Certificate.PublicKey(key.publicKey)
        let certificate = try Certificate(
            version: .v3,
            serialNumber: Certificate.SerialNumber(),
            publicKey: publicKey,
            notValidBefore: now.addingTimeInterval(-300),
            notValidAfter: now.addingTimeInterval(Self.authorityValidity),
            issuer: subject,
            subject: subject,
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 0))
                Critical(KeyUsage(keyCertSign: true, cRLSign: true))
                SubjectKeyIdentifier(hash: publicKey)
            },
            issuerPrivateKey: Certificate.PrivateKey(key)
        )
        return CertificateAuthority(certificate: certificate, privateKey: key)
    }

    /// Loads `ca.pem` and `ca.key`.
    public static func load(from directory: URL) throws -> CertificateAuthority {
        let certificate = try Certificate(pemEncoded: String(contentsOf: directory.appending(path: "ca.pem"), encoding: .utf8))
        let key = try P256.Signing.PrivateKey(pemRepresentation: String(contentsOf: directory.appending(path: "ca.key"), encoding: .utf8))
        return CertificateAuthority(certificate: certificate, privateKey: key)
    }

    /// A leaf for `service`, for client and server use, whose DNS names are the service name, then
    /// `extraDNSNames`.
    public func issue(service: String, extraDNSNames: [String] = [], now: Date = Date()) throws -> (certificate: Certificate, key: P256.Signing.PrivateKey) {
        try Self.validate(serviceName: service)
        let key = P256.Signing.PrivateKey()
        let publicKey = Certificate.PublicKey(key.publicKey)
        let subject = try DistinguishedName {
            OrganizationName("SparkOps")
            CommonName(service)
        }
        var names: [String] = []
        for name in [service] + extraDNSNames where !names.contains(name) {
            names.append(name)
        }
        let authorityKeyID = try self.certificate.extensions.subjectKeyIdentifier?.keyIdentifier
        let certificate = try Certificate(
            version: .v3,
            serialNumber: Certificate.SerialNumber(),
            publicKey: publicKey,
            notValidBefore: now.addingTimeInterval(-300),
            notValidAfter: min(now.addingTimeInterval(Self.leafValidity), self.certificate.notValidAfter),
            issuer: self.certificate.subject,
            subject: subject,
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.notCertificateAuthority)
                Critical(KeyUsage(digitalSignature: true))
                try ExtendedKeyUsage([.serverAuth, .clientAuth])
                SubjectAlternativeNames(names.map { GeneralName.dnsName($0) })
                SubjectKeyIdentifier(hash: publicKey)
                if let authorityKeyID {
                    AuthorityKeyIdentifier(keyIdentifier: authorityKeyID)
                }
            },
            issuerPrivateKey: Certificate.PrivateKey(self.privateKey)
        )
        return (certificate, key)
    }

    static func validate(serviceName: String) throws {
        let allowed = Set("abcdefghijklmnopqrstuvwxyz0123456789-")
        guard !serviceName.isEmpty, serviceName.count <= 63, serviceName.allSatisfy(allowed.contains),
            serviceName.first != "-", serviceName.last != "-"
        else {
            throw CertificateDirectoryError("service name \(serviceName.debugDescription) must be 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'")
        }
    }

    // MARK: Directories

    /// Creates a CA, a trust bundle and one leaf per service in `directory`.
    /// Refuses to replace an existing CA unless `overwrite` is set.
    public static func initialize(
        directory: URL,
        services: [String],
        extraDNSNames: [String] = [],
        overwrite: Bool = false
    ) throws {
        guard !services.isEmpty else { throw CertificateDirectoryError("--services names no service") }
        for service in services { try Self.validate(serviceName: service) }
        // One name on two services' certificates would let a client expecting it accept either
        // (docs/wire-protocol.md §2): extra names go to one service at a time.
        if !extraDNSNames.isEmpty && services.count > 1 {
            throw CertificateDirectoryError(
                "--dns-name would give \(extraDNSNames.joined(separator: ", ")) to all of \(services.joined(separator: ", ")), and a CA must never give one name to two services; create the certificates, then add a name to one service with `sparkops certs issue --service NAME --dns-name DNS`"
            )
        }
        if let service = services.first, let clash = Self.identityClash(extraDNSNames, service: service) {
            throw CertificateDirectoryError("--dns-name \(clash) is another SparkOps service's identity")
        }
        let fileManager = FileManager.default
        if !overwrite && fileManager.fileExists(atPath: directory.appending(path: "ca.key").path) {
            throw CertificateDirectoryError("\(directory.path)/ca.key exists; pass --force to replace the CA")
        }
        try fileManager.createDirectory(at: directory, withIntermediateDirectories: true)
        let authority = try CertificateAuthority.create()
        try authority.write(to: directory)
        try Self.writeFile(directory.appending(path: "trust.pem"), try authority.certificate.serializeAsPEM().pemString + "\n", secret: false)
        for service in services {
            try Self.issueLeaf(in: directory, service: service, extraDNSNames: extraDNSNames, authority: authority)
        }
    }

    /// Issues (or re-issues) `<service>.pem` and `<service>.key` with the directory's current CA.
    /// Refuses an extra name that another service's certificate in the directory holds (as its
    /// identity or as an alias): a CA never gives one name to two services.
    public static func issueLeaf(in directory: URL, service: String, extraDNSNames: [String] = []) throws {
        if let clash = Self.identityClash(extraDNSNames, service: service) {
            throw CertificateDirectoryError("--dns-name \(clash) is another SparkOps service's identity")
        }
        for (other, names) in try Self.leafNames(in: directory) where other != service {
            if let clash = extraDNSNames.first(where: { name in names.contains { $0.caseInsensitiveCompare(name) == .orderedSame } }) {
                throw CertificateDirectoryError("\(clash) is already a name of the \(other) certificate in \(directory.path); a CA never gives one name to two services")
            }
        }
        try Self.issueLeaf(in: directory, service: service, extraDNSNames: extraDNSNames, authority: try Self.load(from: directory))
    }

    /// An extra name that is the identity of a SparkOps service other than `service`, if any.
    static func identityClash(_ names: [String], service: String) -> String? {
        let identities = ServiceName.allCases.map(\.rawValue).filter { $0 != service }
        return names.first { name in identities.contains { $0.caseInsensitiveCompare(name) == .orderedSame } }
    }

    /// The DNS names of each service certificate (`<service>.pem` with its key) in the directory.
    static func leafNames(in directory: URL) throws -> [String: [String]] {
        var found: [String: [String]] = [:]
        let files = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
        for file in files where file.hasSuffix(".pem") && files.contains(String(file.dropLast(4)) + ".key") && file != "ca.pem" {
            let service = String(file.dropLast(4))
            guard let pem = try? String(contentsOf: directory.appending(path: file), encoding: .utf8),
                let certificate = try? Certificate(pemEncoded: pem)
            else { continue }
            let names = (try? certificate.extensions.subjectAlternativeNames)??.compactMap { name -> String? in
                if case .dnsName(let text) = name { return text }
                return nil
            } ?? []
            found[service] = [service] + names
        }
        return found
    }

    private static func issueLeaf(in directory: URL, service: String, extraDNSNames: [String], authority: CertificateAuthority) throws {
        let (certificate, key) = try authority.issue(service: service, extraDNSNames: extraDNSNames)
        try Self.writeFile(directory.appending(path: "\(service).pem"), try certificate.serializeAsPEM().pemString + "\n", secret: false)
        try Self.writeFile(directory.appending(path: "\(service).key"), key.pemRepresentation + "\n", secret: true)
    }

    /// Makes a new CA the directory's signer and appends it to the trust bundle, which keeps the
    /// previous CAs so that leaves they signed stay valid until re-issued. Returns the new CA.
    @discardableResult
    public static func rotateAuthority(in directory: URL) throws -> CertificateAuthority {
        let previous = try Self.load(from: directory)
        let serial = previous.certificate.serialNumber.description.replacingOccurrences(of: ":", with: "")
        try previous.certificate.serializeAsPEM().pemString.write(
            to: directory.appending(path: "ca-\(serial).pem"), atomically: true, encoding: .utf8
        )
        let authority = try CertificateAuthority.create()
        var bundle = try Self.trustBundle(in: directory)
        bundle.append(authority.certificate)
        try Self.writeTrust(bundle, in: directory)
        try authority.write(to: directory)
        return authority
    }

    /// Rewrites the trust bundle with only the CAs whose subject is in `keeping` (the current CA is always kept).
    public static func pruneTrust(in directory: URL, keeping subjects: Set<DistinguishedName> = []) throws {
        let current = try Self.load(from: directory).certificate
        let bundle = try Self.trustBundle(in: directory).filter { $0 == current || subjects.contains($0.subject) }
        try Self.writeTrust(bundle, in: directory)
    }

    /// The CAs of `trust.pem`.
    public static func trustBundle(in directory: URL) throws -> [Certificate] {
        let text = try String(contentsOf: directory.appending(path: "trust.pem"), encoding: .utf8)
        return try PEMDocument.parseMultiple(pemString: text).map { try Certificate(pemDocument: $0) }
    }

    private static func writeTrust(_ bundle: [Certificate], in directory: URL) throws {
        let text = try bundle.map { try $0.serializeAsPEM().pemString }.joined(separator: "\n") + "\n"
        try Self.writeFile(directory.appending(path: "trust.pem"), text, secret: false)
    }

    private func write(to directory: URL) throws {
        try Self.writeFile(directory.appending(path: "ca.pem"), try self.certificate.serializeAsPEM().pemString + "\n", secret: false)
        try Self.writeFile(directory.appending(path: "ca.key"), self.privateKey.pemRepresentation + "\n", secret: true)
    }

    /// Writes atomically; secrets are created readable by their owner only.
    private static func writeFile(_ url: URL, _ text: String, secret: Bool) throws {
        let temporary = url.deletingLastPathComponent().appending(path: ".\(url.lastPathComponent).tmp")
        let attributes: [FileAttributeKey: Any] = [.posixPermissions: secret ? 0o600 : 0o644]
        guard FileManager.default.createFile(atPath: temporary.path, contents: Data(text.utf8), attributes: attributes) else {
            throw CertificateDirectoryError("cannot write \(url.path)")
        }
        guard rename(temporary.path, url.path) == 0 else {
            throw CertificateDirectoryError("cannot move \(temporary.path) to \(url.path): errno \(errno)")
        }
    }
}

/// A certificate directory that cannot be used as asked.
public struct CertificateDirectoryError: Error, CustomStringConvertible, Sendable {
    public var description: String

    public init(_ description: String) {
        self.description = description
    }
}
