import Foundation
public import GRPCCore
public import Logging
import SQLKit
public import SparkKit
public import SparkProto
import SparkExpr
import SparkWorkflow
import Synchronization
import SwiftProtobuf

/// `sparkops.policy.v1.PolicyService`: a project's policies and the global ones, their immutable
/// versions, decisions at the points SparkOps asks (``PolicyEngine``), and the violations found.
///
/// Project policies need `policy.read` / `policy.write` in the project; global policies are
/// written by global administrators and read by any signed-in caller. `Evaluate` is for the
/// services that enforce policy (agent, tool, run): the caller checked the project already.
public final class PolicyService: Sparkops_Policy_V1_PolicyService.ServiceProtocol {
    let store: PolicyStore
    let access: ProjectAccess
    let settings: PolicyServiceConfig
    /// Where the `budget.*` names come from.
    let budgets: BudgetFigures
    let logger: Logger
    /// Compiled policies by scope ("" for the global ones), with the revision they were read at.
    let compiled = Mutex<[String: (revision: Int64, policies: [CompiledPolicy])]>([:])

    init(store: SparkStore, access: ProjectAccess, budgets: BudgetFigures, settings: PolicyServiceConfig, logger: Logger) {
        self.store = PolicyStore(store: store)
        self.access = access
        self.budgets = budgets
        self.settings = settings
        self.logger = logger
    }

    // MARK: Definitions

    static func read(_ source: String) throws -> PolicyDefinition {
        guard !source.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty else { throw SparkError.invalid("source", "is required") }
        do {
            return try PolicyDefinition.read(source)
        } catch {
            throw SparkError.invalid("source", error.summary)
        }
    }

