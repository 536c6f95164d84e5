import HTTPTypes
import SwiftProtobuf
import Foundation
import GRPCCore
import JWTKit
import Logging
import SparkKit
import SparkProto
import SparkWire
import Synchronization

/// Turns an `Authorization: Bearer …` credential into a principal, and checks a principal's
/// permission in a project, asking the project service and caching its answers briefly
/// (API keys 5 s, access tokens 2 s, permissions 2 s) so that most requests cost no extra call.
/// A revocation through this gateway takes effect at once; through another gateway within the
/// cache time. That includes a revoked session family (logout, or a refresh token presented
/// twice): access tokens carry their family, and the project service refuses a revoked family's
/// tokens, so they stop working within 2 seconds on every gateway.
final class Authenticator: Sendable {
    private struct CachedPrincipal {
        var principal: Sparkops_Common_V1_Principal
        var until: Date
    }

    private struct CachedDecision {
        var allowed: Bool
        var role: Sparkops_Common_V1_Role
        var until: Date
    }

    private struct State {
        var principals: [String: CachedPrincipal] = [:]
        var decisions: [String: CachedDecision] = [:]
        var knownKeyIDs: Set<String> = []
        var lastKeyRefresh = Date.distantPast
    }

    private let project: Sparkops_Project_V1_ProjectService.SparkWireClient
    private let keys = JWTKeyCollection()
    private let state = Mutex(State())
    private let logger: Logger

    /// Every call the authenticator makes carries this deadline.
    private let options: CallOptions

    init(client: SparkWireChannel, callTimeout: Duration, logger: Logger) {
        self.project = .init(wrapping: client)
        self.logger = logger
        var options = CallOptions.defaults
        options.timeout = callTimeout
        self.options = options
    }

    // MARK: Credentials

    /// The principal of a credential this gateway checked within its cache time, without a call.
    func cachedPrincipal(bearer credential: String) -> Sparkops_Common_V1_Principal? {
        let cacheKey = SparkSecrets.digest(credential)
        guard let cached = self.state.withLock({ $0.principals[cacheKey] }), cached.until > Date() else { return nil }
        return cached.principal
    }

    func authenticate(bearer credential: String, requestMetadata: Metadata) async throws -> Sparkops_Common_V1_Principal {
        try await self.identity(bearer: credential, requestMetadata: requestMetadata).principal
    }

    /// The principal of a credential, with what it takes to check it again later without the
    /// credential itself (a WebSocket's, for as long as it stays open).
    func identity(bearer credential: String, requestMetadata: Metadata) async throws -> SocketIdentity {
        let claims: Sparkops_Project_V1_AccessTokenClaims?
        let request: Sparkops_Project_V1_AuthenticateRequest
        if credential.hasPrefix("spk_") {
            claims = nil
            request = .with { $0.apiKey = credential }
        } else if credential.split(separator: ".", omittingEmptySubsequences: false).count == 3 {
            let verified = try await self.verify(accessToken: credential)
            let tokenClaims = Sparkops_Project_V1_AccessTokenClaims.with {
                $0.userID = verified.sub.value
                $0.tokenID = verified.jti.value
                $0.issueTime = .init(date: verified.iat.value)
                $0.familyID = verified.fam ?? ""
            }
            claims = tokenClaims
            request = .with { $0.accessToken = tokenClaims }
        } else {
            throw APIError(.unauthenticated, "the bearer credential is neither an access token nor an API key", headers: [.wwwAuthenticate: "Bearer"])
        }
        if let principal = self.cachedPrincipal(bearer: credential) {
            return SocketIdentity(principal: principal, claims: claims)
        }
        let principal = try await self.authenticate(request, cacheKey: SparkSecrets.digest(credential), requestMetadata: requestMetadata)
        return SocketIdentity(principal: principal, claims: claims)
    }

