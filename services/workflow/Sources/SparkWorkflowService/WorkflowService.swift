import Foundation
public import GRPCCore
import NIOPosix
public import Logging
import SQLKit
public import SparkKit
public import SparkProto
import SparkWorkflow
import SwiftProtobuf

/// `sparkops.workflow.v1.WorkflowService`: workflow definitions and their immutable,
/// content-hashed versions.
///
/// Every RPC checks the caller's role in the project through the project service (the gateway
/// checked first); a project the caller cannot see answers NOT_FOUND. A definition is read and
/// validated by ``SparkWorkflow`` with every problem's line, column and field; nothing invalid is
/// stored. Applying an unchanged definition creates no version.
public final class WorkflowService: Sparkops_Workflow_V1_WorkflowService.ServiceProtocol {
    let store: WorkflowStore
    let access: ProjectAccess
    /// Where the tools and agents a definition names are looked up; nil checks none.
    let directory: ReferenceDirectory?
    let logger: Logger

    init(store: SparkStore, access: ProjectAccess, directory: ReferenceDirectory?, logger: Logger) {
        self.store = WorkflowStore(store: store)
        self.access = access
        self.directory = directory
        self.logger = logger
    }

    // MARK: Definitions in

    /// Reads and validates a definition on a thread of NIO's blocking pool, not on the event
    /// loop the call arrived on: a large workflow's checks (bounded by `WorkflowLimits`) must
    /// not hold up the other calls and connections of that loop.
    static func parse(_ source: String, references: WorkflowReferences = .unchecked) async throws -> Result<WorkflowDefinition, WorkflowValidationError> {
        try await NIOThreadPool.singleton.runIfActive {
            do throws(WorkflowValidationError) {
                return .success(try WorkflowDefinition.read(source, references: references))
            } catch {
                return .failure(error)
            }
        }
    }

    /// The definition, or INVALID_ARGUMENT on `source` listing every problem (`line:column: field: message`).
    static func read(_ source: String) async throws -> WorkflowDefinition {
        guard !source.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty else { throw SparkError.invalid("source", "is required") }
        switch try await Self.parse(source) {
        case .success(let definition): return definition
        case .failure(let error): throw SparkError.invalid("source", error.summary)
        }
    }

    /// The definition, its tools and agents checked against the project's: INVALID_ARGUMENT on
    /// `source` otherwise.
    func checked(_ source: String, projectID: String, principal: Sparkops_Common_V1_Principal) async throws -> WorkflowDefinition {
        let definition = try await Self.read(source)
        guard let references = try await self.references(for: definition, projectID: projectID, principal: principal) else { return definition }
        switch try await Self.parse(source, references: references) {
        case .success(let definition): return definition
        case .failure(let error): throw SparkError.invalid("source", error.summary)
        }
    }

    func references(for definition: WorkflowDefinition, projectID: String, principal: Sparkops_Common_V1_Principal) async throws -> WorkflowReferences? {
        guard let directory = self.directory, !definition.toolNames.isEmpty || !definition.agentNames.isEmpty else { return nil }
        return WorkflowReferences(
            tools: definition.toolNames.isEmpty ? nil : try await directory.toolNames(projectID: projectID, principal: principal),
            agents: definition.agentNames.isEmpty ? nil : try await directory.agentNames(projectID: projectID, principal: principal)
        )
    }

