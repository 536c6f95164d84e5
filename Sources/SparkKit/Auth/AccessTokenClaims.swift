public import Foundation
public import JWTKit

/// The claims of a SparkOps access token: a 15-minute EdDSA-signed JWT the project service issues
/// and the gateway verifies.
public struct SparkAccessClaims: JWTPayload, Equatable {
    public static let issuer = "sparkops"
    public static let audience = "sparkops-api"
    public static let tokenType = "access"
    public static let lifetime: TimeInterval = 15 * 60

    public var iss: IssuerClaim
    public var aud: AudienceClaim
    public var sub: SubjectClaim
    public var exp: ExpirationClaim
    public var nbf: NotBeforeClaim
    public var iat: IssuedAtClaim
    public var jti: IDClaim
    /// "access": a refresh token or any other JWT is not an access token.
    public var typ: String
    /// The user is a global administrator.
    public var adm: Bool
    /// The session family (`fam_…`) the token belongs to; revoking the family ends the token.
    public var fam: String?

    public init(userID: String, tokenID: String, isAdmin: Bool, family: String? = nil, now: Date = Date()) {
        self.iss = IssuerClaim(value: Self.issuer)
        self.aud = AudienceClaim(value: [Self.audience])
        self.sub = SubjectClaim(value: userID)
        self.exp = ExpirationClaim(value: now.addingTimeInterval(Self.lifetime))
        self.nbf = NotBeforeClaim(value: now.addingTimeInterval(-5))
        self.iat = IssuedAtClaim(value: now)
        self.jti = IDClaim(value: tokenID)
        self.typ = Self.tokenType
        self.adm = isAdmin
        self.fam = family
    }

    public func verify(using algorithm: some JWTAlgorithm) async throws {
        try self.exp.verifyNotExpired()
        try self.nbf.verifyNotBefore()
        guard self.iss.value == Self.issuer else { throw JWTError.claimVerificationFailure(failedClaim: self.iss, reason: "unexpected issuer") }
        try self.aud.verifyIntendedAudience(includes: Self.audience)
        guard self.typ == Self.tokenType else { throw JWTError.claimVerificationFailure(failedClaim: nil, reason: "not an access token") }
    }
}

/// The signing keys of access tokens, as a JSON Web Key Set of Ed25519 public keys.
public enum SparkJWKS {
    public struct Key: Sendable, Equatable {
        public var id: String
        /// The raw 32-byte public key, base64url without padding.
        public var x: String

        public init(id: String, x: String) {
            self.id = id
            self.x = x
        }
    }

    public static func encode(_ keys: [Key]) -> String {
        let entries = keys.map { #"{"kty":"OKP","crv":"Ed25519","alg":"EdDSA","use":"sig","kid":"\#($0.id)","x":"\#($0.x)"}"# }
        return #"{"keys":["# + entries.joined(separator: ",") + "]}"
    }

    public static func decode(_ json: String) throws -> [Key] {
        struct Set: Decodable { var keys: [Entry] }
        struct Entry: Decodable { var kty: String; var crv: String?; var kid: String?; var x: String? }
        let set = try JSONDecoder().decode(Set.self, from: Data(json.utf8))
        return set.keys.compactMap { entry in
            guard entry.kty == "OKP", entry.crv == "Ed25519", let kid = entry.kid, let x = entry.x else { return nil }
            return Key(id: kid, x: x)
        }
    }

    public static func base64URL(_ data: Data) -> String {
        data.base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
    }
}
