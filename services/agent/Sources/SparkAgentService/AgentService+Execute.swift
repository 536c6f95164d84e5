import Crypto
import Foundation
public import GRPCCore
import Logging
import SQLKit
import SparkExpr
import SparkKit
import SparkWire
public import SparkProto
import SparkWorkflow
import SwiftProtobuf

extension AgentService {
    /// How long past its deadline a step under a key may stay `running` before it counts as
    /// abandoned (its caller or this service died) and a call with the key runs it again.
    static let abandonGrace: Int64 = 30 * 1_000_000

    public func executeAgentStep(
        request: ServerRequest<Sparkops_Agent_V1_ExecuteAgentStepRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Agent_V1_AgentExecution> {
        let message = request.message
        let principal = try await self.access.require(request.metadata, projectID: message.projectID, permission: "run.create")
        try Self.validateReference(message.agent)
        guard !message.prompt.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty else { throw SparkError.invalid("prompt", "is required: the task for the model") }
        guard message.prompt.utf8.count <= 1 << 20 else { throw SparkError.invalid("prompt", "is longer than 1 MiB") }
        let key = message.idempotencyKey
        guard key.utf8.count <= 200, key.unicodeScalars.allSatisfy({ $0.value >= 0x21 && $0.value < 0x7F }) else {
            throw SparkError.invalid("idempotency_key", "must be at most 200 printable ASCII characters, without spaces")
        }
        guard message.timeoutMs >= 0 else { throw SparkError.invalid("timeout_ms", "must be 0 (the agent's timeout) or more") }
        if message.approved, context.sparkWirePeer?.identity != ServiceName.run.rawValue {
            throw SparkError(.permissionDenied, "only the run service passes a human's approval of a held step", field: "approved")
        }
        for (field, value) in [("run_id", message.runID), ("step_id", message.stepID), ("workflow", message.workflow)] where value.utf8.count > 200 {
            throw SparkError.invalid(field, "is longer than 200 characters")
        }
        let input: ExprValue?
        do {
            input = message.input.isEmpty ? nil : try message.input.value(field: "input")
        } catch {
            throw SparkError.invalid("input", "is not JSON")
        }
        guard let row = try await self.store.store.sql({ try await self.store.agents.row(message.agent, projectID: message.projectID, on: $0) }) else {
            throw SparkError.notFound("agent")
        }
        let definition = try self.definition(canonical: row.canonical, hash: row.contentHash)
        guard let provider = self.catalog.provider(definition.provider) else {
            throw SparkError(.failedPrecondition, "the model catalog has no provider \(definition.provider.debugDescription) any more", field: "provider")
        }
        guard let pricing = self.catalog.pricing(provider: definition.provider, model: definition.model) else {
            throw SparkError(.failedPrecondition, "the model catalog has no price for \(definition.model.debugDescription) of \(definition.provider); add it to agent.catalog (or set agent.allowUnpricedModels)", field: "model")
        }
        var timeout = Duration.milliseconds(definition.timeout.milliseconds)
        if message.timeoutMs > 0 { timeout = min(timeout, .milliseconds(message.timeoutMs)) }

        let executionID = SparkID.make("exec")
        let now = AgentStore.now()
        let execution = ExecutionRow(
            id: executionID, projectID: message.projectID, agentID: row.id, agentVersion: row.latestVersion, key: key.isEmpty ? executionID : key,
            requestHash: Self.hash("\(message.prompt)\u{0}\(input?.stableJSONText ?? "")"), runID: message.runID, stepID: message.stepID,
            status: "running", record: "", startedAt: now, startedBy: principal.id, deadlineAt: now + Int64(timeout.milliseconds) * 1000
        )
        var resume: (record: Sparkops_Agent_V1_AgentExecution, point: AgentLoop.ResumePoint)?
        if !key.isEmpty {
            switch try await self.claim(execution) {
            case .replay(let earlier): return ServerResponse(message: earlier)
            case .resume(let record, let point): resume = (record, point)
            case .fresh: break
            }
        } else {
            try await self.store.store.transaction { _ = try await self.store.begin(execution, on: $0) }
        }

        let started = ContinuousClock.now
        var resumePoint: AgentLoop.ResumePoint?
        var result = Sparkops_Agent_V1_AgentExecution.with {
            $0.id = executionID
            $0.projectID = message.projectID
            $0.agentID = row.id
            $0.agentVersion = Int32(clamping: row.latestVersion)
            $0.runID = message.runID
            $0.stepID = message.stepID
            $0.startTime = .init(microseconds: now)
            $0.startedBy = principal.id
        }
        do {
            // A run's step pauses for a human when a policy holds one of its tool calls; a call
            // from elsewhere has no one to wait for, and the model is told instead.
            let fromRun = context.sparkWirePeer?.identity == ServiceName.run.rawValue
            let outcome = try await self.run(
                definition, provider: provider, pricing: pricing, prompt: message.prompt, input: input, execution: execution, workflow: message.workflow,
                principal: principal, approved: message.approved, approvedDigests: message.approvedDigests,
                step: StepLabels(attempt: message.attempt, workflowID: message.workflowID, workflowVersion: message.workflowVersion), pausesOnHold: fromRun,
                resume: resume, deadline: started.advanced(by: timeout)
            )
            resumePoint = outcome.resumePoint
            result.llmCalls = outcome.llmCalls
            result.toolCalls = outcome.toolCalls
            if case .failure(let failure) = outcome.result, failure.reason == "approval_required", let held = outcome.heldCall { result.heldCall = held }
            switch outcome.result {
            case .success(let answer):
                result.status = "succeeded"
                result.text = answer.text
                result.output = Sparkops_Common_V1_Json(answer.output)
            case .failure(let failure):
                result.status = "failed"
                result.error = .with {
                    $0.reason = failure.reason
                    $0.message = failure.message
                }
            }
        } catch {
            // Nothing ran to record: the call failed before the loop (a secret or the tools could
            // not be read). The key is given back so that the caller can try again.
            try? await self.store.store.transaction { try await self.store.finish(id: executionID, status: "failed", record: "", on: $0) }
            if !key.isEmpty {
                try? await self.store.store.transaction { db in
                    try await db.raw("DELETE FROM agent_executions WHERE id = \(bind: executionID)").run()
                }
            }
            throw error
        }
        // What this execution spent: calls carried from the held execution it resumed were
        // counted by that one (and reported to the run with its hold).
        let own = result.llmCalls.filter { !$0.carried }
        result.inputTokens = own.reduce(0) { $0 + $1.inputTokens }
        result.outputTokens = own.reduce(0) { $0 + $1.outputTokens }
        result.costMicros = own.reduce(0) { $0 + $1.costMicros } + result.toolCalls.filter { !$0.carried }.reduce(0) { $0 + $1.costMicros }
        result.durationMs = started.duration(to: .now).milliseconds
        let record = try result.sparkJSONString()
        // A step a policy held did nothing final: its key is taken again by the next call (the
        // one a human approved), rather than answered with the hold.
        let status = result.status == "failed" && result.error.reason == "approval_required" ? "held" : result.status
        let point = status == "held" ? resumePoint?.value.jsonText ?? "" : ""
        try await self.store.store.transaction { try await self.store.finish(id: executionID, status: status, record: record, resume: point, on: $0) }
        self.logger.info("agent step", metadata: [
            "agent": "\(definition.name)", "status": "\(status)", "llm_calls": "\(result.llmCalls.count)", "tool_calls": "\(result.toolCalls.count)",
            "cost_micros": "\(result.costMicros)", "duration_ms": "\(result.durationMs)",
        ])
        return ServerResponse(message: result)
    }

    /// The step a run's agent step is, for policies.
    struct StepLabels {
        var attempt: Int32 = 0
        var workflowID = ""
        var workflowVersion: Int32 = 0
    }

    struct LoopOutcome {
        var result: Result<(text: String, output: ExprValue), AgentLoop.Failure>
        var llmCalls: [Sparkops_Agent_V1_LLMCall]
        var toolCalls: [Sparkops_Agent_V1_ToolCall]
        var heldCall: Sparkops_Common_V1_HeldCall?
        var resumePoint: AgentLoop.ResumePoint?
    }

    func run(
        _ definition: AgentDefinition, provider: ModelCatalog.Provider, pricing: ModelCatalog.Model, prompt: String, input: ExprValue?,
        execution: ExecutionRow, workflow: String, principal: Sparkops_Common_V1_Principal, approved: Bool = false, approvedDigests: [String] = [], step: StepLabels = StepLabels(), pausesOnHold: Bool = false,
        resume: (record: Sparkops_Agent_V1_AgentExecution, point: AgentLoop.ResumePoint)? = nil,
        deadline: ContinuousClock.Instant
    ) async throws -> LoopOutcome {
        let secretName = definition.apiKeySecret.isEmpty ? provider.apiKeySecret : definition.apiKeySecret
        var apiKey: String?
        if !secretName.isEmpty {
            do {
                apiKey = try await self.tools.secret(secretName, host: URLComponents(string: provider.baseURL)?.host ?? "", projectID: execution.projectID, principal: principal)
            } catch let error as RPCError where error.code == .permissionDenied {
                return LoopOutcome(result: .failure(AgentLoop.Failure(reason: "secret_refused", message: "the API key of \(provider.name): \(error.message)")), llmCalls: [], toolCalls: [])
            }
            if apiKey == nil {
                return LoopOutcome(result: .failure(AgentLoop.Failure(reason: "secret_missing", message: "the project has no secret \(secretName.debugDescription) holding the API key of \(provider.name); write it with `sparkops secret set \(secretName)`")), llmCalls: [], toolCalls: [])
            }
        }
        var tools: [OfferedTool] = []
        if !definition.tools.isEmpty {
            var found: [String: Sparkops_Tool_V1_Tool] = [:]
            let wanted = Set(definition.tools)
            for tool in try await self.tools.list(projectID: execution.projectID, principal: principal) where wanted.contains(tool.name) {
                found[tool.name] = tool
            }
            for name in definition.tools {
                guard let tool = found[name] else { continue }
                guard tool.kind == "mcp" else {
                    let schema = (try? tool.inputSchema.value(field: "input_schema", absent: .map(["type": "object"]))) ?? .map(["type": "object"])
                    tools.append(OfferedTool(chat: ChatTool(name: name, description: tool.description_p, parameters: schema), tool: name))
                    continue
                }
                // Each of the server's tools, under a name a model accepts.
                for function in try await self.tools.functions(of: name, projectID: execution.projectID, principal: principal) {
                    let offered = "\(name)__\(function.name)"
                    guard offered.count <= 64, offered.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_" || $0 == "-") }) else {
                        self.logger.warning("an MCP server's tool cannot be offered to a model under its name", metadata: ["tool": "\(name)", "function": "\(function.name)"])
                        continue
                    }
                    let schema = (try? function.inputSchema.value(field: "input_schema", absent: .map(["type": "object"]))) ?? .map(["type": "object"])
                    let description = function.description_p.isEmpty ? tool.description_p : function.description_p
                    tools.append(OfferedTool(chat: ChatTool(name: offered, description: description, parameters: schema), tool: name, function: function.name))
                }
            }
        }
        var loop = AgentLoop(
            definition: definition, provider: provider, pricing: pricing, llm: self.llm, apiKey: apiKey, tools: tools,
            projectTools: self.tools, policy: self.policy, budget: self.budget, principal: principal, projectID: execution.projectID,
            memory: definition.memory ? AgentMemory(store: self.store, projectID: execution.projectID, agentID: execution.agentID, executionID: execution.id) : nil,
            idempotencyKey: execution.key == execution.id ? "" : execution.key, deadline: deadline, logger: self.logger,
            runID: execution.runID, stepID: execution.stepID, workflow: workflow, approved: approved, pausesOnHold: pausesOnHold
        )
        loop.approvedDigests = approvedDigests
        if let resume {
            // The calls made before the hold are kept in this record, marked as carried.
            loop.resumeFrom = resume.point
            loop.llmCalls = resume.record.llmCalls.map { var call = $0; call.carried = true; return call }
            loop.toolCalls = resume.record.toolCalls.map { var call = $0; call.carried = true; return call }
        }
        loop.attempt = step.attempt
        loop.workflowID = step.workflowID
        loop.workflowVersion = step.workflowVersion
        let result = await loop.run(prompt: prompt, input: input)
        return LoopOutcome(result: result, llmCalls: loop.llmCalls, toolCalls: loop.toolCalls, heldCall: loop.heldCall, resumePoint: loop.resumePoint)
    }

