import GRPCCore
import NIOSSL

/// PEM material a SparkWire endpoint presents and trusts.
public struct SparkWireCredentials: Sendable {
    /// Where PEM text comes from.
    public enum Source: Sendable, Hashable {
        case file(String)
        case pem(String)
    }

    /// The leaf certificate, optionally followed by intermediates.
    public var certificateChain: Source
    /// The leaf's private key.
    public var privateKey: Source
    /// Every CA whose certificates are trusted. A bundle may hold several CAs so that a CA can be
    /// rotated without downtime: add the new CA to every bundle, re-issue leaves, then drop the old CA.
    public var trustBundle: Source

    public init(certificateChain: Source, privateKey: Source, trustBundle: Source) {
        self.certificateChain = certificateChain
        self.privateKey = privateKey
        self.trustBundle = trustBundle
    }

    /// The layout `sparkops certs init` writes: `<dir>/<service>.pem`, `<dir>/<service>.key` and
    /// `<dir>/trust.pem`.
    public static func directory(_ directory: String, service: String) -> SparkWireCredentials {
        SparkWireCredentials(
            certificateChain: .file("\(directory)/\(service).pem"),
            privateKey: .file("\(directory)/\(service).key"),
            trustBundle: .file("\(directory)/trust.pem")
        )
    }

    func loadChain() throws -> [NIOSSLCertificate] {
        let chain = try Self.loading("certificate chain", self.certificateChain) { try Self.certificates(self.certificateChain) }
        guard !chain.isEmpty else { throw SparkWireConfigurationError("the certificate chain holds no certificate") }
        return chain
    }

    func loadKey() throws -> NIOSSLPrivateKey {
        try Self.loading("private key", self.privateKey) {
            switch self.privateKey {
            case .file(let path): return try NIOSSLPrivateKey(file: path, format: .pem)
            case .pem(let text): return try NIOSSLPrivateKey(bytes: Array(text.utf8), format: .pem)
            }
        }
    }

    func loadTrust() throws -> [NIOSSLCertificate] {
        let roots = try Self.loading("trust bundle", self.trustBundle) { try Self.certificates(self.trustBundle) }
        guard !roots.isEmpty else { throw SparkWireConfigurationError("the trust bundle holds no certificate") }
        return roots
    }

    /// Runs `load`, naming what failed to load and from where.
    private static func loading<T>(_ what: String, _ source: Source, _ load: () throws -> T) throws -> T {
        do {
            return try load()
        } catch {
            let origin: String
            switch source {
            case .file(let path): origin = path
            case .pem: origin = "inline PEM"
            }
            throw SparkWireConfigurationError("cannot load the \(what) from \(origin): \(error)")
        }
    }

    private static func certificates(_ source: Source) throws -> [NIOSSLCertificate] {
        switch source {
        case .file(let path): return try NIOSSLCertificate.fromPEMFile(path)
        case .pem(let text): return try NIOSSLCertificate.fromPEMBytes(Array(text.utf8))
        }
    }
}

/// How a SparkWire endpoint secures its connections.
public enum SparkWireSecurity: Sendable {
    /// TLS 1.3 with certificates on both sides, ALPN `sparkwire/1`. What every deployment uses.
    case mutualTLS(SparkWireCredentials)
    /// No encryption and no peer identity. For protocol tests and fuzzing only; never in a deployment.
    case plaintext

    var usesTLS: Bool {
        if case .mutualTLS = self { return true }
        return false
    }

    /// Server side: TLS 1.3 only, a client certificate required and verified against the bundle.
    func makeServerContext() throws -> NIOSSLContext? {
        guard case .mutualTLS(let credentials) = self else { return nil }
        var tls = TLSConfiguration.makeServerConfiguration(
            certificateChain: try credentials.loadChain().map { .certificate($0) },
            privateKey: .privateKey(try credentials.loadKey())
        )
        tls.minimumTLSVersion = .tlsv13
        tls.certificateVerification = .noHostnameVerification
        tls.trustRoots = .certificates(try credentials.loadTrust())
        tls.applicationProtocols = [SparkWireProtocol.alpn]
        return try NIOSSLContext(configuration: tls)
    }

    /// Client side: TLS 1.3 only, the server's certificate verified against the bundle and its
    /// DNS names checked against the identity the caller expects.
    func makeClientContext() throws -> NIOSSLContext? {
        guard case .mutualTLS(let credentials) = self else { return nil }
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.certificateChain = try credentials.loadChain().map { .certificate($0) }
        tls.privateKey = .privateKey(try credentials.loadKey())
        tls.minimumTLSVersion = .tlsv13
        tls.certificateVerification = .fullVerification
        tls.trustRoots = .certificates(try credentials.loadTrust())
        tls.applicationProtocols = [SparkWireProtocol.alpn]
        return try NIOSSLContext(configuration: tls)
    }
}

/// SparkWire configuration that cannot work, such as an empty trust bundle.
public struct SparkWireConfigurationError: Error, CustomStringConvertible, Sendable {
    public var description: String

    public init(_ description: String) {
        self.description = description
    }
}
