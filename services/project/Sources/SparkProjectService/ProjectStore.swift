import Foundation
import SQLKit
import SparkKit
import SparkProto
import SwiftProtobuf

/// Rows of the project service's tables.
struct UserRow: Sendable {
    var id: String
    var email: String
    var displayName: String
    var passwordHash: String
    var isAdmin: Bool
    var tokensNotBefore: Int64
    var createdAt: Int64
}

struct ProjectRow: Sendable {
    var id: String
    var name: String
    var description: String
    var createdBy: String
    var createdAt: Int64
    var updatedAt: Int64
}

struct APIKeyRow: Sendable {
    var id: String
    var projectID: String
    var name: String
    var role: Int
    var prefix: String
    var createdBy: String
    var createdAt: Int64
    var expiresAt: Int64
    var revokedAt: Int64?
    var lastUsedAt: Int64?
}

struct RefreshTokenRow: Sendable {
    var id: String
    var userID: String
    var familyID: String
    var expiresAt: Int64
    var usedAt: Int64?
    var revokedAt: Int64?
}

/// Every query of the project service, written once for SQLite and PostgreSQL.
struct ProjectStore: Sendable {
    let store: SparkStore

    static func now() -> Int64 { Int64(Date().timeIntervalSince1970 * 1_000_000) }

    // MARK: Users

    func insertUser(_ user: UserRow, on db: any SQLDatabase) async throws {
        try await db.raw("""
            INSERT INTO users (id, email, display_name, password_hash, is_admin, tokens_not_before, created_at)
            VALUES (\(bind: user.id), \(bind: user.email), \(bind: user.displayName), \(bind: user.passwordHash), \(bind: user.isAdmin), 0, \(bind: user.createdAt))
            """).run()
    }

    func user(id: String, on db: any SQLDatabase) async throws -> UserRow? {
        try await db.raw("SELECT * FROM users WHERE id = \(bind: id)").first().map(Self.userRow)
    }

    func user(email: String, on db: any SQLDatabase) async throws -> UserRow? {
        try await db.raw("SELECT * FROM users WHERE email = \(bind: email)").first().map(Self.userRow)
    }

    func userCount(on db: any SQLDatabase) async throws -> Int {
        try await db.raw("SELECT COUNT(*) AS n FROM users").first()?.decode(column: "n", as: Int.self) ?? 0
    }

    func setPassword(userID: String, hash: String, notBefore: Int64, on db: any SQLDatabase) async throws {
        try await db.raw("UPDATE users SET password_hash = \(bind: hash), tokens_not_before = \(bind: notBefore) WHERE id = \(bind: userID)").run()
    }

    static func userRow(_ row: any SQLRow) throws -> UserRow {
        UserRow(
            id: try row.decode(column: "id", as: String.self),
            email: try row.decode(column: "email", as: String.self),
            displayName: try row.decode(column: "display_name", as: String.self),
            passwordHash: try row.decode(column: "password_hash", as: String.self),
            isAdmin: try row.decode(column: "is_admin", as: Bool.self),
            tokensNotBefore: try row.decode(column: "tokens_not_before", as: Int64.self),
            createdAt: try row.decode(column: "created_at", as: Int64.self)
        )
    }

    // MARK: Projects

    func insertProject(_ project: ProjectRow, on db: any SQLDatabase) async throws {
        try await db.raw("""
            INSERT INTO projects (id, name, description, created_by, created_at, updated_at)
            VALUES (\(bind: project.id), \(bind: project.name), \(bind: project.description), \(bind: project.createdBy), \(bind: project.createdAt), \(bind: project.updatedAt))
            """).run()
    }

    /// The gateway's most frequent reads, kept prepared on PostgreSQL.
    enum ProjectByID: SparkStatementText {
        static let sql = "SELECT * FROM projects WHERE id = $1 AND deleted_at IS NULL"
    }

