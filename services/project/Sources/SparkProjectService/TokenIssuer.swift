import Crypto
import Foundation
import JWTKit
import SparkKit

/// Signs access tokens with the service's Ed25519 key, created on first start and kept in the
/// database so that every replica signs with the same key.
final class TokenIssuer: Sendable {
    let keyID: String
    let jwks: String
    private let keys: JWTKeyCollection

    private init(keyID: String, privateKey: Curve25519.Signing.PrivateKey) async {
        self.keyID = keyID
        self.keys = JWTKeyCollection()
        await self.keys.add(eddsa: EdDSA.PrivateKey(backing: privateKey), kid: JWKIdentifier(string: keyID))
        self.jwks = SparkJWKS.encode([SparkJWKS.Key(id: keyID, x: SparkJWKS.base64URL(privateKey.publicKey.rawRepresentation))])
    }

    static func load(_ store: ProjectStore) async throws -> TokenIssuer {
        if let (id, encoded) = try await store.store.sql({ try await store.signingKeys(on: $0) }).last,
            let raw = Data(base64Encoded: encoded)
        {
            return await TokenIssuer(keyID: id, privateKey: try Curve25519.Signing.PrivateKey(rawRepresentation: raw))
        }
        let key = Curve25519.Signing.PrivateKey()
        let id = SparkID.make("sig")
        try await store.store.sql { try await store.insertSigningKey(id: id, privateKey: key.rawRepresentation.base64EncodedString(), on: $0) }
        // Another replica may have created one at the same moment: use whichever was stored first.
        let (storedID, storedKey) = try await store.store.sql({ try await store.signingKeys(on: $0) }).first!
        return await TokenIssuer(keyID: storedID, privateKey: try Curve25519.Signing.PrivateKey(rawRepresentation: Data(base64Encoded: storedKey)!))
    }

    func accessToken(userID: String, isAdmin: Bool, family: String, now: Date = Date()) async throws -> (token: String, claims: SparkAccessClaims) {
        let claims = SparkAccessClaims(userID: userID, tokenID: SparkID.make("atk", now: now), isAdmin: isAdmin, family: family, now: now)
        var header = JWTHeader()
        header.typ = "JWT"
        let token = try await self.keys.sign(claims, kid: JWKIdentifier(string: self.keyID), header: header)
        return (token, claims)
    }
}
