import Foundation
import GRPCCore
import Logging
import SparkExpr
import SparkKit
import SparkProto
import SparkWorkflow
import SwiftProtobuf

/// One agent step: the model is called, the tools it asks for are invoked through the tool
/// service and their results given back, until it answers, a limit is hit or the deadline passes.
///
/// A tool call the model got wrong (a tool it was not offered, arguments that are not JSON or do
/// not fit the tool's input schema) goes back to the model as an error, within the iteration
/// limit; so does an answer that does not fit the agent's output schema. Before each call the
/// context manager (``ContextWindow``) fits the conversation to the model's window.
struct AgentLoop {
    struct Failure: Error {
        var reason: String
        var message: String
    }

    let definition: AgentDefinition
    let provider: ModelCatalog.Provider
    let pricing: ModelCatalog.Model
    let llm: LLMClient
    let apiKey: String?
    /// What the model is offered of the project's tools (a tool deleted since is missing).
    let tools: [OfferedTool]
    let projectTools: ProjectTools
    /// Asked before every model call (`llm.call`).
    let policy: PolicyCheck
    /// Holds each model call's worst case before it, settled at its cost after.
    let budget: BudgetSpend
    let principal: Sparkops_Common_V1_Principal
    let projectID: String
    let memory: AgentMemory?
    /// The step's idempotency key: each tool call is made under `<key>/<iteration>/<n>`.
    let idempotencyKey: String
    let deadline: ContinuousClock.Instant
    let logger: Logger
    /// The run and step the agent step belongs to, passed on to the tool calls' policies.
    var runID = ""
    var stepID = ""
    var workflow = ""
    /// A human approved this step after a hold: the held call goes ahead (its digest is
    /// `approvedDigests`); any other call a policy holds is held again.
    var approved = false
    var approvedDigests: [String] = []
    /// The step's attempt and the workflow version, for policies (`step.attempt`, `workflow.id`, `workflow.version`).
    var attempt: Int32 = 0
    var workflowID = ""
    var workflowVersion: Int32 = 0
    /// The call a policy held, for the approver: set when the step ends held.
    var heldCall: Sparkops_Common_V1_HeldCall?
    /// Where the step stands when it ends held, to resume there once the call is approved.
    var resumePoint: ResumePoint?
    /// Where to start: a held step's resume point, its held call first, without asking the
    /// model again for it.
    var resumeFrom: ResumePoint?
    /// The caller can pause the step for a human (the run service): a tool call a policy holds
    /// ends the step with `approval_required` rather than go back to the model.
    var pausesOnHold = false
    /// The tool call a policy held, when the step pauses on it.
    var held: Failure?

    var llmCalls: [Sparkops_Agent_V1_LLMCall] = []
    var toolCalls: [Sparkops_Agent_V1_ToolCall] = []

    /// The largest tool output given to the model; more is cut, and the model told so.
    static let maxToolResultCharacters = 32 * 1024
    /// The largest output a tool call of an agent may return.
    static let maxToolOutputBytes: Int64 = 256 * 1024

