import Foundation
import SparkExpr
import SparkKit
import SparkProto
import SparkWorkflow
import SwiftProtobuf

/// Stored rows as the API shows them.
extension RunService {
    func message(_ row: RunRow, machine: RunMachine, attempts: [AttemptRow]) -> Sparkops_Run_V1_Run {
        var run = Sparkops_Run_V1_Run()
        run.id = row.id
        run.projectID = row.projectID
        run.workflowID = row.workflowID
        run.workflowName = row.workflowName
        run.workflowVersion = Int32(clamping: row.workflowVersion)
        run.contentHash = row.contentHash
        run.status = machine.status.rawValue
        run.inputs = Sparkops_Common_V1_Json(.map(machine.inputs))
        if machine.status == .succeeded { run.outputs = Sparkops_Common_V1_Json(.map(machine.outputs)) }
        if let failure = machine.failure { run.error = Self.error(failure.reason, failure.message) }
        run.costMicros = row.costMicros
        run.idempotencyKey = row.idempotencyKey
        run.createdBy = row.createdBy
        run.createTime = .init(microseconds: row.createdAt)
        if row.startedAt > 0 { run.startTime = .init(microseconds: row.startedAt) }
        if row.endedAt > 0 { run.endTime = .init(microseconds: row.endedAt) }
        run.updateTime = .init(microseconds: row.updatedAt)
        run.rerunOf = row.rerunOf
        run.rerunFromStep = row.rerunFromStep
        run.estimatedCostMicros = row.estimatedCostMicros
        run.budgetReservationID = row.envelopeID
        let byStep = Dictionary(grouping: attempts, by: \.stepID)
        for (definition, state) in zip(machine.definition.steps, machine.steps) {
            var step = Sparkops_Run_V1_Step()
            step.id = state.id
            switch definition.kind {
            case .tool(let name):
                step.kind = "tool"
                step.target = name
            case .agent(let name):
                step.kind = "agent"
                step.target = name
            case .approval:
                step.kind = "approval"
            }
            step.status = state.status.rawValue
            step.attempt = Int32(clamping: state.attempt)
            if state.output != .null { step.output = Sparkops_Common_V1_Json(state.output) }
            if let error = state.error, state.status != .succeeded { step.error = Self.error(error.reason, error.message) }
            if let at = state.retryAt { step.retryTime = .init(microseconds: at * 1000) }
            for attempt in (byStep[state.id] ?? []).sorted(by: { $0.attempt < $1.attempt }) {
                step.attempts.append(.with {
                    $0.attempt = Int32(clamping: attempt.attempt)
                    $0.status = attempt.status
                    $0.idempotencyKey = attempt.idempotencyKey
                    if attempt.startedAt > 0 { $0.startTime = .init(microseconds: attempt.startedAt) }
                    if attempt.endedAt > 0 { $0.endTime = .init(microseconds: attempt.endedAt) }
                    if !attempt.errorReason.isEmpty { $0.error = Self.error(attempt.errorReason, attempt.errorMessage) }
                    $0.costMicros = attempt.costMicros
                    $0.callID = attempt.callID
                    $0.worker = attempt.worker
                })
                step.costMicros += attempt.costMicros
            }
            run.steps.append(step)
        }
        return run
    }

    static func error(_ reason: String, _ message: String) -> Sparkops_Run_V1_RunError {
        .with {
            $0.reason = reason
            $0.message = message
        }
    }

    static func message(_ event: EventRow) -> Sparkops_Run_V1_RunEvent {
        .with {
            $0.sequence = event.sequence
            $0.projectID = event.projectID
            $0.runID = event.runID
            $0.kind = event.kind
            $0.stepID = event.stepID
            $0.attempt = Int32(clamping: event.attempt)
            $0.message = event.message
            $0.time = .init(microseconds: event.createdAt)
            $0.workflowName = event.workflowName
        }
    }

    static func message(_ approval: ApprovalRow) -> Sparkops_Run_V1_Approval {
        .with {
            $0.id = approval.id
            $0.projectID = approval.projectID
            $0.runID = approval.runID
            $0.stepID = approval.stepID
            $0.status = approval.status
            $0.message = approval.message
            $0.approvers = approval.approvers
            $0.createTime = .init(microseconds: approval.createdAt)
            if let expires = approval.expiresAt { $0.expireTime = .init(microseconds: expires) }
            $0.decidedBy = approval.decidedBy
            if approval.decidedAt > 0 { $0.decideTime = .init(microseconds: approval.decidedAt) }
            $0.comment = approval.comment
            $0.workflowName = approval.workflowName
            $0.requestedBy = approval.requestedBy
            if let call = Self.heldCall(approval.heldCall) { $0.heldCall = call }
        }
    }

    /// A held call as an approval row keeps it (RunWorkers.value), back as its message.
    static func heldCall(_ text: String) -> Sparkops_Common_V1_HeldCall? {
        guard !text.isEmpty, case .map(let fields)? = try? ExprValue(jsonText: text) else { return nil }
        func string(_ key: String) -> String { if case .string(let value)? = fields[key] { value } else { "" } }
        return .with {
            $0.kind = string("kind")
            $0.target = string("target")
            if let arguments = fields["arguments"] { $0.arguments = Sparkops_Common_V1_Json(arguments) }
            $0.digest = string("digest")
            $0.rule = string("rule")
            $0.message = string("message")
            $0.violationID = string("violation_id")
            $0.excludeStarter = fields["exclude_starter"] == .bool(true)
        }
    }
}
