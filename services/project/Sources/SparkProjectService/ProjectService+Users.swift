import Foundation
public import GRPCCore
import SQLKit
import SparkKit
public import SparkProto
import SwiftProtobuf

/// Users: created by administrators, and the calling user.
extension ProjectService {
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
}
