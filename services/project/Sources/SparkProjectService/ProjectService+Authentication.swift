import Foundation
public import GRPCCore
import SQLKit
import SparkKit
public import SparkProto
import SwiftProtobuf

/// Internal: credentials to principals, permissions, signing keys (for the gateway).
extension ProjectService {
    public func authenticate(
        request: ServerRequest<Sparkops_Project_V1_AuthenticateRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Project_V1_AuthenticateResponse> {
        let invalid = SparkError(.unauthenticated, "the credential is invalid, expired or revoked")
        switch request.message.credential {
        case .apiKey(let key):
            guard key.hasPrefix("spk_") else { throw invalid }
            let now = ProjectStore.now()
            let found = try await self.store.store.sql { try await self.store.apiKey(hash: SparkSecrets.digest(key), on: $0) }
            // A key never holds more than its creator holds in the project now: it acts with the
            // lesser of the two roles, and not at all once the creator has left.
            guard let (row, creatorRole) = found, row.revokedAt == nil, row.expiresAt > now, let creatorRole else { throw invalid }
            if (row.lastUsedAt ?? 0) < now - 60_000_000 {
                try await self.store.store.sql { try await self.store.touchAPIKey(id: row.id, at: now, on: $0) }
            }
            return ServerResponse(message: .with {
                $0.principal = .with {
                    $0.kind = .apiKey
                    $0.id = row.id
                    $0.userID = row.createdBy
                    $0.projectID = row.projectID
                    $0.role = Permission.lesser(Sparkops_Common_V1_Role(rawValue: row.role) ?? .unspecified, creatorRole)
                }
                $0.cacheUntil = .init(microseconds: min(row.expiresAt, now + 5_000_000))
            })
        case .accessToken(let claims):
            let (user, revoked) = try await self.store.store.sql { db in
                (
                    try await self.store.user(id: claims.userID, on: db),
                    try await self.store.isAccessTokenRevoked(claims.tokenID, family: claims.familyID, on: db)
                )
            }
            guard let user, !revoked else { throw invalid }
            // A password change (or logout of every session) ends the tokens issued before it.
            guard user.tokensNotBefore == 0 || claims.issueTime.microseconds > user.tokensNotBefore else { throw invalid }
            return ServerResponse(message: .with {
                $0.principal = .with {
                    $0.kind = .user
                    $0.id = user.id
                    $0.userID = user.id
                    $0.isAdmin = user.isAdmin
                    $0.tokenID = claims.tokenID
                }
                $0.cacheUntil = .init(microseconds: ProjectStore.now() + 2_000_000)
            })
        case .none:
            throw SparkError.invalid("credential", "api_key or access_token is required")
        }
    }

    public func authorize(
        request: ServerRequest<Sparkops_Project_V1_AuthorizeRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Project_V1_AuthorizeResponse> {
        let message = request.message
        guard Permission.minimumRole[message.permission] != nil else {
            throw SparkError.invalid("permission", "unknown permission \(message.permission.debugDescription)")
        }
        let role = try await self.store.store.sql { db in
            try await self.role(of: message.principal, in: message.projectID, on: db)
        }
        return ServerResponse(message: .with {
            $0.role = role ?? .unspecified
            $0.allowed = role.map { Permission.role($0, allows: message.permission) } ?? false
        })
    }

    public func getSigningKeys(
        request: ServerRequest<Sparkops_Project_V1_GetSigningKeysRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Project_V1_GetSigningKeysResponse> {
        guard let issuer = self.tokens.issuer else { throw SparkError(.unavailable, "the service is starting") }
        return ServerResponse(message: .with { $0.jwks = issuer.jwks })
    }
}
