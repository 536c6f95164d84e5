import Foundation
public import GRPCCore
import SQLKit
import SparkKit
public import SparkProto
import SwiftProtobuf

/// Projects: names unique among what the caller can see; updates by `UpdateMask`.
extension ProjectService {
    public func createProject(
        request: ServerRequest<Sparkops_Project_V1_CreateProjectRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Project_V1_Project> {
        let principal = try Sparkops_Common_V1_Principal.required(request.metadata)
        guard principal.kind == .user else { throw SparkError(.permissionDenied, "API keys cannot create projects") }
        let name = try Validate.projectName(request.message.name)
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
                project.name = try Validate.projectName(message.name)
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
}