    /// What taking a step's key found.
    enum Claimed {
        /// The key was free, or its step was abandoned: the step runs from the start.
        case fresh
        /// An earlier call under the key ended: its answer.
        case replay(Sparkops_Agent_V1_AgentExecution)
        /// An earlier call ended held: the step resumes where it stood, with its calls so far.
        case resume(Sparkops_Agent_V1_AgentExecution, AgentLoop.ResumePoint)
    }

    /// Takes the key for this step, or answers what an earlier call under it did.
    func claim(_ execution: ExecutionRow) async throws -> Claimed {
        try await self.store.store.transaction { db -> Claimed in
            if try await self.store.begin(execution, on: db) { return .fresh }
            guard let earlier = try await self.store.execution(projectID: execution.projectID, agentID: execution.agentID, key: execution.key, on: db) else {
                throw SparkError(.aborted, "the idempotency key is being written by another call; try again")
            }
            guard earlier.requestHash == execution.requestHash else {
                throw SparkError(.alreadyExists, "the idempotency key was used with another prompt or input", field: "idempotency_key")
            }
            if earlier.status == "held" {
                // Held by a policy, nothing final done: this call takes the step over and
                // resumes it where it stood (an execution held before resume points were kept
                // runs again, its tool calls that ran replayed under their own keys).
                guard try await self.store.retake(execution, from: earlier, on: db) else {
                    throw SparkError(.aborted, "another call took over this idempotency key; try again")
                }
                if !earlier.resume.isEmpty, let value = try? ExprValue(jsonText: earlier.resume), let point = AgentLoop.ResumePoint(value),
                    let record = try? Sparkops_Agent_V1_AgentExecution(sparkJSON: earlier.record) {
                    return .resume(record, point)
                }
                return .fresh
            }
            if earlier.status != "running" {
                var stored = try Sparkops_Agent_V1_AgentExecution(sparkJSON: earlier.record)
                stored.replayed = true
                return .replay(stored)
            }
            guard earlier.deadlineAt + Self.abandonGrace < execution.startedAt else {
                throw SparkError(.aborted, "a step under this idempotency key is still running; try again when it has ended", field: "idempotency_key")
            }
            // Abandoned: run it again; its tool calls replay under their own keys.
            guard try await self.store.retake(execution, from: earlier, on: db) else {
                throw SparkError(.aborted, "another call took over this idempotency key; try again")
            }
            return .fresh
        }
    }

