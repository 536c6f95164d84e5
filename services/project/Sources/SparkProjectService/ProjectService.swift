import Foundation
public import GRPCCore
public import Logging
import SQLKit
public import SparkKit
public import SparkProto
import SwiftProtobuf
import JWTKit
import Synchronization

/// `sparkops.project.v1.ProjectService`: users, projects, memberships and roles, API keys,
/// sessions (access and refresh tokens) and the audit log.
///
/// Calls from the gateway carry the end user in `sparkops-principal-bin` metadata; every RPC that
/// touches a project checks the principal's role there itself, even though the gateway checked
/// first. A project the principal cannot see answers NOT_FOUND, so that its existence does not leak.
public final class ProjectService: Sparkops_Project_V1_ProjectService.ServiceProtocol {
    let store: ProjectStore
    let config: ProjectServiceConfig
    let logger: Logger
    let tokens: TokenIssuerBox

    /// A bcrypt hash of a random password, checked for unknown emails so that a login for an
    /// address that has no user takes as long as one that has.
    let dummyHash: String

    /// The pause (email → its end) whose refused sign-ins this replica has audited: one event per
    /// pause, so that a flood of attempts on a paused email cannot flood the log.
    let auditedPauses = Mutex<[String: Int64]>([:])

    public init(store: SparkStore, config: ProjectServiceConfig, logger: Logger) async throws {
        self.store = ProjectStore(store: store)
        self.config = config
        self.logger = logger
        self.tokens = TokenIssuerBox()
        self.dummyHash = try await SparkSecrets.hashPassword(SparkSecrets.token(prefix: ""), cost: config.bcryptCost)
    }

    /// Loads the signing key and creates the first administrator if there are no users.
    /// Returns the generated administrator password, if one was generated.
    public func prepare() async throws -> String? {
        self.tokens.set(try await TokenIssuer.load(self.store))
        let count = try await self.store.store.sql { try await self.store.userCount(on: $0) }
        guard count == 0 else { return nil }
        let generated = self.config.adminPassword == nil ? SparkSecrets.token(prefix: "").prefix(24).description : nil
        let password = self.config.adminPassword ?? generated!
        try Validate.password(password, field: "SPARKOPS_ADMIN_PASSWORD")
        let email = try Validate.email(self.config.adminEmail, field: "admin.email")
        let user = UserRow(
            id: SparkID.make("usr"),
            email: email,
            displayName: "Administrator",
            passwordHash: try await SparkSecrets.hashPassword(password, cost: self.config.bcryptCost),
            isAdmin: true,
            tokensNotBefore: 0,
            createdAt: ProjectStore.now()
        )
        try await self.store.store.transaction { db in
            guard try await self.store.userCount(on: db) == 0 else { return }
            try await self.store.insertUser(user, on: db)
            try await self.audit(action: "user.create", target: user.id, actor: "system", detail: "first administrator \(email)", on: db)
        }
        return generated
    }

    // MARK: Helpers

    /// The principal's role in the project, or nil when it is not a member (or the key is for another project).
    func role(of principal: Sparkops_Common_V1_Principal, in projectID: String, on db: any SQLDatabase) async throws -> Sparkops_Common_V1_Role? {
        switch principal.kind {
        case .apiKey:
            guard principal.projectID == projectID, try await self.store.project(id: projectID, on: db) != nil else { return nil }
            // The key itself must still be live: a principal checked before a revocation (an
            // open WebSocket's, say) loses its access with the key.
            guard let key = try await self.store.apiKey(id: principal.id, projectID: projectID, on: db),
                key.revokedAt == nil, key.expiresAt > ProjectStore.now()
            else { return nil }
            return principal.role
        case .user:
            return try await self.store.role(userID: principal.userID, projectID: projectID, on: db)
        default:
            return nil
        }
    }

    /// The principal's role if it holds `permission` in the project; NOT_FOUND when it cannot see
    /// the project at all, PERMISSION_DENIED when it can but lacks the permission.
    func requireRole(_ principal: Sparkops_Common_V1_Principal, projectID: String, permission: String, on db: any SQLDatabase) async throws -> Sparkops_Common_V1_Role {
        guard let role = try await self.role(of: principal, in: projectID, on: db) else {
            throw SparkError.notFound("project")
        }
        try Self.require(role, allows: permission)
        return role
    }

    static func require(_ role: Sparkops_Common_V1_Role, allows permission: String) throws {
        guard Permission.role(role, allows: permission) else {
            throw SparkError(.permissionDenied, "\(permission) needs a higher role than \(role.name)")
        }
    }

    func audit(
        projectID: String = "",
        action: String,
        target: String,
        actor: String,
        outcome: String = "success",
        ip: String = "",
        detail: String = "",
        on db: any SQLDatabase
    ) async throws {
        try await self.store.appendAudit(.with {
            $0.projectID = projectID
            $0.actor = actor
            $0.action = action
            $0.target = target
            $0.outcome = outcome
            $0.ip = ip
            $0.detail = detail
        }, on: db)
    }

    static func clientIP(_ metadata: Metadata) -> String {
        metadata[stringValues: "sparkops-client-ip"].first(where: { _ in true }) ?? ""
    }

    static func userMessage(_ user: UserRow) -> Sparkops_Project_V1_User {
        .with {
            $0.id = user.id
            $0.email = user.email
            $0.displayName = user.displayName
            $0.isAdmin = user.isAdmin
            $0.createTime = .init(microseconds: user.createdAt)
        }
    }

    static func projectMessage(_ project: ProjectRow) -> Sparkops_Project_V1_Project {
        .with {
            $0.id = project.id
            $0.name = project.name
            $0.description_p = project.description
            $0.createTime = .init(microseconds: project.createdAt)
            $0.updateTime = .init(microseconds: project.updatedAt)
            $0.createdBy = project.createdBy
        }
    }

    static func apiKeyMessage(_ key: APIKeyRow) -> Sparkops_Project_V1_ApiKey {
        .with {
            $0.id = key.id
            $0.projectID = key.projectID
            $0.name = key.name
            $0.role = Sparkops_Common_V1_Role(rawValue: key.role) ?? .unspecified
            $0.prefix = key.prefix
            $0.createTime = .init(microseconds: key.createdAt)
            $0.expireTime = .init(microseconds: key.expiresAt)
            if let revoked = key.revokedAt { $0.revokeTime = .init(microseconds: revoked) }
            if let used = key.lastUsedAt { $0.lastUseTime = .init(microseconds: used) }
            $0.createdBy = key.createdBy
        }
    }
}

/// The token issuer, set once the signing key is loaded.
final class TokenIssuerBox: Sendable {
    private let value = Mutex<TokenIssuer?>(nil)
    var issuer: TokenIssuer? { self.value.withLock { $0 } }
    func set(_ issuer: TokenIssuer) { self.value.withLock { $0 = issuer } }
}

