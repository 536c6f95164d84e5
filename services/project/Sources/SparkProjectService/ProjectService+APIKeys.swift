import Foundation
public import GRPCCore
import SQLKit
import SparkKit
public import SparkProto
import SwiftProtobuf

/// API keys: never more than their creator's role, now and later.
extension ProjectService {
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
}
