import Foundation
public import GRPCCore
public import Logging
import SQLKit
public import SparkKit
public import SparkProto
import SwiftProtobuf
import JWTKit

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
    private let tokens: TokenIssuerBox

    /// A bcrypt hash of a random password, checked for unknown emails so that a login for an
    /// address that has no user takes as long as one that has.
    private let dummyHash: String

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

    // MARK: Sessions

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
            try await self.store.store.sql { db in
                try await self.audit(action: "auth.login", target: email, actor: user?.id ?? "anonymous", outcome: "denied", ip: ip, detail: "throttled: \(throttle.failures) failed sign-ins; paused for \(seconds) s more", on: db)
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

    private func issueSession(for user: UserRow, family: String, on db: any SQLDatabase) async throws -> Sparkops_Project_V1_Session {
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

    // MARK: Users

    public func createUser(
        request: ServerRequest<Sparkops_Project_V1_CreateUserRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Project_V1_User> {
        let principal = try Sparkops_Common_V1_Principal.required(request.metadata)
        guard principal.kind == .user, principal.isAdmin else {
            throw SparkError(.permissionDenied, "only administrators create users")
        }
        let message = request.message
        let email = try Validate.email(message.email)
        let displayName = try Validate.name(message.displayName.isEmpty ? email : message.displayName, field: "display_name")
        try Validate.password(message.password, field: "password")
        let user = UserRow(
            id: SparkID.make("usr"),
            email: email,
            displayName: displayName,
            passwordHash: try await SparkSecrets.hashPassword(message.password, cost: self.config.bcryptCost),
            isAdmin: message.isAdmin,
            tokensNotBefore: 0,
            createdAt: ProjectStore.now()
        )
        try await self.store.store.transaction { db in
            if try await self.store.user(email: email, on: db) != nil {
                throw SparkError(.alreadyExists, "a user with this email already exists", field: "email")
            }
            try await self.store.insertUser(user, on: db)
            try await self.audit(action: "user.create", target: user.id, actor: principal.id, ip: Self.clientIP(request.metadata), detail: email, on: db)
        }
        return ServerResponse(message: Self.userMessage(user))
    }

    public func getCurrentUser(
        request: ServerRequest<Sparkops_Project_V1_GetCurrentUserRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Project_V1_User> {
        let principal = try Sparkops_Common_V1_Principal.required(request.metadata)
        guard let user = try await self.store.store.sql({ try await self.store.user(id: principal.userID, on: $0) }) else {
            throw SparkError.notFound("user")
        }
        return ServerResponse(message: Self.userMessage(user))
    }

    public func changePassword(
        request: ServerRequest<Sparkops_Project_V1_ChangePasswordRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Project_V1_ChangePasswordResponse> {
        let principal = try Sparkops_Common_V1_Principal.required(request.metadata)
        guard principal.kind == .user else { throw SparkError(.failedPrecondition, "API keys have no password") }
        try Validate.password(request.message.newPassword, field: "new_password")
        guard let user = try await self.store.store.sql({ try await self.store.user(id: principal.userID, on: $0) }) else {
            throw SparkError.notFound("user")
        }
        guard try await SparkSecrets.verifyPassword(request.message.currentPassword, hash: user.passwordHash) else {
            throw SparkError(.permissionDenied, "current_password: does not match", field: "current_password")
        }
        let hash = try await SparkSecrets.hashPassword(request.message.newPassword, cost: self.config.bcryptCost)
        try await self.store.store.transaction { db in
            let now = ProjectStore.now()
            // Every access token issued until now stops working, and every session ends.
            try await self.store.setPassword(userID: user.id, hash: hash, notBefore: now, on: db)
            try await self.store.revokeRefreshTokens(userID: user.id, at: now, on: db)
            try await self.audit(action: "user.password_change", target: user.id, actor: user.id, ip: Self.clientIP(request.metadata), on: db)
        }
        return ServerResponse(message: .init())
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

    // MARK: Projects

    public func createProject(
        request: ServerRequest<Sparkops_Project_V1_CreateProjectRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Project_V1_Project> {
        let principal = try Sparkops_Common_V1_Principal.required(request.metadata)
        guard principal.kind == .user else { throw SparkError(.permissionDenied, "API keys cannot create projects") }
        let name = try Validate.name(request.message.name, field: "name")
        let description = try Validate.text(request.message.description_p, field: "description", maximum: 2000)
        let now = ProjectStore.now()
        let project = ProjectRow(id: SparkID.make("prj"), name: name, description: description, createdBy: principal.userID, createdAt: now, updatedAt: now)
        try await self.store.store.transaction { db in
            try await self.store.lockUser(principal.userID, on: db)
            if try await self.store.projectNameTaken(name, visibleTo: principal.userID, on: db) {
                throw SparkError(.alreadyExists, "you already have a project named \(name.debugDescription)", field: "name")
            }
            try await self.store.insertProject(project, on: db)
            try await self.store.upsertMember(projectID: project.id, userID: principal.userID, role: .owner, at: now, on: db)
            try await self.audit(projectID: project.id, action: "project.create", target: project.id, actor: principal.id, ip: Self.clientIP(request.metadata), detail: name, on: db)
        }
        return ServerResponse(message: Self.projectMessage(project))
    }

    public func getProject(
        request: ServerRequest<Sparkops_Project_V1_GetProjectRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Project_V1_Project> {
        let principal = try Sparkops_Common_V1_Principal.required(request.metadata)
        let projectID = request.message.projectID
        try Validate.id(projectID, prefix: "prj", field: "project_id")
        // The gateway's most frequent read: one query for the project and the caller's role.
        let (project, role) = try await self.store.store.sql { db -> (ProjectRow, Sparkops_Common_V1_Role) in
            switch principal.kind {
            case .apiKey where principal.projectID == projectID:
                guard let project = try await self.store.project(id: projectID, on: db) else { throw SparkError.notFound("project") }
                return (project, principal.role)
            case .user:
                guard let found = try await self.store.project(id: projectID, memberUserID: principal.userID, on: db) else {
                    throw SparkError.notFound("project")
                }
                return found
            default:
                throw SparkError.notFound("project")
            }
        }
        try Self.require(role, allows: "project.read")
        return ServerResponse(message: Self.projectMessage(project))
    }

    public func listProjects(
        request: ServerRequest<Sparkops_Project_V1_ListProjectsRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Project_V1_ListProjectsResponse> {
        let principal = try Sparkops_Common_V1_Principal.required(request.metadata)
        let (limit, after) = try Validate.page(size: request.message.pageSize, token: request.message.pageToken)
        let projects = try await self.store.store.sql { db -> [ProjectRow] in
            if principal.kind == .apiKey {
                // A key sees its own project only.
                guard principal.projectID > after, let project = try await self.store.project(id: principal.projectID, on: db) else { return [] }
                return [project]
            }
            return try await self.store.projects(memberUserID: principal.userID, after: after, limit: limit, on: db)
        }
        return ServerResponse(message: .with {
            $0.projects = projects.map(Self.projectMessage)
            $0.nextPageToken = Validate.pageToken(lastID: projects.last?.id, count: projects.count, limit: limit)
        })
    }

    public func updateProject(
        request: ServerRequest<Sparkops_Project_V1_UpdateProjectRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Project_V1_Project> {
        let principal = try Sparkops_Common_V1_Principal.required(request.metadata)
        let message = request.message
        try Validate.id(message.projectID, prefix: "prj", field: "project_id")
        let mask = try UpdateMask(message.updateMask, allowed: ["name", "description"])
        let project = try await self.store.store.transaction { db -> ProjectRow in
            _ = try await self.requireRole(principal, projectID: message.projectID, permission: "project.update", on: db)
            guard var project = try await self.store.project(id: message.projectID, on: db) else { throw SparkError.notFound("project") }
            guard !mask.isEmpty else { return project }
            if mask.contains("name") {
                project.name = try Validate.name(message.name, field: "name")
                try await self.store.lockUser(principal.userID, on: db)
                if try await self.store.projectNameTaken(project.name, visibleTo: principal.userID, except: project.id, on: db) {
                    throw SparkError(.alreadyExists, "you already have a project named \(project.name.debugDescription)", field: "name")
                }
            }
            if mask.contains("description") {
                project.description = try Validate.text(message.description_p, field: "description", maximum: 2000)
            }
            project.updatedAt = ProjectStore.now()
            try await self.store.updateProject(project, on: db)
            try await self.audit(projectID: project.id, action: "project.update", target: project.id, actor: principal.id, ip: Self.clientIP(request.metadata), detail: mask.fields.sorted().joined(separator: ","), on: db)
            return project
        }
        return ServerResponse(message: Self.projectMessage(project))
    }

    public func deleteProject(
        request: ServerRequest<Sparkops_Project_V1_DeleteProjectRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Project_V1_DeleteProjectResponse> {
        let principal = try Sparkops_Common_V1_Principal.required(request.metadata)
        let projectID = request.message.projectID
        try Validate.id(projectID, prefix: "prj", field: "project_id")
        try await self.store.store.transaction { db in
            _ = try await self.requireRole(principal, projectID: projectID, permission: "project.delete", on: db)
            try await self.store.deleteProject(id: projectID, at: ProjectStore.now(), on: db)
            try await self.audit(projectID: projectID, action: "project.delete", target: projectID, actor: principal.id, ip: Self.clientIP(request.metadata), on: db)
        }
        return ServerResponse(message: .init())
    }

    // MARK: Members

    public func addMember(
        request: ServerRequest<Sparkops_Project_V1_AddMemberRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Project_V1_Member> {
        let principal = try Sparkops_Common_V1_Principal.required(request.metadata)
        let message = request.message
        try Validate.id(message.projectID, prefix: "prj", field: "project_id")
        guard message.role != .unspecified, Sparkops_Common_V1_Role.allCases.contains(message.role) else {
            throw SparkError.invalid("role", "must be one of viewer, runner, approver, editor, admin, owner")
        }
        guard !message.userID.isEmpty || !message.email.isEmpty else { throw SparkError.invalid("user_id", "user_id or email is required") }
        let member = try await self.store.store.transaction { db -> Sparkops_Project_V1_Member in
            let callerRole = try await self.requireRole(principal, projectID: message.projectID, permission: "member.manage", on: db)
            guard message.role.rawValue <= callerRole.rawValue else {
                throw SparkError(.permissionDenied, "role: you cannot grant a role above your own (\(callerRole.name))", field: "role")
            }
            let user: UserRow?
            if !message.userID.isEmpty {
                try Validate.id(message.userID, prefix: "usr", field: "user_id")
                user = try await self.store.user(id: message.userID, on: db)
            } else {
                user = try await self.store.user(email: try Validate.email(message.email), on: db)
            }
            guard let user else { throw SparkError(.notFound, "user not found", field: message.userID.isEmpty ? "email" : "user_id") }
            if let current = try await self.store.role(userID: user.id, projectID: message.projectID, on: db) {
                guard Permission.role(callerRole, mayManage: current) else {
                    throw SparkError(.permissionDenied, "you cannot change the role of a member whose role (\(current.name)) is above yours (\(callerRole.name))")
                }
                if current == .owner, message.role != .owner, try await self.store.ownerCount(projectID: message.projectID, on: db) <= 1 {
                    throw SparkError(.failedPrecondition, "a project keeps at least one owner")
                }
            }
            let now = ProjectStore.now()
            try await self.store.upsertMember(projectID: message.projectID, userID: user.id, role: message.role, at: now, on: db)
            try await self.audit(projectID: message.projectID, action: "member.add", target: user.id, actor: principal.id, ip: Self.clientIP(request.metadata), detail: message.role.name, on: db)
            return .with {
                $0.projectID = message.projectID
                $0.userID = user.id
                $0.email = user.email
                $0.role = message.role
                $0.createTime = .init(microseconds: now)
            }
        }
        return ServerResponse(message: member)
    }

    public func listMembers(
        request: ServerRequest<Sparkops_Project_V1_ListMembersRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Project_V1_ListMembersResponse> {
        let principal = try Sparkops_Common_V1_Principal.required(request.metadata)
        let message = request.message
        try Validate.id(message.projectID, prefix: "prj", field: "project_id")
        let (limit, after) = try Validate.page(size: message.pageSize, token: message.pageToken)
        let members = try await self.store.store.sql { db in
            _ = try await self.requireRole(principal, projectID: message.projectID, permission: "project.read", on: db)
            return try await self.store.members(projectID: message.projectID, after: after, limit: limit, on: db)
        }
        return ServerResponse(message: .with {
            $0.members = members
            $0.nextPageToken = Validate.pageToken(lastID: members.last?.userID, count: members.count, limit: limit)
        })
    }

    public func removeMember(
        request: ServerRequest<Sparkops_Project_V1_RemoveMemberRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Project_V1_RemoveMemberResponse> {
        let principal = try Sparkops_Common_V1_Principal.required(request.metadata)
        let message = request.message
        try Validate.id(message.projectID, prefix: "prj", field: "project_id")
        try Validate.id(message.userID, prefix: "usr", field: "user_id")
        try await self.store.store.transaction { db in
            let callerRole = try await self.requireRole(principal, projectID: message.projectID, permission: "member.manage", on: db)
            guard let role = try await self.store.role(userID: message.userID, projectID: message.projectID, on: db) else {
                throw SparkError.notFound("member")
            }
            guard Permission.role(callerRole, mayManage: role) else {
                throw SparkError(.permissionDenied, "you cannot remove a member whose role (\(role.name)) is above yours (\(callerRole.name))")
            }
            if role == .owner, try await self.store.ownerCount(projectID: message.projectID, on: db) <= 1 {
                throw SparkError(.failedPrecondition, "a project keeps at least one owner")
            }
            let now = ProjectStore.now()
            _ = try await self.store.removeMember(projectID: message.projectID, userID: message.userID, on: db)
            // Keys never hold more than their creator: one who leaves takes their keys along.
            let revoked = try await self.store.revokeAPIKeys(createdBy: message.userID, projectID: message.projectID, at: now, on: db)
            let detail = revoked.isEmpty ? "" : "revoked the member's keys: \(revoked.joined(separator: ","))"
            try await self.audit(projectID: message.projectID, action: "member.remove", target: message.userID, actor: principal.id, ip: Self.clientIP(request.metadata), detail: detail, on: db)
        }
        return ServerResponse(message: .init())
    }

    // MARK: API keys

    public func createApiKey(
        request: ServerRequest<Sparkops_Project_V1_CreateApiKeyRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Project_V1_CreateApiKeyResponse> {
        let principal = try Sparkops_Common_V1_Principal.required(request.metadata)
        let message = request.message
        try Validate.id(message.projectID, prefix: "prj", field: "project_id")
        let name = try Validate.name(message.name, field: "name")
        guard message.role != .unspecified, Sparkops_Common_V1_Role.allCases.contains(message.role) else {
            throw SparkError.invalid("role", "must be one of viewer, runner, approver, editor, admin, owner")
        }
        guard message.ttlDays >= 0 && message.ttlDays <= 730 else { throw SparkError.invalid("ttl_days", "must be between 0 and 730") }
        let key = SparkSecrets.token(prefix: "spk_")
        let now = ProjectStore.now()
        let days = Int64(message.ttlDays == 0 ? 90 : message.ttlDays)
        let row = APIKeyRow(
            id: SparkID.make("key"),
            projectID: message.projectID,
            name: name,
            role: message.role.rawValue,
            prefix: String(key.prefix(12)),
            createdBy: principal.userID,
            createdAt: now,
            expiresAt: now + days * 86_400 * 1_000_000,
            revokedAt: nil,
            lastUsedAt: nil
        )
        try await self.store.store.transaction { db in
            let callerRole = try await self.requireRole(principal, projectID: message.projectID, permission: "apikey.manage", on: db)
            guard message.role.rawValue <= callerRole.rawValue else {
                throw SparkError(.permissionDenied, "role: a key cannot have a role above yours (\(callerRole.name))", field: "role")
            }
            try await self.store.insertAPIKey(row, hash: SparkSecrets.digest(key), on: db)
            try await self.audit(projectID: message.projectID, action: "apikey.create", target: row.id, actor: principal.id, ip: Self.clientIP(request.metadata), detail: "\(name) (\(message.role.name))", on: db)
        }
        return ServerResponse(message: .with {
            $0.apiKey = Self.apiKeyMessage(row)
            $0.key = key
        })
    }

    public func listApiKeys(
        request: ServerRequest<Sparkops_Project_V1_ListApiKeysRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Project_V1_ListApiKeysResponse> {
        let principal = try Sparkops_Common_V1_Principal.required(request.metadata)
        let message = request.message
        try Validate.id(message.projectID, prefix: "prj", field: "project_id")
        let (limit, after) = try Validate.page(size: message.pageSize, token: message.pageToken)
        let keys = try await self.store.store.sql { db in
            _ = try await self.requireRole(principal, projectID: message.projectID, permission: "apikey.manage", on: db)
            return try await self.store.apiKeys(projectID: message.projectID, after: after, limit: limit, on: db)
        }
        return ServerResponse(message: .with {
            $0.apiKeys = keys.map(Self.apiKeyMessage)
            $0.nextPageToken = Validate.pageToken(lastID: keys.last?.id, count: keys.count, limit: limit)
        })
    }

    public func revokeApiKey(
        request: ServerRequest<Sparkops_Project_V1_RevokeApiKeyRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Project_V1_ApiKey> {
        let principal = try Sparkops_Common_V1_Principal.required(request.metadata)
        let message = request.message
        try Validate.id(message.projectID, prefix: "prj", field: "project_id")
        try Validate.id(message.apiKeyID, prefix: "key", field: "api_key_id")
        let key = try await self.store.store.transaction { db -> APIKeyRow in
            let callerRole = try await self.requireRole(principal, projectID: message.projectID, permission: "apikey.manage", on: db)
            guard var key = try await self.store.apiKey(id: message.apiKeyID, projectID: message.projectID, on: db) else {
                throw SparkError.notFound("API key")
            }
            let keyRole = Sparkops_Common_V1_Role(rawValue: key.role) ?? .unspecified
            guard Permission.role(callerRole, mayManage: keyRole) else {
                throw SparkError(.permissionDenied, "you cannot revoke a key whose role (\(keyRole.name)) is above yours (\(callerRole.name))")
            }
            if key.revokedAt == nil {
                let now = ProjectStore.now()
                try await self.store.revokeAPIKey(id: key.id, at: now, on: db)
                key.revokedAt = now
                try await self.audit(projectID: message.projectID, action: "apikey.revoke", target: key.id, actor: principal.id, ip: Self.clientIP(request.metadata), on: db)
            }
            return key
        }
        return ServerResponse(message: Self.apiKeyMessage(key))
    }

    // MARK: Audit

    public func listAuditEvents(
        request: ServerRequest<Sparkops_Project_V1_ListAuditEventsRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Project_V1_ListAuditEventsResponse> {
        let principal = try Sparkops_Common_V1_Principal.required(request.metadata)
        let message = request.message
        try Validate.id(message.projectID, prefix: "prj", field: "project_id")
        let (limit, before) = try Validate.page(size: message.pageSize, token: message.pageToken)
        let events = try await self.store.store.sql { db in
            _ = try await self.requireRole(principal, projectID: message.projectID, permission: "audit.read", on: db)
            return try await self.store.auditEvents(projectID: message.projectID, action: message.action, before: before, limit: limit, on: db)
        }
        return ServerResponse(message: .with {
            $0.events = events
            $0.nextPageToken = Validate.pageToken(lastID: events.last?.id, count: events.count, limit: limit)
        })
    }

    public func recordAuditEvent(
        request: ServerRequest<Sparkops_Project_V1_RecordAuditEventRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Project_V1_RecordAuditEventResponse> {
        let event = request.message.event
        guard !event.action.isEmpty else { throw SparkError.invalid("event.action", "is required") }
        guard ["success", "denied", "failed"].contains(event.outcome) else {
            throw SparkError.invalid("event.outcome", "must be success, denied or failed")
        }
        try await self.store.store.sql { try await self.store.appendAudit(event, on: $0) }
        return ServerResponse(message: .init())
    }

    // MARK: Internal: authentication and authorization

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

    // MARK: Helpers

    /// The principal's role in the project, or nil when it is not a member (or the key is for another project).
    private func role(of principal: Sparkops_Common_V1_Principal, in projectID: String, on db: any SQLDatabase) async throws -> Sparkops_Common_V1_Role? {
        switch principal.kind {
        case .apiKey:
            guard principal.projectID == projectID, try await self.store.project(id: projectID, on: db) != nil else { return nil }
            return principal.role
        case .user:
            return try await self.store.role(userID: principal.userID, projectID: projectID, on: db)
        default:
            return nil
        }
    }

    /// The principal's role if it holds `permission` in the project; NOT_FOUND when it cannot see
    /// the project at all, PERMISSION_DENIED when it can but lacks the permission.
    private func requireRole(_ principal: Sparkops_Common_V1_Principal, projectID: String, permission: String, on db: any SQLDatabase) async throws -> Sparkops_Common_V1_Role {
        guard let role = try await self.role(of: principal, in: projectID, on: db) else {
            throw SparkError.notFound("project")
        }
        try Self.require(role, allows: permission)
        return role
    }

    private static func require(_ role: Sparkops_Common_V1_Role, allows permission: String) throws {
        guard Permission.role(role, allows: permission) else {
            throw SparkError(.permissionDenied, "\(permission) needs a higher role than \(role.name)")
        }
    }

    private func audit(
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

import Synchronization
