public import GRPCCore
public import GRPCNIOTransportHTTP2
import NIOCore
public import SparkWire
import X509

/// The optional standard gRPC listener of a SparkOps service: HTTP/2 with mutual TLS, the same
/// services and interceptors as its SparkWire listener, so that grpcurl and gRPC clients in any
/// language can call it with a certificate from the SparkOps CA.
public enum StandardGRPC {
    /// A server transport on `host:port` presenting the service's certificate and requiring a
    /// client certificate signed by a CA of the trust bundle.
    public static func serverTransport(
        host: String,
        port: Int,
        certificateDirectory: String,
        service: String
    ) -> HTTP2ServerTransport.Posix {
        HTTP2ServerTransport.Posix(
            address: .ipv4(host: host, port: port),
            transportSecurity: .mTLS(
                certificateChain: [.file(path: "\(certificateDirectory)/\(service).pem", format: .pem)],
                privateKey: .file(path: "\(certificateDirectory)/\(service).key", format: .pem)
            ) { tls in
                tls.trustRoots = .certificates([.file(path: "\(certificateDirectory)/trust.pem", format: .pem)])
                tls.clientCertificateVerification = .noHostnameVerification
            }
        )
    }

    /// A client transport to a standard gRPC listener, authenticating as `identity` and checking
    /// that the server's certificate names `serverIdentity`.
    public static func clientTransport(
        host: String,
        port: Int,
        certificateDirectory: String,
        identity: String,
        serverIdentity: String
    ) throws -> HTTP2ClientTransport.Posix {
        try HTTP2ClientTransport.Posix(
            target: .ipv4(address: host, port: port),
            transportSecurity: .mTLS(
                certificateChain: [.file(path: "\(certificateDirectory)/\(identity).pem", format: .pem)],
                privateKey: .file(path: "\(certificateDirectory)/\(identity).key", format: .pem)
            ) { tls in
                tls.trustRoots = .certificates([.file(path: "\(certificateDirectory)/trust.pem", format: .pem)])
                tls.serverCertificateVerification = .fullVerification
            },
            config: .defaults { $0.http2.authority = serverIdentity }
        )
    }
}

extension ServerContext {
    /// The calling service's identity, from its client certificate, over SparkWire or the
    /// standard gRPC listener alike.
    public var callerIdentity: String? {
        if let peer = self.sparkWirePeer {
            return peer.identity
        }
        if let http2 = self.transportSpecific as? HTTP2ServerTransport.Posix.Context, let certificate = http2.peerCertificate {
            return SparkWirePeer(certificate: certificate).identity
        }
        return nil
    }
}

extension CallerAllowlistInterceptor {
    /// An allowlist interceptor that reads the caller's identity on either listener.
    public static func anyTransport(_ allowlist: CallerAllowlist) -> CallerAllowlistInterceptor {
        CallerAllowlistInterceptor(allowlist) { $0.callerIdentity }
    }
}