    public func validateWorkflow(
        request: ServerRequest<Sparkops_Workflow_V1_ValidateWorkflowRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Workflow_V1_ValidateWorkflowResponse> {
        let principal = try await self.access.require(request.metadata, projectID: request.message.projectID, permission: "workflow.read")
        guard !request.message.source.isEmpty else { throw SparkError.invalid("source", "is required") }
        for (field, names) in [("defined_tools", request.message.definedTools), ("defined_agents", request.message.definedAgents)] {
            guard names.count <= 500 else { throw SparkError.invalid(field, "lists \(names.count) names; at most 500") }
            if let bad = names.first(where: { $0.isEmpty || $0.count > 100 }) {
                throw SparkError.invalid(field, "\(bad.debugDescription) is not a name (1 to 100 characters)")
            }
        }
        do {
            var definition = try await Self.parse(request.message.source).get()
            if var references = try await self.references(for: definition, projectID: request.message.projectID, principal: principal) {
                // What the same change set defines beside the workflow counts as there.
                references.tools = references.tools?.union(request.message.definedTools)
                references.agents = references.agents?.union(request.message.definedAgents)
                definition = try await Self.parse(request.message.source, references: references).get()
            }
            return ServerResponse(message: .with {
                $0.valid = true
                $0.contentHash = definition.contentHash
            })
        } catch let error as WorkflowValidationError {
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

    public func createWorkflow(
        request: ServerRequest<Sparkops_Workflow_V1_CreateWorkflowRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Workflow_V1_ApplyWorkflowResponse> {
        let projectID = request.message.projectID
        let principal = try await self.access.require(request.metadata, projectID: projectID, permission: "workflow.write")
        let definition = try await self.checked(request.message.source, projectID: projectID, principal: principal)
        let result = try await self.store.store.transaction { db -> Sparkops_Workflow_V1_ApplyWorkflowResponse in
            if try await self.store.workflow(name: definition.name, projectID: projectID, on: db) != nil {
                throw SparkError(.alreadyExists, "a workflow named \(definition.name.debugDescription) already exists in this project; apply it to add a version", field: "source")
            }
            return try await self.create(definition, source: request.message.source, projectID: projectID, by: principal.id, on: db)
        }
        await self.audit(principal, projectID: projectID, action: "workflow.create", target: result.workflow.id, detail: "\(definition.name) v1", metadata: request.metadata)
        return ServerResponse(message: result)
    }

    public func applyWorkflow(
        request: ServerRequest<Sparkops_Workflow_V1_ApplyWorkflowRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Workflow_V1_ApplyWorkflowResponse> {
        let projectID = request.message.projectID
        let principal = try await self.access.require(request.metadata, projectID: projectID, permission: "workflow.write")
        let definition = try await self.checked(request.message.source, projectID: projectID, principal: principal)
        let result = try await self.store.store.transaction { db -> Sparkops_Workflow_V1_ApplyWorkflowResponse in
            guard let existing = try await self.store.workflow(name: definition.name, projectID: projectID, on: db) else {
                return try await self.create(definition, source: request.message.source, projectID: projectID, by: principal.id, on: db)
            }
            let (workflow, version, changed) = try await self.addVersion(definition, source: request.message.source, to: existing, by: principal.id, on: db)
            return .with {
                $0.workflow = workflow
                $0.version = version
                $0.created = false
                $0.changed = changed
            }
        }
        if result.created || result.changed {
            await self.audit(principal, projectID: projectID, action: result.created ? "workflow.create" : "workflow.update", target: result.workflow.id, detail: "\(definition.name) v\(result.version.version)", metadata: request.metadata)
        }
        return ServerResponse(message: result)
    }

    public func updateWorkflow(
        request: ServerRequest<Sparkops_Workflow_V1_UpdateWorkflowRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Workflow_V1_UpdateWorkflowResponse> {
        let message = request.message
        let principal = try await self.access.require(request.metadata, projectID: message.projectID, permission: "workflow.write")
        try Self.validateID(message.workflowID)
        let mask = try UpdateMask(message.updateMask, allowed: ["source"])
        let definition = mask.contains("source") ? try await self.checked(message.source, projectID: message.projectID, principal: principal) : nil
        let result = try await self.store.store.transaction { db -> Sparkops_Workflow_V1_UpdateWorkflowResponse in
            guard let existing = try await self.store.workflow(id: message.workflowID, projectID: message.projectID, on: db) else {
                throw SparkError.notFound("workflow")
            }
            guard let definition else {
                // Nothing named: nothing changes.
                let latest = try await self.store.version(workflowID: existing.id, version: existing.latestVersion, on: db)
                return try .with {
                    $0.workflow = Self.message(existing)
                    if let latest { $0.version = try Self.message(latest) }
                    $0.changed = false
                }
            }
            guard definition.name == existing.name else {
                throw SparkError.invalid("source", "the definition is named \(definition.name.debugDescription), but this workflow is \(existing.name.debugDescription); apply it to create a workflow of that name")
            }
            let (workflow, version, changed) = try await self.addVersion(definition, source: message.source, to: existing, by: principal.id, on: db)
            return .with {
                $0.workflow = workflow
                $0.version = version
                $0.changed = changed
            }
        }
        if result.changed {
            await self.audit(principal, projectID: message.projectID, action: "workflow.update", target: message.workflowID, detail: "v\(result.version.version)", metadata: request.metadata)
        }
        return ServerResponse(message: result)
    }

    /// A new workflow at version 1.
    func create(_ definition: WorkflowDefinition, source: String, projectID: String, by actor: String, on db: any SQLDatabase) async throws -> Sparkops_Workflow_V1_ApplyWorkflowResponse {
        let now = WorkflowStore.now()
        let row = WorkflowRow(
            id: SparkID.make("wf"), projectID: projectID, name: definition.name, description: definition.description,
            latestVersion: 1, contentHash: definition.contentHash, createdBy: actor, createdAt: now, updatedAt: now
        )
        let version = VersionRow(workflowID: row.id, version: 1, contentHash: definition.contentHash, source: source, canonical: definition.canonicalJSON, createdBy: actor, createdAt: now)
        try await self.store.insert(row, on: db)
        try await self.store.insert(version, on: db)
        return try .with {
            $0.workflow = Self.message(row)
            $0.version = try Self.message(version)
            $0.created = true
            $0.changed = true
        }
    }

    /// The next version, unless the definition's hash is the latest's.
    func addVersion(_ definition: WorkflowDefinition, source: String, to existing: WorkflowRow, by actor: String, on db: any SQLDatabase) async throws -> (Sparkops_Workflow_V1_Workflow, Sparkops_Workflow_V1_WorkflowVersion, Bool) {
        if definition.contentHash == existing.contentHash, let latest = try await self.store.version(workflowID: existing.id, version: existing.latestVersion, on: db) {
            return (Self.message(existing), try Self.message(latest), false)
        }
        var row = existing
        row.latestVersion += 1
        row.contentHash = definition.contentHash
        row.description = definition.description
        row.updatedAt = WorkflowStore.now()
        guard try await self.store.advance(row, on: db) else {
            throw SparkError(.aborted, "the workflow changed while this update ran; try again")
        }
        let version = VersionRow(workflowID: row.id, version: row.latestVersion, contentHash: definition.contentHash, source: source, canonical: definition.canonicalJSON, createdBy: actor, createdAt: row.updatedAt)
        try await self.store.insert(version, on: db)
        return (Self.message(row), try Self.message(version), true)
    }

    // MARK: Reads

    public func getWorkflow(
        request: ServerRequest<Sparkops_Workflow_V1_GetWorkflowRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Workflow_V1_Workflow> {
        try await self.access.require(request.metadata, projectID: request.message.projectID, permission: "workflow.read")
        try Self.validateID(request.message.workflowID)
        guard let row = try await self.store.store.sql({ try await self.store.workflow(id: request.message.workflowID, projectID: request.message.projectID, on: $0) }) else {
            throw SparkError.notFound("workflow")
        }
        return ServerResponse(message: Self.message(row))
    }

    public func listWorkflows(
        request: ServerRequest<Sparkops_Workflow_V1_ListWorkflowsRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Workflow_V1_ListWorkflowsResponse> {
        let message = request.message
        try await self.access.require(request.metadata, projectID: message.projectID, permission: "workflow.read")
        let (limit, after) = try Paging.parse(size: message.pageSize, token: message.pageToken)
        let rows = try await self.store.store.sql { try await self.store.workflows(projectID: message.projectID, after: after, limit: limit, on: $0) }
        return ServerResponse(message: .with {
            $0.workflows = rows.map(Self.message)
            $0.nextPageToken = Paging.token(lastID: rows.last?.id, count: rows.count, limit: limit)
        })
    }

    public func getWorkflowVersion(
        request: ServerRequest<Sparkops_Workflow_V1_GetWorkflowVersionRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Workflow_V1_WorkflowVersion> {
        let message = request.message
        try await self.access.require(request.metadata, projectID: message.projectID, permission: "workflow.read")
        try Self.validateID(message.workflowID)
        let wanted = try DefinitionTable.versionNumber(message.version)
        let row = try await self.store.store.sql { db -> VersionRow? in
            guard let workflow = try await self.store.workflow(id: message.workflowID, projectID: message.projectID, on: db) else { return nil }
            return try await self.store.version(workflowID: workflow.id, version: wanted ?? workflow.latestVersion, on: db)
        }
        guard let row else { throw SparkError.notFound("workflow version") }
        return ServerResponse(message: try Self.message(row))
    }

    public func listWorkflowVersions(
        request: ServerRequest<Sparkops_Workflow_V1_ListWorkflowVersionsRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Workflow_V1_ListWorkflowVersionsResponse> {
        let message = request.message
        try await self.access.require(request.metadata, projectID: message.projectID, permission: "workflow.read")
        try Self.validateID(message.workflowID)
        let (limit, after) = try Paging.parse(size: message.pageSize, token: message.pageToken)
        guard after.isEmpty || Int(after) != nil else { throw SparkError.invalid("page_token", "is not a token this list returned") }
        let rows = try await self.store.store.sql { db -> [VersionRow]? in
            guard try await self.store.workflow(id: message.workflowID, projectID: message.projectID, on: db) != nil else { return nil }
            return try await self.store.versions(workflowID: message.workflowID, before: Int(after) ?? 0, limit: limit, on: db)
        }
        guard let rows else { throw SparkError.notFound("workflow") }
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

    public func deleteWorkflow(
        request: ServerRequest<Sparkops_Workflow_V1_DeleteWorkflowRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Workflow_V1_DeleteWorkflowResponse> {
        let message = request.message
        let principal = try await self.access.require(request.metadata, projectID: message.projectID, permission: "workflow.write")
        try Self.validateID(message.workflowID)
        try await self.store.store.transaction { db in
            guard try await self.store.workflow(id: message.workflowID, projectID: message.projectID, on: db) != nil else {
                throw SparkError.notFound("workflow")
            }
            try await self.store.delete(id: message.workflowID, at: WorkflowStore.now(), on: db)
        }
        await self.audit(principal, projectID: message.projectID, action: "workflow.delete", target: message.workflowID, metadata: request.metadata)
        return ServerResponse(message: .init())
    }

    // MARK: Helpers

    /// A workflow is named by its id (`wf_…`) or its name.
    static func validateID(_ id: String) throws {
        guard !id.isEmpty else { throw SparkError.invalid("workflow_id", "is required") }
        guard id.utf8.count <= 100, !id.contains("/"), !id.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else {
            throw SparkError.invalid("workflow_id", "is neither a wf_… id nor a workflow name")
        }
    }

    /// Records the mutation in the project's audit log (a log that cannot be reached is logged).
    func audit(_ principal: Sparkops_Common_V1_Principal, projectID: String, action: String, target: String, detail: String = "", metadata: Metadata) async {
        await self.access.record(principal, projectID: projectID, action: action, target: target, detail: detail, metadata: metadata, logger: self.logger)
    }

    static func message(_ row: WorkflowRow) -> Sparkops_Workflow_V1_Workflow {
        .with {
            $0.id = row.id
            $0.projectID = row.projectID
            $0.name = row.name
            $0.description_p = row.description
            $0.latestVersion = Int32(clamping: row.latestVersion)
            $0.contentHash = row.contentHash
            $0.createTime = .init(microseconds: row.createdAt)
            $0.updateTime = .init(microseconds: row.updatedAt)
            $0.createdBy = row.createdBy
        }
    }

    static func message(_ row: VersionRow) throws -> Sparkops_Workflow_V1_WorkflowVersion {
        let definition = Sparkops_Common_V1_Json.with { $0.text = row.canonical }
        return .with {
            $0.workflowID = row.workflowID
            $0.version = Int32(clamping: row.version)
            $0.contentHash = row.contentHash
            $0.source = row.source
            $0.definition = definition
            $0.createTime = .init(microseconds: row.createdAt)
            $0.createdBy = row.createdBy
        }
    }
}