    static func hash(_ text: String) -> String {
        SparkHex.encode(Array(SHA256.hash(data: Data(text.utf8))))
    }

    // MARK: Records

    public func getAgentExecution(
        request: ServerRequest<Sparkops_Agent_V1_GetAgentExecutionRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Agent_V1_AgentExecution> {
        let message = request.message
        try await self.access.require(request.metadata, projectID: message.projectID, permission: "agent.read")
        guard !message.executionID.isEmpty else { throw SparkError.invalid("execution_id", "is required") }
        guard SparkID.isValid(message.executionID, prefix: "exec") else { throw SparkError.invalid("execution_id", "is not an execution id (exec_…)") }
        guard let row = try await self.store.store.sql({ try await self.store.execution(id: message.executionID, projectID: message.projectID, on: $0) }) else {
            throw SparkError.notFound("agent execution")
        }
        return ServerResponse(message: try Self.message(row))
    }

    public func listAgentExecutions(
        request: ServerRequest<Sparkops_Agent_V1_ListAgentExecutionsRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Agent_V1_ListAgentExecutionsResponse> {
        let message = request.message
        try await self.access.require(request.metadata, projectID: message.projectID, permission: "agent.read")
        if !message.agent.isEmpty { try Self.validateReference(message.agent) }
        let (limit, before) = try Paging.parse(size: message.pageSize, token: message.pageToken)
        let rows = try await self.store.store.sql { db -> [ExecutionRow]? in
            var agentID: String?
            if !message.agent.isEmpty {
                guard let agent = try await self.store.agents.row(message.agent, projectID: message.projectID, on: db) else { return nil }
                agentID = agent.id
            }
            return try await self.store.executions(projectID: message.projectID, agentID: agentID, before: before, limit: limit, on: db)
        }
        guard let rows else { throw SparkError.notFound("agent") }
        return ServerResponse(message: try .with {
            $0.executions = try rows.map { row in
                var execution = try Self.message(row)
                execution.llmCalls = []
                execution.toolCalls = []
                return execution
            }
            $0.nextPageToken = Paging.token(lastID: rows.last?.id, count: rows.count, limit: limit)
        })
    }

    static func message(_ row: ExecutionRow) throws -> Sparkops_Agent_V1_AgentExecution {
        if row.status != "running", !row.record.isEmpty {
            return try Sparkops_Agent_V1_AgentExecution(sparkJSON: row.record)
        }
        return .with {
            $0.id = row.id
            $0.projectID = row.projectID
            $0.agentID = row.agentID
            $0.agentVersion = Int32(clamping: row.agentVersion)
            $0.runID = row.runID
            $0.stepID = row.stepID
            $0.status = row.status
            $0.startTime = .init(microseconds: row.startedAt)
            $0.startedBy = row.startedBy
        }
    }
}
