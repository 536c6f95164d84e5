import Foundation
public import GRPCCore
import SQLKit
import SparkKit
public import SparkProto
import SwiftProtobuf

/// Members and the role hierarchy: a caller manages only roles at most its own.
extension ProjectService {
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
}
