import Foundation
public import GRPCCore
import SQLKit
import SparkKit
public import SparkProto
import SwiftProtobuf
import SparkWorkflow

extension RunService {
    public func listApprovals(
        request: ServerRequest<Sparkops_Run_V1_ListApprovalsRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Run_V1_ListApprovalsResponse> {
        let message = request.message
        try await self.access.require(request.metadata, projectID: message.projectID, permission: "run.read")
        let statuses = ["pending", "approved", "rejected", "expired", "cancelled"]
        let status = message.status.isEmpty ? "pending" : message.status
        guard status == "all" || statuses.contains(status) else {
            throw SparkError.invalid("status", "must be one of \((statuses + ["all"]).joined(separator: ", "))")
        }
        guard message.runID.isEmpty || SparkID.isValid(message.runID, prefix: "run") else { throw SparkError.invalid("run_id", "is not a run_… id") }
        let (limit, after) = try Paging.parse(size: message.pageSize, token: message.pageToken)
        let rows = try await self.store.store.sql {
            try await self.store.approvals(projectID: message.projectID, status: status == "all" ? "" : status, runID: message.runID, after: after, limit: limit, on: $0)
        }
        return ServerResponse(message: .with {
            $0.approvals = rows.map(Self.message)
            $0.nextPageToken = Paging.token(lastID: rows.last?.id, count: rows.count, limit: limit)
        })
    }

    /// A human's decision. The caller needs `approval.decide` (approver, editor and above) and,
    /// when the step names approvers, one of those roles or a higher one. Who decided, when and
    /// why goes in the approval, the run's events and the project's audit log.
    /// Whether `principal` is the person who started `run`: the same user, or an API key that
    /// user created (and the other way round).
    static func isStarter(_ principal: Sparkops_Common_V1_Principal, of run: RunRow) -> Bool {
        guard let starter = try? Sparkops_Common_V1_Principal(jsonString: run.principal) else { return principal.id == run.createdBy }
        let starterUser = starter.userID.isEmpty ? starter.id : starter.userID
        let deciderUser = principal.userID.isEmpty ? principal.id : principal.userID
        return principal.id == starter.id || (!starterUser.isEmpty && starterUser == deciderUser)
    }

    public func decideApproval(
        request: ServerRequest<Sparkops_Run_V1_DecideApprovalRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Run_V1_Approval> {
        let message = request.message
        let principal = try await self.access.require(request.metadata, projectID: message.projectID, permission: "approval.decide")
        guard message.decision == "approve" || message.decision == "reject" else {
            throw SparkError.invalid("decision", "must be approve or reject, not \(message.decision.debugDescription)")
        }
        guard message.comment.count <= 2000 else { throw SparkError.invalid("comment", "must be at most 2000 characters") }
        guard SparkID.isValid(message.approvalID, prefix: "apr") else {
            throw SparkError.invalid("approval_id", message.approvalID.isEmpty ? "is required" : "is not an apr_… id")
        }
        guard let found = try await self.store.store.sql({ try await self.store.approval(message.approvalID, projectID: message.projectID, on: $0) }) else {
            throw SparkError.notFound("approval")
        }
        if !found.approvers.isEmpty {
            let role = try await self.access.role(of: principal, projectID: message.projectID)
            let allowed = found.approvers.contains { name in
                if name == principal.id || name == principal.userID { return true }
                guard let needed = Permission.role(named: name) else { return false }
                return role == needed || (role.rawValue > needed.rawValue && Permission.role(role, allows: "approval.decide"))
            }
            guard allowed else {
                throw SparkError(.permissionDenied, "this approval is for \(found.approvers.joined(separator: ", ")); your role is \(role.name)")
            }
        }
        let approve = message.decision == "approve"
        let decided = try await self.engine.transition(runID: found.runID) { transition, db -> ApprovalRow in
            // Read again under the run's lock: two deciders at once, the second finds it decided.
            guard var approval = try await self.store.approval(message.approvalID, projectID: message.projectID, on: db) else {
                throw SparkError.notFound("approval")
            }
            guard approval.status == "pending" else {
                throw SparkError(.failedPrecondition, "the approval is \(approval.status) already\(approval.decidedBy.isEmpty ? "" : " (by \(approval.decidedBy))")")
            }
            // Separation of duties: a step that excludes the run's starter needs someone else,
            // whether the starter decides as a user or through an API key of theirs.
            if case .approval(let spec)? = transition.machine.definition.steps.first(where: { $0.id == approval.stepID })?.kind, spec.excludeStarter,
                Self.isStarter(principal, of: transition.run)
            {
                throw SparkError(.permissionDenied, "the step \(approval.stepID) needs an approver other than the person who started the run (exclude_starter)")
            }
            // The same for a hold whose rule says so.
            if Self.heldCall(approval.heldCall)?.excludeStarter == true, Self.isStarter(principal, of: transition.run) {
                let rule = Self.heldCall(approval.heldCall)?.rule ?? ""
                throw SparkError(.permissionDenied, "the hold by \(rule) needs an approver other than the person who started the run (exclude_starter)")
            }
            try Self.mapped { () throws(RunMachineError) in
                switch (approval.stepID.isEmpty, approve) {
                case (true, true): try transition.apply(.approveRun(by: principal.id))
                case (true, false): try transition.apply(.rejectRun(by: principal.id, reason: message.comment))
                case (false, true): try transition.apply(.approveStep(step: approval.stepID, by: principal.id, comment: message.comment))
                case (false, false): try transition.apply(.rejectStep(step: approval.stepID, by: principal.id, reason: message.comment))
                }
            }
            approval.status = approve ? "approved" : "rejected"
            approval.decidedBy = principal.id
            approval.decidedAt = transition.now
            approval.comment = message.comment
            try await self.store.closeApprovals(
                runID: approval.runID, stepID: approval.stepID, status: approval.status, by: principal.id, comment: message.comment, now: transition.now, on: db
            )
            return approval
        }
        await self.access.record(
            principal, projectID: message.projectID, action: approve ? "approval.approve" : "approval.reject", target: found.id,
            detail: "run \(found.runID)\(found.stepID.isEmpty ? "" : " step \(found.stepID)")\(message.comment.isEmpty ? "" : ": \(message.comment)")",
            metadata: request.metadata, logger: self.logger
        )
        return ServerResponse(message: Self.message(decided))
    }
}
