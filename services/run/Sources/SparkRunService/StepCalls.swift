import Foundation
import GRPCCore
import Logging
import SparkExpr
import SparkKit
import SparkProto
import SparkWire
import SparkWorkflow
import SwiftProtobuf

/// How a worker runs an attempt: a tool step is `ToolService/InvokeTool`, an agent step
/// `AgentService/ExecuteAgentStep`, each as the principal that started the run, under the
/// attempt's idempotency key `run_…/<step>/<attempt>`. Cancelling the task cancels the call over
/// SparkWire. Policy `step.start` is asked first, unless a human approved a hold of this attempt.
struct StepCalls: Sendable {
    let tools: Sparkops_Tool_V1_ToolService.SparkWireClient
    let agents: Sparkops_Agent_V1_AgentService.SparkWireClient
    let policy: PolicyCheck
    let defaultTimeout: Duration
    let logger: Logger

    enum Result: Sendable {
        case succeeded(ExprValue)
        case failed(RunFailure, retryable: Bool)
        /// A policy requires a human's approval first; nothing was done. The call it held, when
        /// a call was held (not the step's start).
        case held(String, call: Sparkops_Common_V1_HeldCall? = nil)
        /// A send may have had its effect and must not be repeated: the step waits for a human.
        case lost(String)
    }

    struct Outcome: Sendable {
        var result: Result
        var costMicros: Int64 = 0
        var callID = ""
        /// No answer says what became of the call: it may have run, or may still run (see
        /// ``mayHaveRun(_:)``). The worker then asks whether the step may be sent again.
        var mayHaveRun = false
    }

    /// Whether an attempt of `step` that may have started can be sent again: agents replay by
    /// their key; a tool, unless it is `non_idempotent` (or cannot be asked).
    func mayRepeat(_ step: WorkflowStep, projectID: String, principal: Sparkops_Common_V1_Principal) async -> Bool {
        guard case .tool(let name) = step.kind else { return true }
        do {
            // A tool service that is restarting is waited for (a minute at most) rather than
            // sending the step to a human for nothing.
            let tool = try await Self.retrying(until: .now + .seconds(60)) {
                try await self.tools.getTool(.with {
                    $0.projectID = projectID
                    $0.tool = name
                }, metadata: principal.metadata)
            }
            return tool.sideEffects != "non_idempotent"
        } catch {
            self.logger.warning("could not read a tool's side effects; the step waits for a human", metadata: ["tool": "\(name)", "error": "\(error)"])
            return false
        }
    }