    enum ProjectWithMemberRole: SparkStatementText {
        static let sql = """
            SELECT p.*, m.role AS member_role FROM projects p JOIN memberships m ON m.project_id = p.id
            WHERE p.id = $1 AND m.user_id = $2 AND p.deleted_at IS NULL
            """
    }

    func project(id: String, on db: any SQLDatabase) async throws -> ProjectRow? {
        try await db.prepared(ProjectByID.self, [id]).first.map(Self.projectRow)
    }

    /// The project with the user's role in it, in one query; nil when the user is not a member.
    func project(id: String, memberUserID: String, on db: any SQLDatabase) async throws -> (ProjectRow, Sparkops_Common_V1_Role)? {
        guard let row = try await db.prepared(ProjectWithMemberRole.self, [id, memberUserID]).first else { return nil }
        return (try Self.projectRow(row), Sparkops_Common_V1_Role(rawValue: try row.decode(column: "member_role", as: Int.self)) ?? .unspecified)
    }

    /// Whether a project the user can see (is a member of), other than `id`, has this name.
    /// Projects the user cannot see are never consulted, so that the answer reveals nothing of them.
    func projectNameTaken(_ name: String, visibleTo userID: String, except id: String = "", on db: any SQLDatabase) async throws -> Bool {
        try await db.raw("""
            SELECT p.id FROM projects p JOIN memberships m ON m.project_id = p.id
            WHERE m.user_id = \(bind: userID) AND p.name = \(bind: name) AND p.deleted_at IS NULL AND p.id <> \(bind: id)
            """).first() != nil
    }

    /// Serializes a user's project creations and renames (PostgreSQL: a row lock on the user;
    /// SQLite's single writer already does), so that two at once cannot both take a name.
    func lockUser(_ userID: String, on db: any SQLDatabase) async throws {
        guard self.store.dialect == .postgres else { return }
        try await db.raw("SELECT id FROM users WHERE id = \(bind: userID) FOR UPDATE").run()
    }

    /// Projects the user is a member of, by id, after `afterID`.
    func projects(memberUserID: String, after afterID: String, limit: Int, on db: any SQLDatabase) async throws -> [ProjectRow] {
        try await db.raw("""
            SELECT p.* FROM projects p JOIN memberships m ON m.project_id = p.id
            WHERE m.user_id = \(bind: memberUserID) AND p.deleted_at IS NULL AND p.id > \(bind: afterID)
            ORDER BY p.id LIMIT \(bind: limit)
            """).all().map(Self.projectRow)
    }

    func updateProject(_ project: ProjectRow, on db: any SQLDatabase) async throws {
        try await db.raw("""
            UPDATE projects SET name = \(bind: project.name), description = \(bind: project.description), updated_at = \(bind: project.updatedAt)
            WHERE id = \(bind: project.id) AND deleted_at IS NULL
            """).run()
    }

    func deleteProject(id: String, at time: Int64, on db: any SQLDatabase) async throws {
        try await db.raw("UPDATE projects SET deleted_at = \(bind: time) WHERE id = \(bind: id) AND deleted_at IS NULL").run()
        try await db.raw("UPDATE api_keys SET revoked_at = \(bind: time) WHERE project_id = \(bind: id) AND revoked_at IS NULL").run()
    }

    static func projectRow(_ row: any SQLRow) throws -> ProjectRow {
        ProjectRow(
            id: try row.decode(column: "id", as: String.self),
            name: try row.decode(column: "name", as: String.self),
            description: try row.decode(column: "description", as: String.self),
            createdBy: try row.decode(column: "created_by", as: String.self),
            createdAt: try row.decode(column: "created_at", as: Int64.self),
            updatedAt: try row.decode(column: "updated_at", as: Int64.self)
        )
    }

    // MARK: Memberships

