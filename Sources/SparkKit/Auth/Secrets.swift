import Foundation
import Crypto
import NIOPosix
import HummingbirdBcrypt

/// Random tokens, their SHA-256 digests, and bcrypt password hashes.
public enum SparkSecrets {
    /// `prefix` and 32 random bytes in base64url, such as `spk_…` for API keys.
    public static func token(prefix: String) -> String {
        prefix + SparkJWKS.base64URL(Data(SparkRandom.bytes(32)))
    }

    /// The SHA-256 of a token, in hex: what is stored instead of the token.
    public static func digest(_ token: String) -> String {
        SparkHex.encode(SHA256.hash(data: Data(token.utf8)))
    }

    /// A bcrypt hash, computed on NIO's thread pool so that no event loop or task executor blocks.
    public static func hashPassword(_ password: String, cost: UInt8) async throws -> String {
        try await NIOThreadPool.singleton.runIfActive { Bcrypt.hash(password, cost: cost) }
    }

    /// Checks a password against a bcrypt hash, on NIO's thread pool.
    public static func verifyPassword(_ password: String, hash: String) async throws -> Bool {
        try await NIOThreadPool.singleton.runIfActive { Bcrypt.verify(password, hash: hash) }
    }

    /// Compares two strings in time that depends only on their length.
    public static func constantTimeEqual(_ a: String, _ b: String) -> Bool {
        let x = Array(a.utf8)
        let y = Array(b.utf8)
        guard x.count == y.count else { return false }
        var difference: UInt8 = 0
        for index in x.indices { difference |= x[index] ^ y[index] }
        return difference == 0
    }
}