    /// The answer: its text and its output (`{"text": …}`, or the JSON the output schema asked for).
    mutating func run(prompt: String, input: ExprValue?) async -> Result<(text: String, output: ExprValue), Failure> {
        var system = self.definition.systemPrompt
        if let memory = self.memory {
            do {
                system += (system.isEmpty ? "" : "\n\n") + (try await memory.briefing())
            } catch {
                self.logger.warning("could not read the agent's memory", metadata: ["error": "\(error)"])
            }
        }
        if let schema = self.definition.outputSchema {
            system += (system.isEmpty ? "" : "\n\n") + "Answer with one JSON value only, no other text, that fits this JSON Schema: \(schema.jsonText)"
        }
        var offered = self.tools.map(\.chat)
        if self.memory != nil { offered += AgentMemory.tools }
        var task = prompt
        if let input, input != .null { task += "\n\nInput (JSON):\n\(input.jsonText)" }
        var messages: [ChatMessage] = [.user(task)]
        var first = 1
        if let resume = self.resumeFrom {
            // A held step resumes where it stood: the same system prompt and messages, and the
            // held call (then the rest of its turn) made now, the model not asked again.
            system = resume.system
            messages = resume.messages
            first = resume.iteration
            if !resume.pending.isEmpty {
                for (offset, call) in resume.pending.enumerated() {
                    let result = await self.invoke(call, iteration: resume.iteration, index: resume.nextIndex + offset, offered: offered)
                    if let held = self.held {
                        self.resumePoint = ResumePoint(system: system, messages: messages, iteration: resume.iteration, pending: Array(resume.pending[offset...]), nextIndex: resume.nextIndex + offset)
                        return .failure(held)
                    }
                    messages.append(result)
                }
                first = resume.iteration + 1
            }
        }
        var window = ContextWindow(
            contextWindow: self.pricing.contextWindow, maxTokens: self.definition.maxTokens,
            fixedTokens: system.utf8.count / 4 + offered.reduce(0) { $0 + $1.estimatedTokens }
        )

        for iteration in stride(from: first, through: self.definition.maxIterations, by: 1) {
            if Task.isCancelled { return .failure(Failure(reason: "cancelled", message: "the step was cancelled")) }
            guard ContinuousClock.now < self.deadline else {
                return .failure(Failure(reason: "timeout", message: "the step's deadline passed after \(iteration - 1) model calls"))
            }
            let response: ChatResponse
            switch await self.call(&window, messages: messages, system: system, tools: offered, iteration: iteration) {
            case .success(let answer): response = answer
            case .failure(let failure):
                if failure.reason == "approval_required", self.pausesOnHold, self.heldCall?.kind == "model" {
                    self.resumePoint = ResumePoint(system: system, messages: messages, iteration: iteration, pending: [], nextIndex: 0)
                }
                return .failure(failure)
            }
            if !response.toolCalls.isEmpty {
                messages.append(ChatMessage(role: .assistant, text: response.text, toolCalls: response.toolCalls))
                for (index, call) in response.toolCalls.enumerated() {
                    let result = await self.invoke(call, iteration: iteration, index: index + 1, offered: offered)
                    if let held = self.held {
                        // Kept without the held call's result: it is made when approved.
                        self.resumePoint = ResumePoint(system: system, messages: messages, iteration: iteration, pending: Array(response.toolCalls[index...]), nextIndex: index + 1)
                        return .failure(held)
                    }
                    messages.append(result)
                }
                continue
            }
            guard let schema = self.definition.schema else {
                return .success((response.text, .map(["text": .string(response.text)])))
            }
            switch Self.parseAnswer(response.text, schema: schema) {
            case .success(let output):
                return .success((response.text, output))
            case .failure(let problem):
                guard iteration < self.definition.maxIterations else {
                    return .failure(Failure(reason: "invalid_output", message: "the model's answer does not fit the output schema: \(problem)"))
                }
                messages.append(ChatMessage(role: .assistant, text: response.text))
                messages.append(.user("Your answer does not fit the output schema: \(problem). Answer again with the JSON value only."))
            }
        }
        return .failure(Failure(reason: "max_iterations", message: "the model had not answered after \(self.definition.maxIterations) calls (max_iterations)"))
    }

