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

/// `sparkops.tool.v1.ToolService`: a project's tools, their immutable versions, their write-only
/// secrets, and invoking them.
///
/// Every RPC checks the caller's role in the project through the project service; a project the
/// caller cannot see answers NOT_FOUND. Definitions are read by ``SparkWorkflow`` with every
/// problem's line, column and field; nothing invalid is stored; applying an unchanged definition
/// makes no version. Secrets are sealed by ``SecretBox`` and no RPC returns a value.
public final class ToolService: Sparkops_Tool_V1_ToolService.ServiceProtocol {
    let store: ToolStore
    let access: ProjectAccess
    let secrets: SecretBox
    let runner: ToolRunner
    let policy: PolicyCheck
    let budget: BudgetSpend
    /// How long past a call's timeout its budget reservation holds (`tool.budgetHoldSeconds`).
    let budgetHoldSeconds: Int
    /// How long past its timeout a call under a key may stay `running` before it counts as
    /// abandoned (its caller or its tool service died): `tool.abandonGraceSeconds`.
    let abandonGraceSeconds: Int
    /// The project's secret values, kept out of tool outputs.
    let scrubber = SecretScrubber()
    let logger: Logger
    /// Parsed definitions by content hash: invoking does not parse YAML each time.
    let definitions = Mutex<[String: ToolDefinition]>([:])
    /// mcp tools' server tools, by project and content hash, with when they were asked.
    let mcpFunctions = Mutex<[String: (ContinuousClock.Instant, [MCPRunner.Function])]>([:])

    init(store: SparkStore, access: ProjectAccess, secrets: SecretBox, runner: ToolRunner, policy: PolicyCheck, budget: BudgetSpend, budgetHoldSeconds: Int = 60, abandonGraceSeconds: Int = 60, logger: Logger) {
        self.store = ToolStore(store: store)
        self.access = access
        self.secrets = secrets
        self.runner = runner
        self.policy = policy
        self.budget = budget
        self.budgetHoldSeconds = budgetHoldSeconds
        self.abandonGraceSeconds = abandonGraceSeconds
        self.logger = logger
    }

    // MARK: Definitions in

    static func read(_ source: String) throws -> ToolDefinition {
        guard !source.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty else { throw SparkError.invalid("source", "is required") }
        do {
            return try ToolDefinition.read(source)
        } catch {
            throw SparkError.invalid("source", error.summary)
        }
    }