    func role(userID: String, projectID: String, on db: any SQLDatabase) async throws -> Sparkops_Common_V1_Role? {
        guard let row = try await db.raw("""
            SELECT m.role FROM memberships m JOIN projects p ON p.id = m.project_id
            WHERE m.user_id = \(bind: userID) AND m.project_id = \(bind: projectID) AND p.deleted_at IS NULL
            """).first()
        else { return nil }
        return Sparkops_Common_V1_Role(rawValue: try row.decode(column: "role", as: Int.self))
    }

    /// Adds the member, or changes the role of an existing one.
    func upsertMember(projectID: String, userID: String, role: Sparkops_Common_V1_Role, at time: Int64, on db: any SQLDatabase) async throws {
        try await db.raw("""
            INSERT INTO memberships (project_id, user_id, role, created_at) VALUES (\(bind: projectID), \(bind: userID), \(bind: role.rawValue), \(bind: time))
            ON CONFLICT (project_id, user_id) DO UPDATE SET role = excluded.role
            """).run()
    }

    func removeMember(projectID: String, userID: String, on db: any SQLDatabase) async throws -> Bool {
        let existed = try await db.raw("SELECT user_id FROM memberships WHERE project_id = \(bind: projectID) AND user_id = \(bind: userID)").first() != nil
        try await db.raw("DELETE FROM memberships WHERE project_id = \(bind: projectID) AND user_id = \(bind: userID)").run()
        return existed
    }

    func ownerCount(projectID: String, on db: any SQLDatabase) async throws -> Int {
        try await db.raw("SELECT COUNT(*) AS n FROM memberships WHERE project_id = \(bind: projectID) AND role = \(bind: Sparkops_Common_V1_Role.owner.rawValue)").first()?.decode(column: "n", as: Int.self) ?? 0
    }

    func members(projectID: String, after afterUserID: String, limit: Int, on db: any SQLDatabase) async throws -> [Sparkops_Project_V1_Member] {
        try await db.raw("""
            SELECT m.user_id, m.role, m.created_at, u.email FROM memberships m JOIN users u ON u.id = m.user_id
            WHERE m.project_id = \(bind: projectID) AND m.user_id > \(bind: afterUserID) ORDER BY m.user_id LIMIT \(bind: limit)
            """).all().map { row in
            Sparkops_Project_V1_Member.with {
                $0.projectID = projectID
                $0.userID = (try? row.decode(column: "user_id", as: String.self)) ?? ""
                $0.email = (try? row.decode(column: "email", as: String.self)) ?? ""
                $0.role = Sparkops_Common_V1_Role(rawValue: (try? row.decode(column: "role", as: Int.self)) ?? 0) ?? .unspecified
                $0.createTime = .init(microseconds: (try? row.decode(column: "created_at", as: Int64.self)) ?? 0)
            }
        }
    }

    // MARK: API keys

    func insertAPIKey(_ key: APIKeyRow, hash: String, on db: any SQLDatabase) async throws {
        try await db.raw("""
            INSERT INTO api_keys (id, project_id, name, role, prefix, key_hash, created_by, created_at, expires_at)
            VALUES (\(bind: key.id), \(bind: key.projectID), \(bind: key.name), \(bind: key.role), \(bind: key.prefix), \(bind: hash), \(bind: key.createdBy), \(bind: key.createdAt), \(bind: key.expiresAt))
            """).run()
    }

    /// The key with its creator's current role in the key's project (nil when the creator is no
    /// longer a member).
    func apiKey(hash: String, on db: any SQLDatabase) async throws -> (APIKeyRow, creatorRole: Sparkops_Common_V1_Role?)? {
        guard let row = try await db.raw("""
            SELECT k.*, m.role AS creator_role FROM api_keys k JOIN projects p ON p.id = k.project_id
            LEFT JOIN memberships m ON m.project_id = k.project_id AND m.user_id = k.created_by
            WHERE k.key_hash = \(bind: hash) AND p.deleted_at IS NULL
            """).first()
        else { return nil }
        let creatorRole = try row.decode(column: "creator_role", as: Int?.self).flatMap(Sparkops_Common_V1_Role.init(rawValue:))
        return (try Self.apiKeyRow(row), creatorRole)
    }