    /// One model call, fitted to the window, asked of the policy service and reserved on the
    /// budgets first; a context-length refusal trims more, twice at most. The reservation is
    /// settled at the call's cost once the provider answered, and released when it did not.
    mutating func call(_ window: inout ContextWindow, messages: [ChatMessage], system: String, tools: [ChatTool], iteration: Int) async -> Result<ChatResponse, Failure> {
        let started = ContinuousClock.now
        var record = Sparkops_Agent_V1_LLMCall.with {
            $0.iteration = Int32(iteration)
            $0.provider = self.provider.name
            $0.model = self.definition.model
        }
        defer {
            record.durationMs = started.duration(to: .now).milliseconds
            self.llmCalls.append(record)
        }
        guard let fitted = window.fit(messages) else {
            record.error = "the task alone does not fit the model's window of \(window.contextWindow) tokens"
            return .failure(Failure(reason: "context_length", message: "the task and the system prompt do not fit \(self.definition.model)'s context window of \(window.contextWindow) tokens with max_tokens \(self.definition.maxTokens)"))
        }
        if let refusal = await self.askPolicy(estimatedTokens: fitted.estimatedTokens, messages: messages, system: system) {
            record.error = refusal.message
            return .failure(refusal)
        }
        let hold: BudgetSpend.Hold?
        switch await self.reserve(estimatedTokens: fitted.estimatedTokens) {
        case .success(let reserved): hold = reserved
        case .failure(let refusal):
            record.error = refusal.message
            return .failure(refusal)
        }
        let result = await self.complete(&window, &record, first: fitted, messages: messages, system: system, tools: tools)
        if case .success = result {
            await self.budget.settle(hold, actualMicros: record.costMicros, metadata: self.principal.metadata)
        } else {
            await self.budget.release(hold, metadata: self.principal.metadata)
        }
        return result
    }

    /// The provider's answer to the fitted conversation, trimming it further when the provider
    /// says it is too long.
    func complete(
        _ window: inout ContextWindow, _ record: inout Sparkops_Agent_V1_LLMCall, first: ContextWindow.Fitted, messages: [ChatMessage],
        system: String, tools: [ChatTool]
    ) async -> Result<ChatResponse, Failure> {
        var attempts = 0
        var next: ContextWindow.Fitted? = first
        for trim in 0 ..< 3 {
            if trim > 0 { next = window.fit(messages) }
            guard let fitted = next else {
                record.error = "the task alone does not fit the model's window of \(window.contextWindow) tokens"
                return .failure(Failure(reason: "context_length", message: "the task and the system prompt do not fit \(self.definition.model)'s context window of \(window.contextWindow) tokens with max_tokens \(self.definition.maxTokens)"))
            }
            record.dropped = fitted.dropped
            let request = ChatRequest(model: self.definition.model, system: system, messages: fitted.messages, tools: tools, maxTokens: self.definition.maxTokens, temperature: self.definition.temperature)
            var sent = 0
            do {
                let outcome = try await self.llm.complete(request, provider: self.provider, apiKey: self.apiKey, deadline: self.deadline, sent: &sent)
                attempts += sent
                let response = outcome.response
                record.attempts = Int32(attempts)
                record.inputTokens = response.inputTokens
                record.outputTokens = response.outputTokens
                record.costMicros = self.pricing.cost(inputTokens: response.inputTokens, outputTokens: response.outputTokens)
                record.finishReason = response.finishReason
                window.calibrate(estimated: fitted.estimatedTokens, reported: Int(clamping: response.inputTokens))
                return .success(response)
            } catch {
                // Every request this call made, retries included (at least the one that failed).
                attempts += max(sent, 1)
                record.attempts = Int32(attempts)
                record.error = error.description
                switch error {
                case .contextLength where trim < 2:
                    window.shrink()
                    continue
                case .contextLength:
                    return .failure(Failure(reason: "context_length", message: error.description))
                case .deadline(let message):
                    return .failure(Failure(reason: Task.isCancelled ? "cancelled" : "timeout", message: message))
                case .failed, .malformed:
                    return .failure(Failure(reason: "llm_error", message: "\(self.provider.name) \(self.definition.model): \(error.description)"))
                }
            }
        }
        return .failure(Failure(reason: "context_length", message: record.error))
    }

    /// The call's worst case (the prompt as estimated plus max_tokens, at the model's price).
    func worstCase(estimatedTokens: Int) -> Int64 {
        self.pricing.cost(inputTokens: Int64(estimatedTokens), outputTokens: Int64(self.definition.maxTokens))
    }