    public func validateTool(
        request: ServerRequest<Sparkops_Tool_V1_ValidateToolRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Tool_V1_ValidateToolResponse> {
        try await self.access.require(request.metadata, projectID: request.message.projectID, permission: "tool.read")
        guard !request.message.source.isEmpty else { throw SparkError.invalid("source", "is required") }
        do {
            let definition = try ToolDefinition.read(request.message.source)
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

    public func applyTool(
        request: ServerRequest<Sparkops_Tool_V1_ApplyToolRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Tool_V1_ApplyToolResponse> {
        let projectID = request.message.projectID
        let principal = try await self.access.require(request.metadata, projectID: projectID, permission: "tool.write")
        let definition = try Self.read(request.message.source)
        try await self.checkSecretHosts(definition, projectID: projectID)
        let result = try await self.store.store.transaction { db -> Sparkops_Tool_V1_ApplyToolResponse in
            guard let existing = try await self.store.tool(definition.name, projectID: projectID, on: db) else {
                return try await self.create(definition, source: request.message.source, projectID: projectID, by: principal.id, on: db)
            }
            return try await self.addVersion(definition, source: request.message.source, to: existing, by: principal.id, on: db)
        }
        if result.created || result.changed {
            await self.audit(principal, projectID: projectID, action: result.created ? "tool.create" : "tool.update", target: result.tool.id, detail: "\(definition.name) v\(result.version.version)", metadata: request.metadata)
        }
        return ServerResponse(message: result)
    }

    public func updateTool(
        request: ServerRequest<Sparkops_Tool_V1_UpdateToolRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Tool_V1_ApplyToolResponse> {
        let message = request.message
        let principal = try await self.access.require(request.metadata, projectID: message.projectID, permission: "tool.write")
        try Self.validateReference(message.tool)
        let mask = try UpdateMask(message.updateMask, allowed: ["source"])
        let definition = mask.contains("source") ? try Self.read(message.source) : nil
        if let definition { try await self.checkSecretHosts(definition, projectID: message.projectID) }
        let result = try await self.store.store.transaction { db -> Sparkops_Tool_V1_ApplyToolResponse in
            guard let existing = try await self.store.tool(message.tool, projectID: message.projectID, on: db) else {
                throw SparkError.notFound("tool")
            }
            guard let definition else {
                let latest = try await self.store.version(toolID: existing.id, version: existing.latestVersion, on: db)
                return try .with {
                    $0.tool = try Self.message(existing)
                    if let latest { $0.version = try Self.message(latest) }
                }
            }
            guard definition.name == existing.name else {
                throw SparkError.invalid("source", "the definition is named \(definition.name.debugDescription), but this tool is \(existing.name.debugDescription); apply it to create a tool of that name")
            }
            return try await self.addVersion(definition, source: message.source, to: existing, by: principal.id, on: db)
        }
        if result.changed {
            await self.audit(principal, projectID: message.projectID, action: "tool.update", target: result.tool.id, detail: "v\(result.version.version)", metadata: request.metadata)
        }
        return ServerResponse(message: result)
    }

    /// A tool that would send a secret to a host the secret does not allow is refused when written
    /// (it is refused again when run, against the host it reaches then). A URL whose host is a
    /// template is checked when run only.
    func checkSecretHosts(_ definition: ToolDefinition, projectID: String) async throws {
        var uses: [(field: String, secret: String, url: String)] = []
        if let http = definition.http, let auth = http.auth { uses.append(("http.auth.secret", auth.secret, http.url)) }
        if let mcp = definition.mcp, let auth = mcp.auth, case .url(let url) = mcp.server { uses.append(("mcp.auth.secret", auth.secret, url)) }
        for use in uses {
            guard let host = URLComponents(string: use.url)?.host, !host.contains("$") else { continue }
            guard let row = try await self.store.store.sql({ try await self.store.secret(projectID: projectID, name: use.secret, on: $0) }) else { continue }
            guard row.allows(host) else {
                throw SparkError(.invalidArgument, "source: \(use.field): \(ToolRunner.SecretRefused(name: use.secret, host: host, hosts: row.hosts).description)", field: "source")
            }
        }
    }

    func create(_ definition: ToolDefinition, source: String, projectID: String, by actor: String, on db: any SQLDatabase) async throws -> Sparkops_Tool_V1_ApplyToolResponse {
        let now = ToolStore.now()
        let row = ToolRow(
            id: SparkID.make("tool"), projectID: projectID, name: definition.name, description: definition.description,
            kind: definition.kind.rawValue, sideEffects: definition.sideEffects.rawValue, costMicros: definition.costMicros,
            latestVersion: 1, contentHash: definition.contentHash, canonical: definition.canonicalJSON,
            createdBy: actor, createdAt: now, updatedAt: now
        )
        let version = ToolVersionRow(toolID: row.id, version: 1, contentHash: definition.contentHash, source: source, canonical: definition.canonicalJSON, createdBy: actor, createdAt: now)
        try await self.store.insert(row, on: db)
        try await self.store.insert(version, on: db)
        return try .with {
            $0.tool = try Self.message(row)
            $0.version = try Self.message(version)
            $0.created = true
            $0.changed = true
        }
    }

    func addVersion(_ definition: ToolDefinition, source: String, to existing: ToolRow, by actor: String, on db: any SQLDatabase) async throws -> Sparkops_Tool_V1_ApplyToolResponse {
        if definition.contentHash == existing.contentHash, let latest = try await self.store.version(toolID: existing.id, version: existing.latestVersion, on: db) {
            return try .with {
                $0.tool = try Self.message(existing)
                $0.version = try Self.message(latest)
            }
        }
        var row = existing
        row.latestVersion += 1
        row.contentHash = definition.contentHash
        row.canonical = definition.canonicalJSON
        row.description = definition.description
        row.kind = definition.kind.rawValue
        row.sideEffects = definition.sideEffects.rawValue
        row.costMicros = definition.costMicros
        row.updatedAt = ToolStore.now()
        guard try await self.store.advance(row, on: db) else {
            throw SparkError(.aborted, "the tool changed while this update ran; try again")
        }
        let version = ToolVersionRow(toolID: row.id, version: row.latestVersion, contentHash: definition.contentHash, source: source, canonical: definition.canonicalJSON, createdBy: actor, createdAt: row.updatedAt)
        try await self.store.insert(version, on: db)
        return try .with {
            $0.tool = try Self.message(row)
            $0.version = try Self.message(version)
            $0.changed = true
        }
    }

    // MARK: Reads

    public func getTool(
        request: ServerRequest<Sparkops_Tool_V1_GetToolRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Tool_V1_Tool> {
        try await self.access.require(request.metadata, projectID: request.message.projectID, permission: "tool.read")
        try Self.validateReference(request.message.tool)
        guard let row = try await self.store.store.sql({ try await self.store.tool(request.message.tool, projectID: request.message.projectID, on: $0) }) else {
            throw SparkError.notFound("tool")
        }
        return ServerResponse(message: try Self.message(row))
    }

    public func listTools(
        request: ServerRequest<Sparkops_Tool_V1_ListToolsRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Tool_V1_ListToolsResponse> {
        let message = request.message
        try await self.access.require(request.metadata, projectID: message.projectID, permission: "tool.read")
        let (limit, after) = try Paging.parse(size: message.pageSize, token: message.pageToken)
        let rows = try await self.store.store.sql { try await self.store.tools(projectID: message.projectID, after: after, limit: limit, on: $0) }
        return ServerResponse(message: try .with {
            $0.tools = try rows.map(Self.message)
            $0.nextPageToken = Paging.token(lastID: rows.last?.id, count: rows.count, limit: limit)
        })
    }

    public func getToolVersion(
        request: ServerRequest<Sparkops_Tool_V1_GetToolVersionRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Tool_V1_ToolVersion> {
        let message = request.message
        try await self.access.require(request.metadata, projectID: message.projectID, permission: "tool.read")
        try Self.validateReference(message.tool)
        let wanted = try DefinitionTable.versionNumber(message.version)
        let row = try await self.store.store.sql { db -> ToolVersionRow? in
            guard let tool = try await self.store.tool(message.tool, projectID: message.projectID, on: db) else { return nil }
            return try await self.store.version(toolID: tool.id, version: wanted ?? tool.latestVersion, on: db)
        }
        guard let row else { throw SparkError.notFound("tool version") }
        return ServerResponse(message: try Self.message(row))
    }

    public func listToolVersions(
        request: ServerRequest<Sparkops_Tool_V1_ListToolVersionsRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Tool_V1_ListToolVersionsResponse> {
        let message = request.message
        try await self.access.require(request.metadata, projectID: message.projectID, permission: "tool.read")
        try Self.validateReference(message.tool)
        let (limit, after) = try Paging.parse(size: message.pageSize, token: message.pageToken)
        guard after.isEmpty || Int(after) != nil else { throw SparkError.invalid("page_token", "is not a token this list returned") }
        let rows = try await self.store.store.sql { db -> [ToolVersionRow]? in
            guard let tool = try await self.store.tool(message.tool, projectID: message.projectID, on: db) else { return nil }
            return try await self.store.versions(toolID: tool.id, before: Int(after) ?? 0, limit: limit, on: db)
        }
        guard let rows else { throw SparkError.notFound("tool") }
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

    public func deleteTool(
        request: ServerRequest<Sparkops_Tool_V1_DeleteToolRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Tool_V1_DeleteToolResponse> {
        let message = request.message
        let principal = try await self.access.require(request.metadata, projectID: message.projectID, permission: "tool.write")
        try Self.validateReference(message.tool)
        let id = try await self.store.store.transaction { db -> String in
            guard let tool = try await self.store.tool(message.tool, projectID: message.projectID, on: db) else {
                throw SparkError.notFound("tool")
            }
            try await self.store.delete(id: tool.id, at: ToolStore.now(), on: db)
            return tool.id
        }
        await self.audit(principal, projectID: message.projectID, action: "tool.delete", target: id, metadata: request.metadata)
        return ServerResponse(message: .init())
    }

    // MARK: Secrets

    public func putSecret(
        request: ServerRequest<Sparkops_Tool_V1_PutSecretRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Tool_V1_Secret> {
        let message = request.message
        let principal = try await self.access.require(request.metadata, projectID: message.projectID, permission: "secret.write")
        try Self.validateSecretName(message.name)
        guard !message.value.isEmpty else { throw SparkError.invalid("value", "is required") }
        guard message.value.utf8.count <= 32 * 1024 else { throw SparkError.invalid("value", "is longer than 32 KiB") }
        let hosts = try Self.validateSecretHosts(message.hosts)
        let (keyID, sealed) = try self.secrets.seal(message.value, projectID: message.projectID, name: message.name)
        let now = ToolStore.now()
        let (row, created) = try await self.store.store.transaction { db -> (SecretRow, Bool) in
            let existing = try await self.store.secret(projectID: message.projectID, name: message.name, on: db)
            let row = SecretRow(projectID: message.projectID, name: message.name, keyID: keyID, sealed: sealed, createdAt: existing?.createdAt ?? now, updatedAt: now, updatedBy: principal.id, hosts: hosts)
            return (row, try await self.store.put(row, on: db))
        }
        self.scrubber.forget(projectID: message.projectID)
        await self.audit(principal, projectID: message.projectID, action: created ? "secret.create" : "secret.update", target: message.name, metadata: request.metadata)
        return ServerResponse(message: Self.message(row))
    }

    /// A secret's hosts: each a host name (a `*.` prefix for every name below a domain) or an
    /// address, lower-cased, at most 50; INVALID_ARGUMENT naming `hosts[i]` otherwise.
    static func validateSecretHosts(_ hosts: [String]) throws(SparkError) -> [String] {
        guard hosts.count <= 50 else { throw SparkError.invalid("hosts", "has \(hosts.count) hosts; at most 50") }
        var out: [String] = []
        for (index, given) in hosts.enumerated() {
            let host = given.trimmingCharacters(in: .whitespaces).lowercased()
            let name = host.hasPrefix("*.") ? String(host.dropFirst(2)) : host
            let allowed = CharacterSet(charactersIn: "abcdefghijklmnopqrstuvwxyz0123456789.-:")
            guard !name.isEmpty, name.utf8.count <= 253, name.unicodeScalars.allSatisfy(allowed.contains), !name.hasPrefix("."), !name.hasSuffix("."), !name.contains("..") else {
                throw SparkError.invalid("hosts[\(index)]", "\(given.debugDescription) is not a host name (api.example.com, *.example.com) or an address")
            }
            if !out.contains(host) { out.append(host) }
        }
        return out
    }

    public func listSecrets(
        request: ServerRequest<Sparkops_Tool_V1_ListSecretsRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Tool_V1_ListSecretsResponse> {
        let message = request.message
        try await self.access.require(request.metadata, projectID: message.projectID, permission: "tool.read")
        let (limit, after) = try Paging.parse(size: message.pageSize, token: message.pageToken)
        let rows = try await self.store.store.sql { try await self.store.secrets(projectID: message.projectID, after: after, limit: limit, on: $0) }
        return ServerResponse(message: .with {
            $0.secrets = rows.map(Self.message)
            $0.nextPageToken = Paging.token(lastID: rows.last?.name, count: rows.count, limit: limit)
        })
    }

    public func deleteSecret(
        request: ServerRequest<Sparkops_Tool_V1_DeleteSecretRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Tool_V1_DeleteSecretResponse> {
        let message = request.message
        let principal = try await self.access.require(request.metadata, projectID: message.projectID, permission: "secret.write")
        try Self.validateSecretName(message.name)
        let deleted = try await self.store.store.transaction { try await self.store.deleteSecret(projectID: message.projectID, name: message.name, on: $0) }
        guard deleted else { throw SparkError.notFound("secret") }
        await self.audit(principal, projectID: message.projectID, action: "secret.delete", target: message.name, metadata: request.metadata)
        return ServerResponse(message: .init())
    }

    /// The agent service reads a model provider's API key (the caller allowlist lets no one else
    /// call this; it has no HTTP route). The end user must be allowed to run things in the project.
    public func revealSecret(
        request: ServerRequest<Sparkops_Tool_V1_RevealSecretRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Tool_V1_RevealSecretResponse> {
        let message = request.message
        try await self.access.require(request.metadata, projectID: message.projectID, permission: "run.create")
        try Self.validateSecretName(message.name)
        guard let row = try await self.store.store.sql({ try await self.store.secret(projectID: message.projectID, name: message.name, on: $0) }) else {
            throw SparkError.notFound("secret")
        }
        guard row.allows(message.host) else {
            throw SparkError(.permissionDenied, ToolRunner.SecretRefused(name: row.name, host: message.host, hosts: row.hosts).description, field: "host")
        }
        let value = try self.secrets.open(keyID: row.keyID, sealed: row.sealed, projectID: row.projectID, name: row.name)
        return ServerResponse(message: .with { $0.value = value })
    }

    // MARK: Helpers

    static func validateReference(_ reference: String) throws {
        guard !reference.isEmpty else { throw SparkError.invalid("tool", "is required") }
        guard reference.utf8.count <= 100, !reference.contains("/") else { throw SparkError.invalid("tool", "is neither a tool id nor a tool name") }
    }

    static func validateSecretName(_ name: String) throws {
        guard !name.isEmpty else { throw SparkError.invalid("name", "is required") }
        guard let first = name.unicodeScalars.first, first.properties.isAlphabetic || ("0"..."9").contains(first), name.unicodeScalars.count <= 100,
              name.unicodeScalars.allSatisfy({ $0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0) || "_.-".unicodeScalars.contains($0)) })
        else {
            throw SparkError.invalid("name", "must be 1–100 letters, digits, _ . -, starting with a letter or digit")
        }
    }

    /// Records the mutation in the project's audit log (a log that cannot be reached is logged).
    func audit(_ principal: Sparkops_Common_V1_Principal, projectID: String, action: String, target: String, detail: String = "", metadata: Metadata) async {
        await self.access.record(principal, projectID: projectID, action: action, target: target, detail: detail, metadata: metadata, logger: self.logger)
    }

    static func message(_ row: ToolRow) throws -> Sparkops_Tool_V1_Tool {
        let canonical = try ExprValue(jsonText: row.canonical)
        var schema = Sparkops_Common_V1_Json()
        if case .map(let fields) = canonical, let value = fields["input_schema"], case .map = value {
            schema = Sparkops_Common_V1_Json(value)
        }
        return .with {
            $0.id = row.id
            $0.projectID = row.projectID
            $0.name = row.name
            $0.description_p = row.description
            $0.kind = row.kind
            $0.sideEffects = row.sideEffects
            $0.costMicros = row.costMicros
            $0.inputSchema = schema
            $0.latestVersion = Int32(clamping: row.latestVersion)
            $0.contentHash = row.contentHash
            $0.createTime = .init(microseconds: row.createdAt)
            $0.updateTime = .init(microseconds: row.updatedAt)
            $0.createdBy = row.createdBy
        }
    }

    static func message(_ row: ToolVersionRow) throws -> Sparkops_Tool_V1_ToolVersion {
        let definition = Sparkops_Common_V1_Json.with { $0.text = row.canonical }
        return .with {
            $0.toolID = row.toolID
            $0.version = Int32(clamping: row.version)
            $0.contentHash = row.contentHash
            $0.source = row.source
            $0.definition = definition
            $0.createTime = .init(microseconds: row.createdAt)
            $0.createdBy = row.createdBy
        }
    }

    static func message(_ row: SecretRow) -> Sparkops_Tool_V1_Secret {
        .with {
            $0.name = row.name
            $0.projectID = row.projectID
            $0.createTime = .init(microseconds: row.createdAt)
            $0.updateTime = .init(microseconds: row.updatedAt)
            $0.updatedBy = row.updatedBy
            $0.hosts = row.hosts
        }
    }
}
