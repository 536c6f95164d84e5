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

/// `sparkops.agent.v1.AgentService`: a project's agents, their immutable versions, their memory,
/// and running one agent step (``AgentLoop``).
///
/// Every RPC checks the caller's role in the project through the project service; a project the
/// caller cannot see answers NOT_FOUND. A definition is checked when it is written: its fields
/// (line, column and field of each problem), its provider and model against the model catalog,
/// and its tools against the project's tools in the tool service.
public final class AgentService: Sparkops_Agent_V1_AgentService.ServiceProtocol {
    let store: AgentStore
    let access: ProjectAccess
    let tools: ProjectTools
    let catalog: ModelCatalog
    let llm: LLMClient
    let policy: PolicyCheck
    let budget: BudgetSpend
    let logger: Logger
    /// Parsed definitions by content hash.
    let definitions = Mutex<[String: AgentDefinition]>([:])

    init(store: SparkStore, access: ProjectAccess, tools: ProjectTools, catalog: ModelCatalog, llm: LLMClient, policy: PolicyCheck, budget: BudgetSpend, logger: Logger) {
        self.store = AgentStore(store: store)
        self.access = access
        self.tools = tools
        self.catalog = catalog
        self.llm = llm
        self.policy = policy
        self.budget = budget
        self.logger = logger
    }

    // MARK: Definitions in

    /// Reads a definition and checks it against the catalog and the project's tools; the problems
    /// when it is not valid.
    func check(_ source: String, projectID: String, principal: Sparkops_Common_V1_Principal) async throws -> Result<AgentDefinition, WorkflowValidationError> {
        guard !source.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty else { throw SparkError.invalid("source", "is required") }
        let definition: AgentDefinition
        do {
            definition = try AgentDefinition.read(source)
        } catch {
            // The catalog's problem with the model is reported beside the definition's own.
            guard let declared = AgentDefinition.declaredModel(in: source) else { return .failure(error) }
            let catalog = self.catalogProblems(provider: declared.provider, model: declared.model, line: declared.line, column: declared.column)
            return .failure(WorkflowValidationError(problems: error.problems + catalog.filter { problem in !error.problems.contains { $0.field == problem.field } }))
        }
        var problems = self.catalogProblems(provider: definition.provider, model: definition.model, line: 1, column: 1)
        if !definition.tools.isEmpty {
            let known = Set(try await self.tools.list(projectID: projectID, principal: principal).map(\.name))
            do {
                _ = try AgentDefinition.read(source, tools: known)
            } catch {
                problems += error.problems
            }
        }
        guard problems.isEmpty else { return .failure(WorkflowValidationError(problems: Self.located(problems, in: source))) }
        return .success(definition)
    }

    /// What the catalog says of an agent's provider and model: nothing, or why it cannot run.
    func catalogProblems(provider: String, model: String, line: Int, column: Int) -> [WorkflowProblem] {
        if self.catalog.provider(provider) == nil {
            return [WorkflowProblem(line: line, column: column, field: "provider", message: "the model catalog has no provider \(provider.debugDescription); known: \(self.catalog.providers.keys.sorted().joined(separator: ", "))")]
        } else if self.catalog.pricing(provider: provider, model: model) == nil {
            return [WorkflowProblem(line: line, column: column, field: "model", message: "the model catalog has no price for \(model.debugDescription) of \(provider); add it to agent.catalog (or set agent.allowUnpricedModels)")]
        }
        return []
    }

    /// Problems found after reading point at their field's line where the source shows it.
    static func located(_ problems: [WorkflowProblem], in source: String) -> [WorkflowProblem] {
        let lines = source.split(separator: "\n", omittingEmptySubsequences: false)
        return problems.map { problem in
            guard problem.line == 1, problem.column == 1, !problem.field.contains("[") else { return problem }
            var located = problem
            if let index = lines.firstIndex(where: { $0.trimmingCharacters(in: .whitespaces).hasPrefix("\(problem.field):") || $0.contains("\"\(problem.field)\"") }) {
                let line = lines[index]
                located.line = index + 1
                located.column = line.distance(from: line.startIndex, to: line.firstIndex(where: { !$0.isWhitespace }) ?? line.startIndex) + 1
            }
            return located
        }
    }

    func read(_ source: String, projectID: String, principal: Sparkops_Common_V1_Principal) async throws -> AgentDefinition {
        switch try await self.check(source, projectID: projectID, principal: principal) {
        case .success(let definition): return definition
        case .failure(let error): throw SparkError.invalid("source", error.summary)
        }
    }