    /// Holds the call's worst case on the budgets that cover it (the project's, the workflow's,
    /// the agent's, the API key's), for as long as the step may still take and a minute more.
    func reserve(estimatedTokens: Int) async -> Result<BudgetSpend.Hold?, Failure> {
        let remaining = ContinuousClock.now.duration(to: self.deadline).components.seconds
        do {
            return .success(try await self.budget.reserve(
                self.worstCase(estimatedTokens: estimatedTokens), projectID: self.projectID,
                attribution: .with {
                    $0.workflow = self.workflow
                    $0.agent = self.definition.name
                    $0.model = "\(self.provider.name)/\(self.definition.model)"
                    $0.runID = self.runID
                    $0.stepID = self.stepID
                },
                ttlSeconds: Int(max(1, remaining)) + 60, metadata: self.principal.metadata
            ))
        } catch let error as RPCError where error.code == .resourceExhausted {
            return .failure(Failure(reason: "budget_exceeded", message: "the model was not called: \(error.message)"))
        } catch {
            return .failure(Failure(reason: "budget_error", message: "the budget service could not be asked, so the model was not called: \(error)"))
        }
    }

    /// A model call as a hold records it: the model, and what it would be sent (the system
    /// prompt's size and the messages, each cut at 2,000 characters for the approver), with a
    /// digest over all of it as sent, which a grant names.
    func modelCall(messages: [ChatMessage], system: String, estimatedTokens: Int, decision: Sparkops_Policy_V1_Decision) -> Sparkops_Common_V1_HeldCall {
        let shown: [ExprValue] = messages.map { message in
            var fields: [String: ExprValue] = ["role": .string(message.role.rawValue), "text": .string(String(message.text.prefix(2000)))]
            if !message.toolCalls.isEmpty {
                fields["tool_calls"] = .list(message.toolCalls.map { .map(["name": .string($0.name), "arguments": .string(String($0.arguments.prefix(2000)))]) })
            }
            if !message.toolCallID.isEmpty { fields["tool_call_id"] = .string(message.toolCallID) }
            return .map(fields)
        }
        var sent = "model\u{0}\(self.provider.name)/\(self.definition.model)\u{0}\(system)"
        for message in messages {
            sent += "\u{0}\(message.role.rawValue)\u{0}\(message.text)\u{0}\(message.toolCallID)"
            for call in message.toolCalls { sent += "\u{0}\(call.id)\u{0}\(call.name)\u{0}\(call.arguments)" }
        }
        let arguments: ExprValue = .map([
            "estimated_input_tokens": .int(Int64(estimatedTokens)), "max_tokens": .int(Int64(self.definition.maxTokens)),
            "system_prompt_characters": .int(Int64(system.count)), "messages": .list(shown),
        ])
        return Sparkops_Common_V1_HeldCall(
            decision, kind: "model", target: "\(self.provider.name)/\(self.definition.model)", arguments: arguments, digest: "sha256:" + AgentService.hash(sent)
        )
    }

    /// Asks the policy service before a model call, with the call's worst case (the prompt as
    /// estimated plus max_tokens, at the model's price); the failure that ends the step when a
    /// policy denies or holds the call, or cannot be asked.
    mutating func askPolicy(estimatedTokens: Int, messages: [ChatMessage], system: String) async -> Failure? {
        let inputTokens = Int64(estimatedTokens)
        let maxTokens = Int64(self.definition.maxTokens)
        do {
            let decision = try await self.policy.check("llm.call", projectID: self.projectID, context: .with {
                $0.model = .with {
                    $0.provider = self.provider.name
                    $0.name = self.definition.model
                    $0.inputTokens = inputTokens
                    $0.maxTokens = maxTokens
                }
                $0.estimatedCostMicros = self.worstCase(estimatedTokens: estimatedTokens)
                $0.agent = self.definition.name
                $0.workflow.name = self.workflow
                $0.workflow.id = self.workflowID
                $0.workflow.version = self.workflowVersion
                $0.runID = self.runID
                $0.step.id = self.stepID
                if !self.stepID.isEmpty {
                    $0.step.kind = "agent"
                    $0.step.attempt = self.attempt
                }
            }, metadata: self.principal.metadata)
            guard decision.effect == "require_approval" else { return nil }
            let call = self.modelCall(messages: messages, system: system, estimatedTokens: estimatedTokens, decision: decision)
            guard !(self.approved && self.approvedDigests.contains(call.digest)) else {
                self.logger.info("a held model call goes ahead: a human approved it", metadata: ["run": "\(self.runID)", "step": "\(self.stepID)", "violation": "\(decision.violationID)"])
                return nil
            }
            self.heldCall = call
            return Failure(reason: "approval_required", message: "held by policy \(decision.message): a human must approve this model call (violation \(decision.violationID))")
        } catch let error as SparkError where error.code == .permissionDenied {
            return Failure(reason: "policy_denied", message: error.message)
        } catch {
            return Failure(reason: "policy_error", message: "the policy service could not be asked, so the model was not called: \(error)")
        }
    }