    func call(_ step: WorkflowStep, task: StepTask, run: RunRow, grants: [String], principal: Sparkops_Common_V1_Principal) async -> Outcome {
        let timeout = step.timeout.map { Duration.milliseconds($0.milliseconds) } ?? self.defaultTimeout
        var options = CallOptions.defaults
        options.timeout = timeout + .seconds(5)
        let arguments = (try? ExprValue(jsonText: task.arguments)) ?? .map([:])
        let giveUp = ContinuousClock.now + timeout
        do {
            if !task.approved {
                // A policy service that is unavailable is asked again, as the call below is.
                let decision = try await Self.retrying(until: giveUp) { try await self.policy.check("step.start", projectID: run.projectID, context: .with {
                    $0.workflow = .with {
                        $0.id = run.workflowID
                        $0.name = run.workflowName
                        $0.version = Int32(clamping: run.workflowVersion)
                    }
                    $0.step = .with {
                        $0.id = step.id
                        $0.kind = Self.kind(step)
                        $0.attempt = Int32(clamping: task.attempt)
                    }
                    $0.runID = run.id
                }, metadata: principal.metadata) }
                if decision.effect == "require_approval" {
                    return Outcome(result: .held("held by policy \(decision.message)", call: Sparkops_Common_V1_HeldCall(decision, kind: "step", target: step.id)))
                }
            }
            switch step.kind {
            case .tool(let name):
                let request = Sparkops_Tool_V1_InvokeToolRequest.with {
                    $0.projectID = run.projectID
                    $0.tool = name
                    $0.input = Sparkops_Common_V1_Json(arguments)
                    $0.idempotencyKey = task.key
                    $0.timeoutMs = timeout.milliseconds
                    $0.runID = run.id
                    $0.stepID = step.id
                    $0.workflow = run.workflowName
                    $0.approved = task.approved
                    $0.approvedDigests = grants
                    $0.stepKind = "tool"
                    $0.attempt = Int32(clamping: task.attempt)
                    $0.workflowID = run.workflowID
                    $0.workflowVersion = Int32(clamping: run.workflowVersion)
                }
                return try await Self.resending(until: ContinuousClock.now + timeout) {
                    Self.outcome(try await self.tools.invokeTool(request, metadata: principal.metadata, options: options))
                }
            case .agent(let name):
                guard case .map(let fields) = arguments, case .string(let prompt)? = fields["prompt"], !prompt.isEmpty else {
                    return Outcome(result: .failed(RunFailure(reason: "arguments", message: "with.prompt: an agent step needs a prompt (a string)"), retryable: false))
                }
                let request = Sparkops_Agent_V1_ExecuteAgentStepRequest.with {
                    $0.projectID = run.projectID
                    $0.agent = name
                    $0.prompt = prompt
                    if let input = fields["input"] { $0.input = Sparkops_Common_V1_Json(input) }
                    $0.idempotencyKey = task.key
                    $0.timeoutMs = timeout.milliseconds
                    $0.runID = run.id
                    $0.stepID = step.id
                    $0.workflow = run.workflowName
                    $0.approved = task.approved
                    $0.approvedDigests = grants
                    $0.attempt = Int32(clamping: task.attempt)
                    $0.workflowID = run.workflowID
                    $0.workflowVersion = Int32(clamping: run.workflowVersion)
                }
                // A call held again after a grant is another call (a grant covers one call): it
                // waits for its own decision.
                return try await Self.resending(until: ContinuousClock.now + timeout) {
                    Self.outcome(try await self.agents.executeAgentStep(request, metadata: principal.metadata, options: options))
                }
            case .approval:
                return Outcome(result: .failed(RunFailure(reason: "internal", message: "an approval step is not run by a worker"), retryable: false))
            }
        } catch let error as RPCError {
            // With its cause: an UNKNOWN made on this side (a transport or interceptor error) has
            // no message of its own.
            self.logger.warning("a step's call failed", metadata: ["run": "\(run.id)", "step": "\(step.id)", "error": "\(String(reflecting: error).prefix(1000))"])
            return Outcome(result: Self.failure(error), mayHaveRun: Self.mayHaveRun(error))
        } catch {
            // A cancelled call (its step timed out) may have reached the service before it stopped.
            return Outcome(result: .failed(RunFailure(reason: "internal", message: "\(error)"), retryable: true), mayHaveRun: error is CancellationError)
        }
    }

    static func kind(_ step: WorkflowStep) -> String {
        switch step.kind {
        case .tool: return "tool"
        case .agent: return "agent"
        case .approval: return "approval"
        }
    }

    /// Tool failures that another attempt may get past.
    static let retryableToolReasons: Set<String> = ["timeout", "http_status", "http_error", "exit_status", "memory_limit", "cpu_limit", "unavailable"]
    /// Agent failures that another attempt may get past.
    static let retryableAgentReasons: Set<String> = ["timeout", "llm_error", "max_iterations", "invalid_output", "context_length"]

    static func outcome(_ response: Sparkops_Tool_V1_InvokeToolResponse) -> Outcome {
        var outcome = Outcome(result: .succeeded(.null), costMicros: response.replayed ? 0 : response.costMicros, callID: response.invocationID)
        if response.hasApproval {
            outcome.result = .held("held by policy \(response.approval.rule): \(response.approval.message)", call: response.approval.hasCall ? response.approval.call : nil)
        } else if response.hasError {
            outcome.result = .failed(
                RunFailure(reason: response.error.reason, message: response.error.message),
                retryable: Self.retryableToolReasons.contains(response.error.reason)
            )
        } else {
            outcome.result = .succeeded((try? response.output.value(field: "output")) ?? .null)
        }
        return outcome
    }

