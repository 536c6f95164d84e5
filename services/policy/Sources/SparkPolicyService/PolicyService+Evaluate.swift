import Foundation
public import GRPCCore
import SQLKit
public import SparkKit
public import SparkProto
import SparkExpr
import SparkWorkflow
import Logging
import Synchronization
import SwiftProtobuf

extension PolicyService {
    /// Bytes of one string of the context, and of a tool call's arguments as JSON, at most.
    static let maxFieldBytes = 1024
    static let maxArgumentBytes = 64 * 1024
    static let maxLabels = 32

    public func evaluate(
        request: ServerRequest<Sparkops_Policy_V1_EvaluateRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Policy_V1_EvaluateResponse> {
        let message = request.message
        let point = try Self.point(message.point)
        try Self.validateProject(message.projectID)
        var policyContext = message.context
        try Self.validate(policyContext)
        let caller = try? Sparkops_Common_V1_Principal.required(request.metadata)
        if let caller {
            policyContext.principal.id = caller.id
            policyContext.principal.kind = caller.kind == .apiKey ? "api_key" : "user"
            policyContext.principal.userID = caller.userID
            policyContext.principal.role = ""
        }
        let policies = try await self.policies(projectID: message.projectID)
        let reads = policies.filter { $0.definition.applies(at: point) }.reduce(into: Set<String>()) { $0.formUnion($1.reads) }
        if let principal = caller, reads.contains("principal.role") || reads.contains("principal") {
            let role = try await self.access.role(of: principal, projectID: message.projectID)
            policyContext.principal.role = role == .unspecified ? "" : role.name
        }
        if let principal = caller, reads.contains(where: { $0 == "budget" || $0.hasPrefix("budget.") }) {
            policyContext.budget = try await self.budgets.tightest(projectID: message.projectID, context: policyContext, principal: principal)
        }
        let now = Date()
        let environment = PolicyEnvironment.make(point: point, projectID: message.projectID, context: policyContext, time: now, zone: self.settings.timeZone)
        var decision = PolicyEngine.decide(point: point, policies: policies, environment: environment, fallback: self.settings.defaultEffect)
        decision.time = .init(date: now)
        if decision.effect != PolicyDefinition.Effect.allow.rawValue {
            let id = SparkID.make("viol")
            decision.violationID = id
            let row = ViolationRow(
                id: id, projectID: message.projectID, point: point.rawValue, effect: decision.effect, decision: try decision.jsonString(),
                context: ExprValue.map(environment).jsonText, principalID: policyContext.principal.id, createdAt: DefinitionTable.now()
            )
            try await self.store.store.sql { try await self.store.insert(row, on: $0) }
            self.logger.info("policy decision", metadata: [
                "project": "\(message.projectID)", "point": "\(point.rawValue)", "effect": "\(decision.effect)", "violation": "\(id)",
                "message": "\(decision.message)",
            ])
        }
        return ServerResponse(message: .with { $0.decision = decision })
    }

    public func testPolicy(
        request: ServerRequest<Sparkops_Policy_V1_TestPolicyRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Policy_V1_TestPolicyResponse> {
        let message = request.message
        try await self.access.require(request.metadata, projectID: message.projectID, permission: "policy.read")
        let point = try Self.point(message.point)
        try Self.validate(message.context)
        var policies: [CompiledPolicy] = []
        if !message.source.isEmpty {
            let definition = try Self.read(message.source)
            let saved = message.withSaved ? try await self.policies(projectID: message.projectID) : []
            policies = saved.filter { $0.global || $0.definition.name != definition.name }
            policies.append(CompiledPolicy(id: "", version: 0, global: false, definition: definition))
        } else {
            guard !message.withSaved else { throw SparkError.invalid("with_saved", "needs a source to test beside the saved policies") }
            policies = try await self.policies(projectID: message.projectID)
        }
        let time = message.hasTime ? message.time.date : Date()
        let environment = PolicyEnvironment.make(point: point, projectID: message.projectID, context: message.context, time: time, zone: self.settings.timeZone)
        var decision = PolicyEngine.decide(point: point, policies: policies, environment: environment, fallback: self.settings.defaultEffect)
        decision.time = .init(date: time)
        let shown = Sparkops_Common_V1_Json(.map(environment))
        return ServerResponse(message: .with {
            $0.decision = decision
            $0.environment = shown
        })
    }

    // MARK: Violations

    public func getViolation(
        request: ServerRequest<Sparkops_Policy_V1_GetViolationRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Policy_V1_Violation> {
        let message = request.message
        try await self.access.require(request.metadata, projectID: message.projectID, permission: "policy.read")
        guard SparkID.isValid(message.violationID, prefix: "viol") else {
            throw SparkError.invalid("violation_id", message.violationID.isEmpty ? "is required" : "is not a viol_… id")
        }
        guard let row = try await self.store.store.sql({ try await self.store.violation(id: message.violationID, projectID: message.projectID, on: $0) }) else {
            throw SparkError.notFound("violation")
        }
        return ServerResponse(message: try Self.message(row, withContext: true))
    }

    public func listViolations(
        request: ServerRequest<Sparkops_Policy_V1_ListViolationsRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Policy_V1_ListViolationsResponse> {
        let message = request.message
        try await self.access.require(request.metadata, projectID: message.projectID, permission: "policy.read")
        if !message.point.isEmpty { _ = try Self.point(message.point) }
        guard ["", "deny", "require_approval"].contains(message.effect) else {
            throw SparkError.invalid("effect", "must be deny or require_approval")
        }
        let (limit, before) = try Paging.parse(size: message.pageSize, token: message.pageToken)
        let rows = try await self.store.store.sql {
            try await self.store.violations(projectID: message.projectID, point: message.point, effect: message.effect, before: before, limit: limit, on: $0)
        }
        return ServerResponse(message: try .with {
            $0.violations = try rows.map { try Self.message($0, withContext: false) }
            $0.nextPageToken = Paging.token(lastID: rows.last?.id, count: rows.count, limit: limit)
        })
    }

    static func message(_ row: ViolationRow, withContext: Bool) throws -> Sparkops_Policy_V1_Violation {
        let decision = try Sparkops_Policy_V1_Decision(jsonString: row.decision)
        let context = withContext ? Sparkops_Common_V1_Json.with { $0.text = row.context } : nil
        return .with {
            $0.id = row.id
            $0.projectID = row.projectID
            $0.point = row.point
            $0.effect = row.effect
            $0.decision = decision
            if let context { $0.context = context }
            $0.principalID = row.principalID
            $0.createTime = .init(microseconds: row.createdAt)
        }
    }

    // MARK: Policies in force

    /// The global policies then the project's, compiled; read again only when a scope's
    /// revision moved (a change on any replica bumps it in the change's transaction).
    func policies(projectID: String) async throws -> [CompiledPolicy] {
        let revisions = try await self.store.store.sql { try await self.store.revisions(projectID: projectID, on: $0) }
        var result: [CompiledPolicy] = []
        for (scope, revision) in [("", revisions.global), (projectID, revisions.project)] {
            if let cached = self.compiled.withLock({ $0[scope] }), cached.revision == revision {
                result += cached.policies
                continue
            }
            let rows = try await self.store.store.sql { try await self.store.all(scope: scope, on: $0) }
            let policies = try rows.map { row in
                do {
                    return CompiledPolicy(id: row.id, version: row.latestVersion, global: scope.isEmpty, definition: try PolicyDefinition.read(row.canonical))
                } catch {
                    throw SparkError(.internalError, "the stored policy \(row.id) does not read back")
                }
            }
            self.compiled.withLock { cache in
                if cache.count > 10_000 { cache.removeAll() }
                cache[scope] = (revision, policies)
            }
            result += policies
        }
        return result
    }

    // MARK: Input checks

    static func point(_ text: String) throws -> PolicyDefinition.Point {
        guard let point = PolicyDefinition.Point(rawValue: text) else {
            throw SparkError.invalid("point", text.isEmpty ? "is required: run.create, step.start, tool.invoke or llm.call" : "\(text.debugDescription) is not a point; known: run.create, step.start, tool.invoke, llm.call")
        }
        return point
    }

    static func validateProject(_ projectID: String) throws {
        guard SparkID.isValid(projectID, prefix: "prj") else {
            throw SparkError.invalid("project_id", projectID.isEmpty ? "is required" : "is not a prj_… id")
        }
    }

    /// Refuses a context with a field too large to decide on, naming the field.
    static func validate(_ context: Sparkops_Policy_V1_PolicyContext) throws {
        let strings: [(String, String)] = [
            ("principal.id", context.principal.id), ("principal.kind", context.principal.kind), ("principal.role", context.principal.role),
            ("principal.user_id", context.principal.userID), ("workflow.id", context.workflow.id), ("workflow.name", context.workflow.name),
            ("step.id", context.step.id), ("step.kind", context.step.kind), ("tool.name", context.tool.name), ("tool.kind", context.tool.kind),
            ("tool.host", context.tool.host), ("tool.side_effects", context.tool.sideEffects), ("model.provider", context.model.provider),
            ("model.name", context.model.name), ("budget.id", context.budget.id), ("run_id", context.runID), ("agent", context.agent),
        ]
        for (field, value) in strings where value.utf8.count > Self.maxFieldBytes {
            throw SparkError.invalid("context.\(field)", "is \(value.utf8.count) bytes; at most \(Self.maxFieldBytes)")
        }
        let numbers: [(String, Int64)] = [
            ("tool.cost_micros", context.tool.costMicros), ("model.input_tokens", context.model.inputTokens), ("model.max_tokens", context.model.maxTokens),
            ("estimated_cost_micros", context.estimatedCostMicros), ("budget.limit_micros", context.budget.limitMicros),
            ("budget.spent_micros", context.budget.spentMicros), ("budget.reserved_micros", context.budget.reservedMicros),
        ]
        for (field, value) in numbers where value < 0 {
            throw SparkError.invalid("context.\(field)", "must not be negative")
        }
        if context.tool.hasArguments {
            let size = context.tool.arguments.text.utf8.count
            if size > Self.maxArgumentBytes {
                throw SparkError.invalid("context.tool.arguments", "is \(size) bytes of JSON; at most \(Self.maxArgumentBytes)")
            }
            _ = try context.tool.arguments.value(field: "context.tool.arguments")
        }
        if context.labels.count > Self.maxLabels {
            throw SparkError.invalid("context.labels", "has \(context.labels.count) labels; at most \(Self.maxLabels)")
        }
        for (key, value) in context.labels where key.utf8.count > 256 || value.utf8.count > 256 || key.isEmpty {
            throw SparkError.invalid("context.labels", "label \(String(key.prefix(40)).debugDescription): keys are 1–256 bytes and values at most 256")
        }
    }
}