    func apiKey(id: String, projectID: String, on db: any SQLDatabase) async throws -> APIKeyRow? {
        try await db.raw("SELECT * FROM api_keys WHERE id = \(bind: id) AND project_id = \(bind: projectID)").first().map(Self.apiKeyRow)
    }

    func apiKeys(projectID: String, after afterID: String, limit: Int, on db: any SQLDatabase) async throws -> [APIKeyRow] {
        try await db.raw("SELECT * FROM api_keys WHERE project_id = \(bind: projectID) AND id > \(bind: afterID) ORDER BY id LIMIT \(bind: limit)")
            .all().map(Self.apiKeyRow)
    }

    /// Revokes every live key the user created in the project (the user left it).
    func revokeAPIKeys(createdBy userID: String, projectID: String, at time: Int64, on db: any SQLDatabase) async throws -> [String] {
        let ids = try await db.raw("""
            SELECT id FROM api_keys WHERE project_id = \(bind: projectID) AND created_by = \(bind: userID) AND revoked_at IS NULL ORDER BY id
            """).all().map { try $0.decode(column: "id", as: String.self) }
        try await db.raw("""
            UPDATE api_keys SET revoked_at = \(bind: time) WHERE project_id = \(bind: projectID) AND created_by = \(bind: userID) AND revoked_at IS NULL
            """).run()
        return ids
    }

    func revokeAPIKey(id: String, at time: Int64, on db: any SQLDatabase) async throws {
        try await db.raw("UPDATE api_keys SET revoked_at = \(bind: time) WHERE id = \(bind: id) AND revoked_at IS NULL").run()
    }

    func touchAPIKey(id: String, at time: Int64, on db: any SQLDatabase) async throws {
        try await db.raw("UPDATE api_keys SET last_used_at = \(bind: time) WHERE id = \(bind: id)").run()
    }

    static func apiKeyRow(_ row: any SQLRow) throws -> APIKeyRow {
        APIKeyRow(
            id: try row.decode(column: "id", as: String.self),
            projectID: try row.decode(column: "project_id", as: String.self),
            name: try row.decode(column: "name", as: String.self),
            role: try row.decode(column: "role", as: Int.self),
            prefix: try row.decode(column: "prefix", as: String.self),
            createdBy: try row.decode(column: "created_by", as: String.self),
            createdAt: try row.decode(column: "created_at", as: Int64.self),
            expiresAt: try row.decode(column: "expires_at", as: Int64.self),
            revokedAt: try row.decode(column: "revoked_at", as: Int64?.self),
            lastUsedAt: try row.decode(column: "last_used_at", as: Int64?.self)
        )
    }

    // MARK: Refresh tokens and revocations

    func insertRefreshToken(id: String, userID: String, familyID: String, hash: String, createdAt: Int64, expiresAt: Int64, on db: any SQLDatabase) async throws {
        try await db.raw("""
            INSERT INTO refresh_tokens (id, user_id, family_id, token_hash, created_at, expires_at)
            VALUES (\(bind: id), \(bind: userID), \(bind: familyID), \(bind: hash), \(bind: createdAt), \(bind: expiresAt))
            """).run()
    }

    func refreshToken(hash: String, on db: any SQLDatabase) async throws -> RefreshTokenRow? {
        try await db.raw("SELECT * FROM refresh_tokens WHERE token_hash = \(bind: hash)").first().map { row in
            RefreshTokenRow(
                id: try row.decode(column: "id", as: String.self),
                userID: try row.decode(column: "user_id", as: String.self),
                familyID: try row.decode(column: "family_id", as: String.self),
                expiresAt: try row.decode(column: "expires_at", as: Int64.self),
                usedAt: try row.decode(column: "used_at", as: Int64?.self),
                revokedAt: try row.decode(column: "revoked_at", as: Int64?.self)
            )
        }
    }