    public func validatePolicy(
        request: ServerRequest<Sparkops_Policy_V1_ValidatePolicyRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Policy_V1_ValidatePolicyResponse> {
        try await self.access.require(request.metadata, projectID: request.message.projectID, permission: "policy.read")
        let source = request.message.source
        guard !source.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty else { throw SparkError.invalid("source", "is required") }
        do {
            let definition = try PolicyDefinition.read(source)
            return ServerResponse(message: .with {
                $0.valid = true
                $0.contentHash = definition.contentHash
            })
        } catch {
            return ServerResponse(message: .with {
                $0.valid = false
                $0.problems = error.problems.map { problem in
                    .with {
                        $0.line = Int32(clamping: problem.line)
                        $0.column = Int32(clamping: problem.column)
                        $0.field = problem.field
                        $0.message = problem.message
                    }
                }
            })
        }
    }

    public func applyPolicy(
        request: ServerRequest<Sparkops_Policy_V1_ApplyPolicyRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Policy_V1_ApplyPolicyResponse> {
        let principal = try await self.access.require(request.metadata, projectID: request.message.projectID, permission: "policy.write")
        return try await self.apply(request.message.source, scope: request.message.projectID, principal: principal, metadata: request.metadata)
    }

    public func applyGlobalPolicy(
        request: ServerRequest<Sparkops_Policy_V1_ApplyPolicyRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Policy_V1_ApplyPolicyResponse> {
        let principal = try Self.requireAdmin(request.metadata)
        guard request.message.projectID.isEmpty else { throw SparkError.invalid("project_id", "must be empty for a global policy") }
        return try await self.apply(request.message.source, scope: "", principal: principal, metadata: request.metadata)
    }

    func apply(_ source: String, scope: String, principal: Sparkops_Common_V1_Principal, metadata: Metadata) async throws -> ServerResponse<Sparkops_Policy_V1_ApplyPolicyResponse> {
        let definition = try Self.read(source)
        let change = try await self.store.store.transaction { db -> DefinitionChange in
            let existing = try await self.store.all(scope: scope, on: db)
            if !existing.contains(where: { $0.name == definition.name }), existing.count >= PolicyStore.maxPolicies {
                throw SparkError(.resourceExhausted, "\(scope.isEmpty ? "there are" : "the project has") \(PolicyStore.maxPolicies) policies already, the most allowed; put the rules in an existing policy")
            }
            let change = try await self.store.policies.apply(
                name: definition.name, canonical: definition.canonicalJSON, contentHash: definition.contentHash, source: source,
                projectID: scope, actor: principal.id, on: db
            )
            if change.changed { try await self.store.bump(scope: scope, on: db) }
            return change
        }
        if change.changed {
            let action = (scope.isEmpty ? "policy.global." : "policy.") + (change.created ? "create" : "update")
            await self.access.record(principal, projectID: scope, action: action, target: change.row.id, detail: "\(definition.name) v\(change.version.version)", metadata: metadata, logger: self.logger)
        }
        return ServerResponse(message: try .with {
            $0.policy = try Self.message(change.row)
            $0.version = try Self.message(change.version)
            $0.created = change.created
            $0.changed = change.changed
        })
    }

    // MARK: Reads

    public func getPolicy(
        request: ServerRequest<Sparkops_Policy_V1_GetPolicyRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Policy_V1_Policy> {
        try await self.access.require(request.metadata, projectID: request.message.projectID, permission: "policy.read")
        return ServerResponse(message: try await self.get(request.message.policy, scope: request.message.projectID))
    }

    public func getGlobalPolicy(
        request: ServerRequest<Sparkops_Policy_V1_GetPolicyRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Policy_V1_Policy> {
        _ = try Sparkops_Common_V1_Principal.required(request.metadata)
        return ServerResponse(message: try await self.get(request.message.policy, scope: ""))
    }

    func get(_ reference: String, scope: String) async throws -> Sparkops_Policy_V1_Policy {
        try Self.validateReference(reference)
        guard let row = try await self.store.store.sql({ try await self.store.policies.row(reference, projectID: scope, on: $0) }) else {
            throw SparkError.notFound("policy")
        }
        return try Self.message(row)
    }

    public func listPolicies(
        request: ServerRequest<Sparkops_Policy_V1_ListPoliciesRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Policy_V1_ListPoliciesResponse> {
        try await self.access.require(request.metadata, projectID: request.message.projectID, permission: "policy.read")
        return ServerResponse(message: try await self.list(request.message, scope: request.message.projectID))
    }

    public func listGlobalPolicies(
        request: ServerRequest<Sparkops_Policy_V1_ListPoliciesRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Policy_V1_ListPoliciesResponse> {
        _ = try Sparkops_Common_V1_Principal.required(request.metadata)
        return ServerResponse(message: try await self.list(request.message, scope: ""))
    }

    func list(_ message: Sparkops_Policy_V1_ListPoliciesRequest, scope: String) async throws -> Sparkops_Policy_V1_ListPoliciesResponse {
        let (limit, after) = try Paging.parse(size: message.pageSize, token: message.pageToken)
        let rows = try await self.store.store.sql { try await self.store.policies.rows(projectID: scope, after: after, limit: limit, on: $0) }
        return try .with {
            $0.policies = try rows.map(Self.message)
            $0.nextPageToken = Paging.token(lastID: rows.last?.id, count: rows.count, limit: limit)
        }
    }

    public func getPolicyVersion(
        request: ServerRequest<Sparkops_Policy_V1_GetPolicyVersionRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Policy_V1_PolicyVersion> {
        let message = request.message
        try await self.access.require(request.metadata, projectID: message.projectID, permission: "policy.read")
        try Self.validateReference(message.policy)
        let wanted = try DefinitionTable.versionNumber(message.version)
        let row = try await self.store.store.sql { db -> DefinitionVersionRow? in
            guard let policy = try await self.store.policies.row(message.policy, projectID: message.projectID, on: db) else { return nil }
            return try await self.store.policies.version(of: policy.id, wanted ?? policy.latestVersion, on: db)
        }
        guard let row else { throw SparkError.notFound("policy version") }
        return ServerResponse(message: try Self.message(row))
    }

    public func listPolicyVersions(
        request: ServerRequest<Sparkops_Policy_V1_ListPolicyVersionsRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Policy_V1_ListPolicyVersionsResponse> {
        let message = request.message
        try await self.access.require(request.metadata, projectID: message.projectID, permission: "policy.read")
        try Self.validateReference(message.policy)
        let (limit, after) = try Paging.parse(size: message.pageSize, token: message.pageToken)
        guard after.isEmpty || Int(after) != nil else { throw SparkError.invalid("page_token", "is not a token this list returned") }
        let rows = try await self.store.store.sql { db -> [DefinitionVersionRow]? in
            guard let policy = try await self.store.policies.row(message.policy, projectID: message.projectID, on: db) else { return nil }
            return try await self.store.policies.versions(of: policy.id, before: Int(after) ?? 0, limit: limit, on: db)
        }
        guard let rows else { throw SparkError.notFound("policy") }
        return ServerResponse(message: try .with {
            $0.versions = try rows.map { row in
                var version = try Self.message(row)
                version.source = ""
                version.clearDefinition()
                return version
            }
            $0.nextPageToken = Paging.token(lastID: rows.last.map { String($0.version) }, count: rows.count, limit: limit)
        })
    }

    // MARK: Deletes

    public func deletePolicy(
        request: ServerRequest<Sparkops_Policy_V1_DeletePolicyRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Policy_V1_DeletePolicyResponse> {
        let principal = try await self.access.require(request.metadata, projectID: request.message.projectID, permission: "policy.write")
        try await self.delete(request.message.policy, scope: request.message.projectID, principal: principal, metadata: request.metadata)
        return ServerResponse(message: .init())
    }

    public func deleteGlobalPolicy(
        request: ServerRequest<Sparkops_Policy_V1_DeletePolicyRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Policy_V1_DeletePolicyResponse> {
        let principal = try Self.requireAdmin(request.metadata)
        try await self.delete(request.message.policy, scope: "", principal: principal, metadata: request.metadata)
        return ServerResponse(message: .init())
    }

    func delete(_ reference: String, scope: String, principal: Sparkops_Common_V1_Principal, metadata: Metadata) async throws {
        try Self.validateReference(reference)
        let id = try await self.store.store.transaction { db -> String? in
            guard let id = try await self.store.policies.delete(reference, projectID: scope, on: db) else { return nil }
            try await self.store.bump(scope: scope, on: db)
            return id
        }
        guard let id else { throw SparkError.notFound("policy") }
        await self.access.record(principal, projectID: scope, action: scope.isEmpty ? "policy.global.delete" : "policy.delete", target: id, metadata: metadata, logger: self.logger)
    }

    // MARK: Helpers

    static func requireAdmin(_ metadata: Metadata) throws -> Sparkops_Common_V1_Principal {
        let principal = try Sparkops_Common_V1_Principal.required(metadata)
        guard principal.kind == .user, principal.isAdmin else {
            throw SparkError(.permissionDenied, "global policies are changed by global administrators only")
        }
        return principal
    }

    static func validateReference(_ reference: String) throws {
        guard !reference.isEmpty else { throw SparkError.invalid("policy", "is required") }
        guard reference.utf8.count <= 100, !reference.contains("/") else { throw SparkError.invalid("policy", "is neither a policy id nor a policy name") }
    }

    static func message(_ row: DefinitionRow) throws -> Sparkops_Policy_V1_Policy {
        let definition: PolicyDefinition
        do { definition = try PolicyDefinition.read(row.canonical) } catch { throw SparkError(.internalError, "a stored policy does not read back") }
        return .with {
            $0.id = row.id
            $0.projectID = row.projectID
            $0.name = row.name
            $0.description_p = definition.description
            $0.defaultEffect = definition.defaultEffect.rawValue
            $0.points = definition.points.map(\.rawValue)
            $0.rules = definition.rules.map { rule in
                .with {
                    $0.name = rule.name
                    $0.effect = rule.effect.rawValue
                    $0.when = rule.when
                    $0.message = rule.message
                    $0.points = rule.points.map(\.rawValue)
                }
            }
            $0.latestVersion = Int32(clamping: row.latestVersion)
            $0.contentHash = row.contentHash
            $0.createTime = .init(microseconds: row.createdAt)
            $0.updateTime = .init(microseconds: row.updatedAt)
            $0.createdBy = row.createdBy
        }
    }

    static func message(_ row: DefinitionVersionRow) throws -> Sparkops_Policy_V1_PolicyVersion {
        let definition = Sparkops_Common_V1_Json.with { $0.text = row.canonical }
        return .with {
            $0.policyID = row.ownerID
            $0.version = Int32(clamping: row.version)
            $0.contentHash = row.contentHash
            $0.source = row.source
            $0.definition = definition
            $0.createTime = .init(microseconds: row.createdAt)
            $0.createdBy = row.createdBy
        }
    }
}