    /// Runs one tool call and says what came of it, for the model.
    mutating func invoke(_ call: ChatToolCall, iteration: Int, index: Int, offered: [ChatTool]) async -> ChatMessage {
        let started = ContinuousClock.now
        var record = Sparkops_Agent_V1_ToolCall.with {
            $0.iteration = Int32(iteration)
            $0.callID = call.id
            $0.tool = call.name
        }
        func failed(_ reason: String, _ message: String) -> ChatMessage {
            record.error = .with {
                $0.reason = reason
                $0.message = message
            }
            return ChatMessage(role: .tool, text: "error (\(reason)): \(message)", toolCallID: call.id, isError: true)
        }
        defer {
            record.durationMs = started.duration(to: .now).milliseconds
            self.toolCalls.append(record)
        }
        guard let tool = offered.first(where: { $0.name == call.name }) else {
            return failed("unknown_tool", "there is no tool \(call.name.debugDescription); the tools are \(offered.map(\.name).joined(separator: ", "))")
        }
        let arguments: ExprValue
        do {
            arguments = call.arguments.trimmingCharacters(in: .whitespaces).isEmpty ? .map([:]) : try ExprValue(jsonText: call.arguments)
            record.arguments = Sparkops_Common_V1_Json(arguments)
        } catch {
            return failed("invalid_arguments", "the arguments are not JSON: \(String(call.arguments.prefix(200)).debugDescription)")
        }
        let problems = ((try? JSONSchema(tool.parameters)) ?? (try! JSONSchema(.bool(true)))).problems(arguments)
        if !problems.isEmpty {
            return failed("invalid_arguments", "the arguments do not fit the tool's input schema: " + problems.map { "\($0.path.isEmpty ? "(arguments)" : $0.path): \($0.message)" }.joined(separator: "; "))
        }
        let output: ExprValue
        if AgentMemory.isMemoryTool(call.name), let memory = self.memory {
            do {
                output = try await memory.call(call.name, arguments)
            } catch {
                return failed("refused", "\(error)")
            }
        } else {
            let remaining = ContinuousClock.now.duration(to: self.deadline)
            guard remaining > .milliseconds(100) else { return failed("timeout", "the step's deadline passed") }
            do {
                let target = self.tools.first { $0.chat.name == call.name }
                let input: ExprValue = target?.function.map { .map(["tool": .string($0), "arguments": arguments]) } ?? arguments
                let response = try await self.projectTools.invoke(.with {
                    $0.projectID = self.projectID
                    $0.tool = target?.tool ?? call.name
                    $0.input = Sparkops_Common_V1_Json(input)
                    if !self.idempotencyKey.isEmpty { $0.idempotencyKey = "\(self.idempotencyKey)/\(iteration)/\(index)" }
                    $0.timeoutMs = max(1, remaining.milliseconds)
                    $0.maxOutputBytes = Self.maxToolOutputBytes
                    $0.agent = self.definition.name
                    $0.workflow = self.workflow
                    $0.runID = self.runID
                    $0.stepID = self.stepID
                    $0.approved = self.approved
                    $0.approvedDigests = self.approvedDigests
                    if !self.stepID.isEmpty { $0.stepKind = "agent" }
                    $0.attempt = self.attempt
                    $0.workflowID = self.workflowID
                    $0.workflowVersion = self.workflowVersion
                }, principal: self.principal, timeout: remaining)
                record.costMicros = response.costMicros
                record.replayed = response.replayed
                record.invocationID = response.invocationID
                if self.pausesOnHold, response.hasError, response.error.reason == "approval_required" {
                    // A policy holds the call: the step waits for a human rather than the model
                    // working around it.
                    self.held = Failure(reason: "approval_required", message: "\(response.error.message) (tool \(call.name))")
                    self.heldCall = response.approval.call
                }
                if response.hasError {
                    if response.hasOutput { record.output = response.output }
                    return failed(response.error.reason, response.error.message)
                }
                record.output = response.output
                output = (try? response.output.value(field: "output")) ?? .null
            } catch let error as RPCError {
                let reason = switch error.code {
                case .invalidArgument: "invalid_arguments"
                case .deadlineExceeded: "timeout"
                case .permissionDenied where error.message.hasPrefix("denied by policy"): "policy_denied"
                case .resourceExhausted: "budget_exceeded"
                default: "refused"
                }
                return failed(reason, error.message)
            } catch {
                return failed("refused", "\(error)")
            }
        }
        if record.output.isEmpty { record.output = Sparkops_Common_V1_Json(output) }
        var text = output.jsonText
        if text.count > Self.maxToolResultCharacters {
            text = String(text.prefix(Self.maxToolResultCharacters)) + " … (cut: the output is \(text.count) characters)"
        }
        return ChatMessage(role: .tool, text: text, toolCallID: call.id)
    }