    public func validateAgent(
        request: ServerRequest<Sparkops_Agent_V1_ValidateAgentRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Agent_V1_ValidateAgentResponse> {
        let principal = try await self.access.require(request.metadata, projectID: request.message.projectID, permission: "agent.read")
        switch try await self.check(request.message.source, projectID: request.message.projectID, principal: principal) {
        case .success(let definition):
            return ServerResponse(message: .with {
                $0.valid = true
                $0.contentHash = definition.contentHash
            })
        case .failure(let error):
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

    public func applyAgent(
        request: ServerRequest<Sparkops_Agent_V1_ApplyAgentRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Agent_V1_ApplyAgentResponse> {
        let message = request.message
        let principal = try await self.access.require(request.metadata, projectID: message.projectID, permission: "agent.write")
        let definition = try await self.read(message.source, projectID: message.projectID, principal: principal)
        let change = try await self.store.store.transaction { db in
            try await self.store.agents.apply(
                name: definition.name, canonical: definition.canonicalJSON, contentHash: definition.contentHash, source: message.source,
                projectID: message.projectID, actor: principal.id, on: db
            )
        }
        if change.changed {
            await self.audit(principal, projectID: message.projectID, action: change.created ? "agent.create" : "agent.update", target: change.row.id, detail: "\(definition.name) v\(change.version.version)", metadata: request.metadata)
        }
        return ServerResponse(message: try Self.message(change))
    }

    public func updateAgent(
        request: ServerRequest<Sparkops_Agent_V1_UpdateAgentRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Agent_V1_ApplyAgentResponse> {
        let message = request.message
        let principal = try await self.access.require(request.metadata, projectID: message.projectID, permission: "agent.write")
        try Self.validateReference(message.agent)
        let mask = try UpdateMask(message.updateMask, allowed: ["source"])
        guard mask.contains("source") else {
            let current = try await self.store.store.sql { db -> DefinitionChange? in
                guard let row = try await self.store.agents.row(message.agent, projectID: message.projectID, on: db),
                      let version = try await self.store.agents.version(of: row.id, row.latestVersion, on: db)
                else { return nil }
                return DefinitionChange(row: row, version: version, created: false, changed: false)
            }
            guard let current else { throw SparkError.notFound("agent") }
            return ServerResponse(message: try Self.message(current))
        }
        let definition = try await self.read(message.source, projectID: message.projectID, principal: principal)
        let change = try await self.store.store.transaction { db in
            try await self.store.agents.apply(
                name: definition.name, canonical: definition.canonicalJSON, contentHash: definition.contentHash, source: message.source,
                projectID: message.projectID, actor: principal.id, mustExist: message.agent, on: db
            )
        }
        if change.changed {
            await self.audit(principal, projectID: message.projectID, action: "agent.update", target: change.row.id, detail: "v\(change.version.version)", metadata: request.metadata)
        }
        return ServerResponse(message: try Self.message(change))
    }

    // MARK: Reads

    public func getAgent(
        request: ServerRequest<Sparkops_Agent_V1_GetAgentRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Agent_V1_Agent> {
        try await self.access.require(request.metadata, projectID: request.message.projectID, permission: "agent.read")
        try Self.validateReference(request.message.agent)
        guard let row = try await self.store.store.sql({ try await self.store.agents.row(request.message.agent, projectID: request.message.projectID, on: $0) }) else {
            throw SparkError.notFound("agent")
        }
        return ServerResponse(message: try Self.message(row))
    }

    public func listAgents(
        request: ServerRequest<Sparkops_Agent_V1_ListAgentsRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Agent_V1_ListAgentsResponse> {
        let message = request.message
        try await self.access.require(request.metadata, projectID: message.projectID, permission: "agent.read")
        let (limit, after) = try Paging.parse(size: message.pageSize, token: message.pageToken)
        let rows = try await self.store.store.sql { try await self.store.agents.rows(projectID: message.projectID, after: after, limit: limit, on: $0) }
        return ServerResponse(message: try .with {
            $0.agents = try rows.map(Self.message)
            $0.nextPageToken = Paging.token(lastID: rows.last?.id, count: rows.count, limit: limit)
        })
    }

    public func getAgentVersion(
        request: ServerRequest<Sparkops_Agent_V1_GetAgentVersionRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Agent_V1_AgentVersion> {
        let message = request.message
        try await self.access.require(request.metadata, projectID: message.projectID, permission: "agent.read")
        try Self.validateReference(message.agent)
        let wanted = try DefinitionTable.versionNumber(message.version)
        let row = try await self.store.store.sql { db -> DefinitionVersionRow? in
            guard let agent = try await self.store.agents.row(message.agent, projectID: message.projectID, on: db) else { return nil }
            return try await self.store.agents.version(of: agent.id, wanted ?? agent.latestVersion, on: db)
        }
        guard let row else { throw SparkError.notFound("agent version") }
        return ServerResponse(message: try Self.message(row))
    }

    public func listAgentVersions(
        request: ServerRequest<Sparkops_Agent_V1_ListAgentVersionsRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Agent_V1_ListAgentVersionsResponse> {
        let message = request.message
        try await self.access.require(request.metadata, projectID: message.projectID, permission: "agent.read")
        try Self.validateReference(message.agent)
        let (limit, after) = try Paging.parse(size: message.pageSize, token: message.pageToken)
        guard after.isEmpty || Int(after) != nil else { throw SparkError.invalid("page_token", "is not a token this list returned") }
        let rows = try await self.store.store.sql { db -> [DefinitionVersionRow]? in
            guard let agent = try await self.store.agents.row(message.agent, projectID: message.projectID, on: db) else { return nil }
            return try await self.store.agents.versions(of: agent.id, before: Int(after) ?? 0, limit: limit, on: db)
        }
        guard let rows else { throw SparkError.notFound("agent") }
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

    public func deleteAgent(
        request: ServerRequest<Sparkops_Agent_V1_DeleteAgentRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Agent_V1_DeleteAgentResponse> {
        let message = request.message
        let principal = try await self.access.require(request.metadata, projectID: message.projectID, permission: "agent.write")
        try Self.validateReference(message.agent)
        let id = try await self.store.store.transaction { try await self.store.agents.delete(message.agent, projectID: message.projectID, on: $0) }
        guard let id else { throw SparkError.notFound("agent") }
        await self.audit(principal, projectID: message.projectID, action: "agent.delete", target: id, metadata: request.metadata)
        return ServerResponse(message: .init())
    }

    // MARK: Memory

    public func listAgentMemory(
        request: ServerRequest<Sparkops_Agent_V1_ListAgentMemoryRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Agent_V1_ListAgentMemoryResponse> {
        let message = request.message
        try await self.access.require(request.metadata, projectID: message.projectID, permission: "agent.read")
        try Self.validateReference(message.agent)
        let found = try await self.store.store.sql { db -> ([MemoryRow], [SummaryRow])? in
            guard let agent = try await self.store.agents.row(message.agent, projectID: message.projectID, on: db) else { return nil }
            return (
                try await self.store.facts(projectID: message.projectID, agentID: agent.id, on: db),
                try await self.store.summaries(projectID: message.projectID, agentID: agent.id, limit: 50, on: db)
            )
        }
        guard let (facts, summaries) = found else { throw SparkError.notFound("agent") }
        return ServerResponse(message: try .with {
            $0.facts = try facts.map(Self.message)
            $0.summaries = summaries.map { summary in
                .with {
                    $0.id = summary.id
                    $0.text = summary.text
                    $0.executionID = summary.executionID
                    $0.createTime = .init(microseconds: summary.createdAt)
                }
            }
        })
    }

    public func putAgentMemory(
        request: ServerRequest<Sparkops_Agent_V1_PutAgentMemoryRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Agent_V1_MemoryFact> {
        let message = request.message
        let principal = try await self.access.require(request.metadata, projectID: message.projectID, permission: "agent.write")
        try Self.validateReference(message.agent)
        try AgentMemory.validateKey(message.key, field: "key")
        guard !message.value.isEmpty else { throw SparkError.invalid("value", "is required") }
        let value = try message.value.value(field: "value").jsonText
        try AgentMemory.validateValue(value, field: "value")
        let fact = MemoryRow(key: message.key, value: value, updatedAt: AgentStore.now(), updatedBy: principal.id)
        let agentID = try await self.store.store.transaction { db -> String in
            guard let agent = try await self.store.agents.row(message.agent, projectID: message.projectID, on: db) else { throw SparkError.notFound("agent") }
            try await self.store.put(fact, projectID: message.projectID, agentID: agent.id, on: db)
            return agent.id
        }
        await self.audit(principal, projectID: message.projectID, action: "agent.memory.put", target: agentID, detail: message.key, metadata: request.metadata)
        return ServerResponse(message: try Self.message(fact))
    }

    public func deleteAgentMemory(
        request: ServerRequest<Sparkops_Agent_V1_DeleteAgentMemoryRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Agent_V1_DeleteAgentMemoryResponse> {
        let message = request.message
        let principal = try await self.access.require(request.metadata, projectID: message.projectID, permission: "agent.write")
        try Self.validateReference(message.agent)
        try AgentMemory.validateKey(message.key, field: "key")
        let agentID = try await self.store.store.transaction { db -> String in
            guard let agent = try await self.store.agents.row(message.agent, projectID: message.projectID, on: db) else { throw SparkError.notFound("agent") }
            guard try await self.store.deleteFact(projectID: message.projectID, agentID: agent.id, key: message.key, on: db) else { throw SparkError.notFound("memory key") }
            return agent.id
        }
        await self.audit(principal, projectID: message.projectID, action: "agent.memory.delete", target: agentID, detail: message.key, metadata: request.metadata)
        return ServerResponse(message: .init())
    }

    // MARK: Helpers

    static func validateReference(_ reference: String) throws {
        guard !reference.isEmpty else { throw SparkError.invalid("agent", "is required") }
        guard reference.utf8.count <= 100, !reference.contains("/") else { throw SparkError.invalid("agent", "is neither an agent id nor an agent name") }
    }

    func audit(_ principal: Sparkops_Common_V1_Principal, projectID: String, action: String, target: String, detail: String = "", metadata: Metadata) async {
        await self.access.record(principal, projectID: projectID, action: action, target: target, detail: detail, metadata: metadata, logger: self.logger)
    }

    /// The parsed definition of a stored canonical form.
    func definition(canonical: String, hash: String) throws -> AgentDefinition {
        if let cached = self.definitions.withLock({ $0[hash] }) { return cached }
        let definition = try AgentDefinition.read(canonical)
        self.definitions.withLock { cache in
            if cache.count > 10_000 { cache.removeAll() }
            cache[hash] = definition
        }
        return definition
    }

    static func message(_ row: DefinitionRow) throws -> Sparkops_Agent_V1_Agent {
        guard case .map(let fields) = try ExprValue(jsonText: row.canonical) else { throw SparkError(.internalError, "a stored agent is not a JSON object") }
        func text(_ key: String) -> String { if case .string(let value) = fields[key] { value } else { "" } }
        return .with {
            $0.id = row.id
            $0.projectID = row.projectID
            $0.name = row.name
            $0.description_p = text("description")
            $0.provider = text("provider")
            $0.model = text("model")
            if case .list(let tools) = fields["tools"] { $0.tools = tools.compactMap { if case .string(let name) = $0 { name } else { nil } } }
            $0.memory = fields["memory"] == .bool(true)
            $0.latestVersion = Int32(clamping: row.latestVersion)
            $0.contentHash = row.contentHash
            $0.createTime = .init(microseconds: row.createdAt)
            $0.updateTime = .init(microseconds: row.updatedAt)
            $0.createdBy = row.createdBy
        }
    }

    static func message(_ row: DefinitionVersionRow) throws -> Sparkops_Agent_V1_AgentVersion {
        let definition = Sparkops_Common_V1_Json.with { $0.text = row.canonical }
        return .with {
            $0.agentID = row.ownerID
            $0.version = Int32(clamping: row.version)
            $0.contentHash = row.contentHash
            $0.source = row.source
            $0.definition = definition
            $0.createTime = .init(microseconds: row.createdAt)
            $0.createdBy = row.createdBy
        }
    }

    static func message(_ change: DefinitionChange) throws -> Sparkops_Agent_V1_ApplyAgentResponse {
        try .with {
            $0.agent = try Self.message(change.row)
            $0.version = try Self.message(change.version)
            $0.created = change.created
            $0.changed = change.changed
        }
    }

    static func message(_ fact: MemoryRow) throws -> Sparkops_Agent_V1_MemoryFact {
        let value = Sparkops_Common_V1_Json.with { $0.text = fact.value }
        return .with {
            $0.key = fact.key
            $0.value = value
            $0.updateTime = .init(microseconds: fact.updatedAt)
            $0.updatedBy = fact.updatedBy
        }
    }
}