    /// Marks a refresh token used; false if another request used it first.
    func markRefreshTokenUsed(id: String, at time: Int64, on db: any SQLDatabase) async throws -> Bool {
        try await db.raw("UPDATE refresh_tokens SET used_at = \(bind: time) WHERE id = \(bind: id) AND used_at IS NULL").run()
        let row = try await db.raw("SELECT used_at FROM refresh_tokens WHERE id = \(bind: id)").first()
        return try row?.decode(column: "used_at", as: Int64?.self) == time
    }

    /// Ends a session family: its refresh tokens, and (until they would have expired anyway) its
    /// access tokens.
    func revokeRefreshFamily(_ familyID: String, at time: Int64, on db: any SQLDatabase) async throws {
        try await db.raw("UPDATE refresh_tokens SET revoked_at = \(bind: time) WHERE family_id = \(bind: familyID) AND revoked_at IS NULL").run()
        let expires = time + Int64(SparkAccessClaims.lifetime * 1_000_000) + 60_000_000
        try await db.raw("""
            INSERT INTO revoked_families (family_id, expires_at) VALUES (\(bind: familyID), \(bind: expires))
            ON CONFLICT (family_id) DO UPDATE SET expires_at = excluded.expires_at
            """).run()
        try await db.raw("DELETE FROM revoked_families WHERE expires_at < \(bind: time)").run()
    }

    func revokeRefreshTokens(userID: String, at time: Int64, on db: any SQLDatabase) async throws {
        try await db.raw("UPDATE refresh_tokens SET revoked_at = \(bind: time) WHERE user_id = \(bind: userID) AND revoked_at IS NULL").run()
    }

    func revokeAccessToken(_ tokenID: String, expiresAt: Int64, on db: any SQLDatabase) async throws {
        try await db.raw("""
            INSERT INTO revoked_access_tokens (token_id, expires_at) VALUES (\(bind: tokenID), \(bind: expiresAt))
            ON CONFLICT (token_id) DO NOTHING
            """).run()
        try await db.raw("DELETE FROM revoked_access_tokens WHERE expires_at < \(bind: Self.now())").run()
    }

    /// Whether the access token, or its session family, was revoked: one query on the hot path.
    func isAccessTokenRevoked(_ tokenID: String, family familyID: String, on db: any SQLDatabase) async throws -> Bool {
        try await db.raw("""
            SELECT token_id AS id FROM revoked_access_tokens WHERE token_id = \(bind: tokenID)
            UNION ALL SELECT family_id AS id FROM revoked_families WHERE family_id = \(bind: familyID)
            """).first() != nil
    }

    // MARK: Login failures

    /// An email's recent failed sign-ins, and until when its sign-ins are paused (microseconds).
    struct LoginThrottle: Sendable {
        var failures: Int
        var blockedUntil: Int64
    }

    /// The email's failures within the window that began with its first failure; a pause that is
    /// still running counts whatever the window.
    func loginThrottle(email: String, window: Int64, on db: any SQLDatabase) async throws -> LoginThrottle {
        guard let row = try await db.raw("SELECT window_start, failures, blocked_until FROM login_failures WHERE email = \(bind: email)").first() else {
            return LoginThrottle(failures: 0, blockedUntil: 0)
        }
        let start = try row.decode(column: "window_start", as: Int64.self)
        let failures = Self.now() - start > window ? 0 : try row.decode(column: "failures", as: Int.self)
        return LoginThrottle(failures: failures, blockedUntil: try row.decode(column: "blocked_until", as: Int64.self))
    }

    /// Counts a failure and returns the email's failures in the window, this one included.
    func recordLoginFailure(email: String, window: Int64, on db: any SQLDatabase) async throws -> Int {
        let now = Self.now()
        try await db.raw("""
            INSERT INTO login_failures (email, window_start, failures) VALUES (\(bind: email), \(bind: now), 1)
            ON CONFLICT (email) DO UPDATE SET
                failures = CASE WHEN \(bind: now) - login_failures.window_start > \(bind: window) THEN 1 ELSE login_failures.failures + 1 END,
                window_start = CASE WHEN \(bind: now) - login_failures.window_start > \(bind: window) THEN \(bind: now) ELSE login_failures.window_start END
            """).run()
        return try await db.raw("SELECT failures FROM login_failures WHERE email = \(bind: email)").first()?.decode(column: "failures", as: Int.self) ?? 1
    }

