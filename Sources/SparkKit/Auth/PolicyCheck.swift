public import GRPCCore
public import SparkProto
public import SparkWire
import SwiftProtobuf

/// How a service that enforces policy asks the policy service before it acts
/// (`PolicyService/Evaluate`, docs/policies.md): a deny ends the call with PERMISSION_DENIED
/// naming the rule; allow and require_approval come back as the decision, for the caller to go
/// on or to hold.
///
/// ```swift
/// let decision = try await policy.check(.toolInvoke, projectID: project, context: context, metadata: request.metadata)
/// if decision.effect == "require_approval" { … hold the call … }
/// ```
public struct PolicyCheck: Sendable {
    private let policy: Sparkops_Policy_V1_PolicyService.SparkWireClient

    public init(client: SparkWireChannel) {
        self.policy = .init(wrapping: client)
    }

    /// The decision at `point`; PERMISSION_DENIED when it is a deny. The principal of the call
    /// being served (`metadata`) is passed on, so that rules see who the call acts for. The
    /// policy service being unreachable fails the call: nothing runs unchecked.
    public func check(
        _ point: String, projectID: String, context: Sparkops_Policy_V1_PolicyContext, metadata: Metadata
    ) async throws -> Sparkops_Policy_V1_Decision {
        let principal = (try? Sparkops_Common_V1_Principal(metadata: metadata)).flatMap { $0 }
        let decision = try await self.policy.evaluate(
            .with {
                $0.projectID = projectID
                $0.point = point
                $0.context = context
            },
            metadata: principal?.metadata ?? [:]
        ).decision
        if decision.effect == "deny" {
            throw SparkError(.permissionDenied, "denied by policy \(decision.message) (violation \(decision.violationID))")
        }
        return decision
    }
}