    /// Whether an identity still holds: an access token's session not ended (logout, a password
    /// change, a revoked family), asked again at most every 2 seconds; an API key's revocation is
    /// found by ``authorize(_:projectID:permission:fresh:)``, which asks about the key itself.
    func stillValid(_ identity: SocketIdentity) async throws -> Bool {
        guard let claims = identity.claims else { return true }
        do {
            _ = try await self.authenticate(.with { $0.accessToken = claims }, cacheKey: "claims:\(claims.tokenID)", requestMetadata: [:])
            return true
        } catch let error as APIError where error.code == .unauthenticated {
            return false
        }
    }

    private func authenticate(_ request: Sparkops_Project_V1_AuthenticateRequest, cacheKey: String, requestMetadata: Metadata) async throws -> Sparkops_Common_V1_Principal {
        let now = Date()
        if let cached = self.state.withLock({ $0.principals[cacheKey] }), cached.until > now {
            return cached.principal
        }
        do {
            let response = try await self.project.authenticate(request, metadata: requestMetadata, options: self.options)
            let until = min(response.cacheUntil.date, now.addingTimeInterval(5))
            self.state.withLock { state in
                if state.principals.count > 100_000 { state.principals.removeAll() }
                state.principals[cacheKey] = CachedPrincipal(principal: response.principal, until: until)
            }
            return response.principal
        } catch let error as RPCError where error.code == .unauthenticated {
            throw APIError(.unauthenticated, error.message, headers: [.wwwAuthenticate: "Bearer"])
        }
    }

    /// Forgets what the gateway knew of a credential (after a revocation or logout).
    func forget(credential: String) {
        let key = SparkSecrets.digest(credential)
        _ = self.state.withLock { $0.principals.removeValue(forKey: key) }
    }

    /// Forgets every cached principal and decision (after an API key revocation, whose key text
    /// the gateway does not have).
    func forgetAll() {
        self.state.withLock { state in
            state.principals.removeAll()
            state.decisions.removeAll()
        }
    }

    /// Checks an access token: algorithm EdDSA only, a key the project service published, the
    /// signature, and the claims (expiry, not-before, issuer, audience, type).
    private func verify(accessToken token: String) async throws -> SparkAccessClaims {
        let unauthenticated = { (message: String) in APIError(.unauthenticated, message, headers: [.wwwAuthenticate: "Bearer"]) }
        let header = try Self.header(of: token)
        guard header.alg == "EdDSA" else {
            throw unauthenticated("the access token's algorithm \((header.alg ?? "none").debugDescription) is not accepted")
        }
        guard let kid = header.kid else { throw unauthenticated("the access token names no key") }
        if !self.state.withLock({ $0.knownKeyIDs.contains(kid) }) {
            try await self.refreshKeys()
            guard self.state.withLock({ $0.knownKeyIDs.contains(kid) }) else {
                throw unauthenticated("the access token was signed by an unknown key")
            }
        }
        do {
            return try await self.keys.verify(token, as: SparkAccessClaims.self)
        } catch let error as JWTError {
            switch error.errorType {
            case .claimVerificationFailure:
                throw unauthenticated("the access token is expired or not valid here (\(error.reason ?? "claims"))")
            default:
                throw unauthenticated("the access token's signature does not verify")
            }
        } catch {
            throw unauthenticated("the access token does not parse")
        }
    }

    private static func header(of token: String) throws -> (alg: String?, kid: String?) {
        struct Header: Decodable { var alg: String?; var kid: String? }
        let first = token.split(separator: ".", omittingEmptySubsequences: false)[0]
        guard let data = Data(base64URL: String(first)), let header = try? JSONDecoder().decode(Header.self, from: data) else {
            throw APIError(.unauthenticated, "the access token's header does not parse", headers: [.wwwAuthenticate: "Bearer"])
        }
        return (header.alg, header.kid)
    }