    static func outcome(_ execution: Sparkops_Agent_V1_AgentExecution) -> Outcome {
        var outcome = Outcome(result: .succeeded(.null), costMicros: execution.replayed ? 0 : execution.costMicros, callID: execution.id)
        if execution.status == "succeeded" {
            outcome.result = .succeeded((try? execution.output.value(field: "output")) ?? .null)
        } else if execution.error.reason == "approval_required" {
            outcome.result = .held(execution.error.message, call: execution.hasHeldCall ? execution.heldCall : nil)
        } else {
            outcome.result = .failed(
                RunFailure(reason: execution.error.reason, message: execution.error.message),
                retryable: Self.retryableAgentReasons.contains(execution.error.reason)
            )
        }
        return outcome
    }

    /// Sends the attempt's call until it answers: again, under the same idempotency key, while
    /// the service is unavailable (down, restarting, or without its database) or the key is busy
    /// with a first send still running, backing off from 250 ms to 4 s, until `giveUp` (the
    /// step's timeout). Infrastructure that comes back does not fail a step; the key makes the
    /// second send safe: the service answers with the first one's result, runs it once, or, for a
    /// `non_idempotent` tool whose first send may have run, refuses, and the step waits for a human.
    static func resending(until giveUp: ContinuousClock.Instant, _ call: () async throws -> Outcome) async throws -> Outcome {
        var resent = false
        do {
            return try await Self.retrying(until: giveUp, alsoWhen: .aborted) {
                do {
                    return try await call()
                } catch let error as RPCError where [.unavailable, .unknown, .internalError].contains(error.code) {
                    resent = true
                    throw error
                }
            }
        } catch let error as RPCError where error.code == .failedPrecondition && resent {
            return Outcome(result: .lost(error.message))
        }
    }

    /// Asks `call` again while the service is unavailable (and on `alsoWhen`), backing off from
    /// 250 ms to 4 s, until `giveUp`; then the last error is thrown. UNKNOWN and INTERNAL are asked
    /// again for `unsureFor` at most: a call that broke in transit or met a service whose
    /// database was restarting may answer them once, but a service that always does must not
    /// hold a step until its timeout.
    static func retrying<T>(
        until giveUp: ContinuousClock.Instant, alsoWhen other: RPCError.Code? = nil, unsureFor: Duration = .seconds(10), _ call: () async throws -> T
    ) async throws -> T {
        var delay = Duration.milliseconds(250)
        let unsure = ContinuousClock.now + unsureFor
        while true {
            do {
                return try await call()
            } catch let error as RPCError where !Task.isCancelled && ContinuousClock.now + delay < giveUp
                && (error.code == .unavailable || error.code == other || ([.unknown, .internalError].contains(error.code) && ContinuousClock.now + delay < unsure))
            {
                try await Task.sleep(for: delay)
                delay = min(delay * 2, .seconds(4))
            }
        }
    }

    /// Errors after which a sent call may have run, or may still be running: no answer came
    /// (the connection broke, the deadline passed, the call was stopped at the step's timeout,
    /// the service failed inside) or the service said the key is busy with a send still running.
    /// A refusal is an answer.
    static func mayHaveRun(_ error: RPCError) -> Bool {
        [.unavailable, .deadlineExceeded, .cancelled, .unknown, .internalError, .aborted].contains(error.code)
    }

    /// A call that did not answer: unavailable services and deadlines may pass; a refusal does not.
    static func failure(_ error: RPCError) -> Result {
        switch error.code {
        case .unavailable, .deadlineExceeded, .aborted, .internalError, .unknown, .cancelled:
            return .failed(RunFailure(reason: error.code == .deadlineExceeded ? "timeout" : "unavailable", message: error.message), retryable: true)
        case .permissionDenied:
            return .failed(RunFailure(reason: "policy_denied", message: error.message), retryable: false)
        case .resourceExhausted:
            return .failed(RunFailure(reason: "budget_exceeded", message: error.message), retryable: false)
        default:
            return .failed(RunFailure(reason: "refused", message: "\(error.code): \(error.message)"), retryable: false)
        }
    }
}

extension Duration {
    var milliseconds: Int64 {
        self.components.seconds * 1000 + self.components.attoseconds / 1_000_000_000_000_000
    }
}
