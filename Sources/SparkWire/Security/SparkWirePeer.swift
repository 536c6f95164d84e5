public import GRPCCore
public import X509

/// The authenticated caller of an RPC served over SparkWire, from its client certificate.
///
/// Available to handlers and interceptors as `context.sparkWirePeer`.
///
/// ```swift
/// func reserve(request: ServerRequest<ReserveRequest>, context: ServerContext) async throws -> ... {
///     guard context.sparkWirePeer?.identity == "run" else { throw RPCError(code: .permissionDenied, message: "…") }
/// }
/// ```
public struct SparkWirePeer: ServerContext.TransportSpecific, Hashable {
    /// The caller's service identity: the first DNS subject alternative name of its certificate
    /// (SparkOps certificates put the service name first, such as `run`). Nil without a certificate.
    public var identity: String?
    /// Every DNS subject alternative name of the caller's certificate.
    public var dnsNames: [String]
    /// The caller's leaf certificate.
    public var certificate: Certificate?

    public init(identity: String?, dnsNames: [String], certificate: Certificate?) {
        self.identity = identity
        self.dnsNames = dnsNames
        self.certificate = certificate
    }

    /// Reads the identity of a certificate.
    public init(certificate: Certificate) {
        let names = (try? certificate.extensions.subjectAlternativeNames)??.compactMap { name -> String? in
            if case .dnsName(let dns) = name { return dns }
            return nil
        } ?? []
        self.init(identity: names.first, dnsNames: names, certificate: certificate)
    }

    /// A peer that presented no certificate (plaintext connections in tests).
    public static let anonymous = SparkWirePeer(identity: nil, dnsNames: [], certificate: nil)
}

extension ServerContext {
    /// The caller of this RPC when it arrived over SparkWire.
    public var sparkWirePeer: SparkWirePeer? {
        self.transportSpecific as? SparkWirePeer
    }
}