    /// Fetches the project service's signing keys; at most once every 10 seconds.
    func refreshKeys() async throws {
        let due = self.state.withLock { state -> Bool in
            guard Date().timeIntervalSince(state.lastKeyRefresh) > 10 else { return false }
            state.lastKeyRefresh = Date()
            return true
        }
        guard due else { return }
        let response = try await self.project.getSigningKeys(.init(), options: self.options)
        for key in try SparkJWKS.decode(response.jwks) {
            await self.keys.add(eddsa: try EdDSA.PublicKey(x: key.x, curve: .ed25519), kid: JWKIdentifier(string: key.id))
            _ = self.state.withLock { $0.knownKeyIDs.insert(key.id) }
        }
    }

    // MARK: Permissions

    /// Whether the principal holds the permission in the project; nil role when it cannot see the project.
    /// `fresh`: ask the project service about an API key too (whether it is still live), rather
    /// than trust the role it carried when it was checked.
    func authorize(_ principal: Sparkops_Common_V1_Principal, projectID: String, permission: String, fresh: Bool = false) async throws -> (allowed: Bool, role: Sparkops_Common_V1_Role) {
        // An API key's project and role travel with it: no call needed.
        if principal.kind == .apiKey && !fresh {
            guard principal.projectID == projectID else { return (false, .unspecified) }
            return (Permission.role(principal.role, allows: permission), principal.role)
        }
        let key = "\(principal.id)|\(projectID)|\(permission)"
        let now = Date()
        if let cached = self.state.withLock({ $0.decisions[key] }), cached.until > now {
            return (cached.allowed, cached.role)
        }
        let response = try await self.project.authorize(.with {
            $0.principal = principal
            $0.projectID = projectID
            $0.permission = permission
        }, options: self.options)
        self.state.withLock { state in
            if state.decisions.count > 100_000 { state.decisions.removeAll() }
            state.decisions[key] = CachedDecision(allowed: response.allowed, role: response.role, until: now.addingTimeInterval(2))
        }
        return (response.allowed, response.role)
    }
}

/// Who a WebSocket is, and how to check that again: a user's access-token claims (not a
/// credential: only the project service takes them, and only from the gateway), or nothing more
/// for an API key, whose project role is asked afresh.
struct SocketIdentity: Sendable {
    var principal: Sparkops_Common_V1_Principal
    var claims: Sparkops_Project_V1_AccessTokenClaims?

    /// As a ticket keeps it: JSON of the two messages' bytes.
    var serialized: [UInt8] {
        var object: [String: String] = [:]
        object["principal"] = ((try? self.principal.serializedBytes()) as [UInt8]?).map { Data($0).base64EncodedString() }
        object["claims"] = self.claims.flatMap { try? $0.serializedBytes() as [UInt8] }.map { Data($0).base64EncodedString() }
        return Array((try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data())
    }

    init(principal: Sparkops_Common_V1_Principal, claims: Sparkops_Project_V1_AccessTokenClaims?) {
        self.principal = principal
        self.claims = claims
    }

    /// Reads ``serialized``, or a principal's bytes alone (as tickets were kept before).
    init(serialized bytes: [UInt8]) throws {
        if let object = try? JSONSerialization.jsonObject(with: Data(bytes)) as? [String: String],
            let principal = object["principal"].flatMap({ Data(base64Encoded: $0) })
        {
            self.principal = try Sparkops_Common_V1_Principal(serializedBytes: principal)
            self.claims = try object["claims"].flatMap { Data(base64Encoded: $0) }.map { try Sparkops_Project_V1_AccessTokenClaims(serializedBytes: $0) }
        } else {
            self.principal = try Sparkops_Common_V1_Principal(serializedBytes: bytes)
            self.claims = nil
        }
    }
}

extension Data {
    init?(base64URL: String) {
        var base64 = base64URL.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        while base64.count % 4 != 0 { base64 += "=" }
        self.init(base64Encoded: base64)
    }
}