    /// The answer as JSON fitting the schema, from the text or a ```json fence in it.
    static func parseAnswer(_ text: String, schema: JSONSchema) -> Result<ExprValue, Failure> {
        var body = text.trimmingCharacters(in: .whitespacesAndNewlines)
        if let fence = body.range(of: "```") {
            var inner = body[fence.upperBound...]
            if inner.hasPrefix("json") { inner = inner.dropFirst(4) }
            if let end = inner.range(of: "```") { body = String(inner[..<end.lowerBound]).trimmingCharacters(in: .whitespacesAndNewlines) }
        }
        guard let value = try? ExprValue(jsonText: body) else {
            return .failure(Failure(reason: "invalid_output", message: "it is not JSON"))
        }
        let problems = schema.problems(value)
        guard problems.isEmpty else {
            return .failure(Failure(reason: "invalid_output", message: problems.map { "\($0.path.isEmpty ? "(answer)" : $0.path): \($0.message)" }.joined(separator: "; ")))
        }
        return .success(value)
    }
}

/// A tool as the model sees it: one of the project's tools, or one tool of an mcp tool's server
/// (offered as `<tool>__<function>` and invoked as the mcp tool with `{tool, arguments}`).
struct OfferedTool: Sendable {
    var chat: ChatTool
    var tool: String
    var function: String?
}

/// The context manager: fits a conversation to the model's window. It keeps the task (the first
/// message) and the latest exchanges whole (an assistant's tool calls with their results), and
/// leaves out the oldest exchanges first, saying in the task and in the record what it dropped.
struct ContextWindow {
    let contextWindow: Int
    let maxTokens: Int
    /// The system prompt and the tools' schemas.
    let fixedTokens: Int
    /// Reported tokens per estimated token, from the provider's usage of earlier calls.
    var scale: Double = 1.0
    /// Less than 1 after the provider refused a prompt as too long.
    var share: Double = 1.0

    struct Fitted {
        var messages: [ChatMessage]
        var dropped: [String]
        var estimatedTokens: Int
    }

    func cost(_ tokens: Int) -> Int { Int((Double(tokens) * self.scale).rounded(.up)) }