    func pauseLogins(email: String, until time: Int64, on db: any SQLDatabase) async throws {
        try await db.raw("UPDATE login_failures SET blocked_until = \(bind: time) WHERE email = \(bind: email)").run()
    }

    /// Forgets the email's failures; returns how many there were.
    @discardableResult
    func clearLoginFailures(email: String, on db: any SQLDatabase) async throws -> Int {
        let failures = try await db.raw("SELECT failures FROM login_failures WHERE email = \(bind: email)").first()?.decode(column: "failures", as: Int.self) ?? 0
        try await db.raw("DELETE FROM login_failures WHERE email = \(bind: email)").run()
        return failures
    }

    // MARK: Signing keys

    func signingKeys(on db: any SQLDatabase) async throws -> [(id: String, privateKey: String)] {
        try await db.raw("SELECT id, private_key FROM signing_keys ORDER BY created_at").all().map {
            (try $0.decode(column: "id", as: String.self), try $0.decode(column: "private_key", as: String.self))
        }
    }

    func insertSigningKey(id: String, privateKey: String, on db: any SQLDatabase) async throws {
        try await db.raw("""
            INSERT INTO signing_keys (id, algorithm, private_key, created_at) VALUES (\(bind: id), 'EdDSA', \(bind: privateKey), \(bind: Self.now()))
            ON CONFLICT (id) DO NOTHING
            """).run()
    }

    // MARK: Audit log

    func appendAudit(_ event: Sparkops_Project_V1_AuditEvent, on db: any SQLDatabase) async throws {
        let id = event.id.isEmpty ? SparkID.make("aud") : event.id
        let at = event.hasTime ? event.time.microseconds : Self.now()
        try await db.raw("""
            INSERT INTO audit_log (id, at, project_id, actor, action, target, outcome, ip, detail)
            VALUES (\(bind: id), \(bind: at), \(bind: event.projectID), \(bind: event.actor), \(bind: event.action), \(bind: event.target), \(bind: event.outcome), \(bind: event.ip), \(bind: event.detail))
            """).run()
    }

    /// A project's events, newest first, before `beforeID`.
    func auditEvents(projectID: String, action: String, before beforeID: String, limit: Int, on db: any SQLDatabase) async throws -> [Sparkops_Project_V1_AuditEvent] {
        let upper = beforeID.isEmpty ? "~" : beforeID
        let rows: [any SQLRow]
        if action.isEmpty {
            rows = try await db.raw("SELECT * FROM audit_log WHERE project_id = \(bind: projectID) AND id < \(bind: upper) ORDER BY id DESC LIMIT \(bind: limit)").all()
        } else {
            rows = try await db.raw("SELECT * FROM audit_log WHERE project_id = \(bind: projectID) AND action = \(bind: action) AND id < \(bind: upper) ORDER BY id DESC LIMIT \(bind: limit)").all()
        }
        return try rows.map { row in
            try Sparkops_Project_V1_AuditEvent.with {
                $0.id = try row.decode(column: "id", as: String.self)
                $0.time = .init(microseconds: try row.decode(column: "at", as: Int64.self))
                $0.projectID = try row.decode(column: "project_id", as: String.self)
                $0.actor = try row.decode(column: "actor", as: String.self)
                $0.action = try row.decode(column: "action", as: String.self)
                $0.target = try row.decode(column: "target", as: String.self)
                $0.outcome = try row.decode(column: "outcome", as: String.self)
                $0.ip = try row.decode(column: "ip", as: String.self)
                $0.detail = try row.decode(column: "detail", as: String.self)
            }
        }
    }
}
