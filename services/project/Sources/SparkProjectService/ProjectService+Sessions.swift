import Foundation
public import GRPCCore
import SQLKit
import SparkKit
public import SparkProto
import SwiftProtobuf
import JWTKit
import Synchronization

/// Sign-in (with its throttle), refresh, logout and the session families they make.
extension ProjectService {
    public func login(
        request: ServerRequest<Sparkops_Project_V1_LoginRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Project_V1_Session> {
        let ip = Self.clientIP(request.metadata)
        let message = request.message
        let generic = SparkError(.unauthenticated, "invalid email or password")
        guard !message.email.isEmpty, !message.password.isEmpty else {
            throw SparkError.invalid(message.email.isEmpty ? "email" : "password", "is required")
        }
        // Over-long fields are refused before any lookup or hashing: they cost nothing to refuse.
        guard message.email.utf8.count <= 254 else { throw SparkError.invalid("email", "must be at most 254 bytes") }
        guard message.password.utf8.count <= 72 else { throw SparkError.invalid("password", "must be at most 72 bytes") }
        let email = message.email.trimmingCharacters(in: .whitespaces).lowercased()
        let (throttle, user) = try await self.store.store.sql { db in
            (
                try await self.store.loginThrottle(email: email, window: self.config.loginFailureWindow, on: db),
                try await self.store.user(email: email, on: db)
            )
        }
        let now = ProjectStore.now()
        if throttle.blockedUntil > now {
            // Paused after repeated failures: refused without checking the password, so that
            // guessing gains nothing; the pause ends by itself.
            let seconds = Int((throttle.blockedUntil - now + 999_999) / 1_000_000)
            let first = self.auditedPauses.withLock { audited -> Bool in
                guard audited[email] != throttle.blockedUntil else { return false }
                if audited.count > 10_000 { audited.removeAll() }
                audited[email] = throttle.blockedUntil
                return true
            }
            if first {
                try await self.store.store.sql { db in
                    try await self.audit(
                        action: "auth.login", target: email, actor: user?.id ?? "anonymous", outcome: "denied", ip: ip,
                        detail: "throttled: \(throttle.failures) failed sign-ins; paused for \(seconds) s more (later attempts in this pause are refused without an event each)",
                        on: db
                    )
                }
            }
            throw SparkError(.resourceExhausted, "too many failed sign-ins for this email; try again in \(seconds) s", retryAfterSeconds: seconds)
        }
        // The same bcrypt work whether or not the user exists.
        let matches = try await SparkSecrets.verifyPassword(message.password, hash: user?.passwordHash ?? self.dummyHash)
        guard let user, matches else {
            try await self.store.store.transaction { db in
                let failures = try await self.store.recordLoginFailure(email: email, window: self.config.loginFailureWindow, on: db)
                let delay = self.config.loginDelay(afterFailures: failures)
                var detail = "\(failures) failed sign-ins"
                if delay > 0 {
                    try await self.store.pauseLogins(email: email, until: now + delay, on: db)
                    detail += "; sign-in paused for \(delay / 1_000_000) s"
                }
                try await self.audit(action: "auth.login", target: email, actor: user?.id ?? "anonymous", outcome: "failed", ip: ip, detail: detail, on: db)
            }
            throw generic
        }
        let session = try await self.store.store.transaction { db in
            try await self.store.clearLoginFailures(email: email, on: db)
            let session = try await self.issueSession(for: user, family: SparkID.make("fam"), on: db)
            try await self.audit(action: "auth.login", target: email, actor: user.id, ip: ip, on: db)
            return session
        }
        return ServerResponse(message: session)
    }

    public func refresh(
        request: ServerRequest<Sparkops_Project_V1_RefreshRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Project_V1_Session> {
        let token = request.message.refreshToken
        guard !token.isEmpty else { throw SparkError.invalid("refresh_token", "is required") }
        let invalid = SparkError(.unauthenticated, "the refresh token is invalid or expired")
        let ip = Self.clientIP(request.metadata)
        enum Outcome: Sendable { case session(Sparkops_Project_V1_Session), reused, invalid }
        let outcome = try await self.store.store.transaction { db -> Outcome in
            guard let row = try await self.store.refreshToken(hash: SparkSecrets.digest(token), on: db) else { return .invalid }
            let now = ProjectStore.now()
            if row.revokedAt != nil || row.expiresAt < now { return .invalid }
            guard row.usedAt == nil, try await self.store.markRefreshTokenUsed(id: row.id, at: now, on: db) else {
                // A used token came back: it was stolen or replayed. End the whole session family.
                try await self.store.revokeRefreshFamily(row.familyID, at: now, on: db)
                try await self.audit(action: "auth.refresh_reuse", target: row.familyID, actor: row.userID, outcome: "denied", ip: ip, detail: "a used refresh token was presented; the session was revoked", on: db)
                return .reused
            }
            guard let user = try await self.store.user(id: row.userID, on: db) else { return .invalid }
            let session = try await self.issueSession(for: user, family: row.familyID, on: db)
            try await self.audit(action: "auth.refresh", target: row.familyID, actor: user.id, ip: ip, on: db)
            return .session(session)
        }
        switch outcome {
        case .session(let session): return ServerResponse(message: session)
        case .reused, .invalid: throw invalid
        }
    }

    public func logout(
        request: ServerRequest<Sparkops_Project_V1_LogoutRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Project_V1_LogoutResponse> {
        let principal = try Sparkops_Common_V1_Principal.required(request.metadata)
        guard principal.kind == .user else { throw SparkError(.failedPrecondition, "API keys have no session to end") }
        let ip = Self.clientIP(request.metadata)
        try await self.store.store.transaction { db in
            let now = ProjectStore.now()
            if !request.message.refreshToken.isEmpty,
                let row = try await self.store.refreshToken(hash: SparkSecrets.digest(request.message.refreshToken), on: db),
                row.userID == principal.userID
            {
                try await self.store.revokeRefreshFamily(row.familyID, at: now, on: db)
            }
            if !principal.tokenID.isEmpty {
                let expires = now + Int64(SparkAccessClaims.lifetime * 1_000_000) + 60_000_000
                try await self.store.revokeAccessToken(principal.tokenID, expiresAt: expires, on: db)
            }
            try await self.audit(action: "auth.logout", target: principal.userID, actor: principal.userID, ip: ip, on: db)
        }
        return ServerResponse(message: .init())
    }

    func issueSession(for user: UserRow, family: String, on db: any SQLDatabase) async throws -> Sparkops_Project_V1_Session {
        guard let issuer = self.tokens.issuer else { throw SparkError(.unavailable, "the service is starting") }
        let (accessToken, claims) = try await issuer.accessToken(userID: user.id, isAdmin: user.isAdmin, family: family)
        let refreshToken = SparkSecrets.token(prefix: "rtk_")
        let now = ProjectStore.now()
        let expires = now + self.config.refreshTokenLifetime
        try await self.store.insertRefreshToken(
            id: SparkID.make("rtk"),
            userID: user.id,
            familyID: family,
            hash: SparkSecrets.digest(refreshToken),
            createdAt: now,
            expiresAt: expires,
            on: db
        )
        return .with {
            $0.accessToken = accessToken
            $0.accessTokenExpireTime = Google_Protobuf_Timestamp(date: claims.exp.value)
            $0.refreshToken = refreshToken
            $0.refreshTokenExpireTime = .init(microseconds: expires)
            $0.tokenType = "Bearer"
            $0.user = Self.userMessage(user)
        }
    }

    public func clearLoginThrottle(
        request: ServerRequest<Sparkops_Project_V1_ClearLoginThrottleRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Project_V1_ClearLoginThrottleResponse> {
        let principal = try Sparkops_Common_V1_Principal.required(request.metadata)
        guard principal.kind == .user, principal.isAdmin else {
            throw SparkError(.permissionDenied, "only administrators clear sign-in throttles")
        }
        let email = try Validate.email(request.message.email)
        let cleared = try await self.store.store.transaction { db in
            let cleared = try await self.store.clearLoginFailures(email: email, on: db)
            try await self.audit(action: "auth.throttle_clear", target: email, actor: principal.id, ip: Self.clientIP(request.metadata), detail: "\(cleared) failed sign-ins forgotten", on: db)
            return cleared
        }
        return ServerResponse(message: .with { $0.clearedFailures = Int32(clamping: cleared) })
    }
}