    /// Nil when even the task alone does not fit.
    func fit(_ messages: [ChatMessage]) -> Fitted? {
        let budget = Int(Double(self.contextWindow - self.maxTokens) * self.share) - self.cost(self.fixedTokens)
        guard let task = messages.first, budget > 0 else { return nil }
        // Exchanges: an assistant message and what follows it up to the next one.
        var exchanges: [[ChatMessage]] = []
        for message in messages.dropFirst() {
            if message.role == .assistant || exchanges.isEmpty { exchanges.append([message]) } else { exchanges[exchanges.count - 1].append(message) }
        }
        let sizes = exchanges.map { exchange in exchange.reduce(0) { $0 + $1.estimatedTokens } }
        var total = task.estimatedTokens + sizes.reduce(0, +)
        var start = 0
        var dropped: [String] = []
        while self.cost(total) > budget, start < exchanges.count - 1 {
            dropped += exchanges[start].map(\.role.rawValue)
            total -= sizes[start]
            start += 1
        }
        guard self.cost(total) <= budget else { return nil }
        var first = task
        if !dropped.isEmpty {
            first.text += "\n\n(\(dropped.count) earlier messages of this task were left out to fit the context window.)"
        }
        return Fitted(messages: [first] + exchanges[start...].joined(), dropped: dropped, estimatedTokens: total + self.fixedTokens)
    }

    mutating func calibrate(estimated: Int, reported: Int) {
        guard estimated > 0, reported > 0 else { return }
        self.scale = min(4.0, max(1.0, Double(reported) / Double(estimated)))
    }

    mutating func shrink() {
        self.share *= 0.6
    }
}

extension AgentLoop {
    /// Where a held step stood: its system prompt and messages, the iteration, and the calls of
    /// the turn from the held one on (none when the model call itself was held). Kept with the
    /// held execution, as JSON, so that the step resumes there once a human approved the call.
    struct ResumePoint: Sendable {
        var system: String
        var messages: [ChatMessage]
        var iteration: Int
        var pending: [ChatToolCall]
        /// The position in its turn (from 1) of the first pending call.
        var nextIndex: Int

        var value: ExprValue {
            .map([
                "system": .string(self.system), "iteration": .int(Int64(self.iteration)), "next_index": .int(Int64(self.nextIndex)),
                "messages": .list(self.messages.map { message in
                    .map([
                        "role": .string(message.role.rawValue), "text": .string(message.text), "tool_call_id": .string(message.toolCallID),
                        "is_error": .bool(message.isError), "tool_calls": .list(message.toolCalls.map(Self.value)),
                    ])
                }),
                "pending": .list(self.pending.map(Self.value)),
            ])
        }

        static func value(_ call: ChatToolCall) -> ExprValue {
            .map(["id": .string(call.id), "name": .string(call.name), "arguments": .string(call.arguments)])
        }

        init(system: String, messages: [ChatMessage], iteration: Int, pending: [ChatToolCall], nextIndex: Int) {
            self.system = system
            self.messages = messages
            self.iteration = iteration
            self.pending = pending
            self.nextIndex = nextIndex
        }

        /// A resume point as stored; nil for anything else.
        init?(_ value: ExprValue) {
            func call(_ value: ExprValue) -> ChatToolCall? {
                guard case .map(let fields) = value, case .string(let id)? = fields["id"], case .string(let name)? = fields["name"],
                    case .string(let arguments)? = fields["arguments"] else { return nil }
                return ChatToolCall(id: id, name: name, arguments: arguments)
            }
            guard case .map(let fields) = value, case .string(let system)? = fields["system"], case .int(let iteration)? = fields["iteration"],
                case .int(let nextIndex)? = fields["next_index"], case .list(let stored)? = fields["messages"], case .list(let pending)? = fields["pending"]
            else { return nil }
            var messages: [ChatMessage] = []
            for item in stored {
                guard case .map(let message) = item, case .string(let roleName)? = message["role"], let role = ChatMessage.Role(rawValue: roleName),
                    case .string(let text)? = message["text"], case .list(let calls)? = message["tool_calls"] else { return nil }
                var restored = ChatMessage(role: role, text: text, toolCalls: calls.compactMap(call))
                if case .string(let id)? = message["tool_call_id"] { restored.toolCallID = id }
                if case .bool(let isError)? = message["is_error"] { restored.isError = isError }
                messages.append(restored)
            }
            self.init(system: system, messages: messages, iteration: Int(iteration), pending: pending.compactMap(call), nextIndex: Int(nextIndex))
        }
    }
}

