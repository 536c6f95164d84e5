public import GRPCCore
public import Logging
public import SparkProto
public import SparkWire
import SwiftProtobuf

/// How a service other than the project service checks a caller's project role (the gateway
/// checked first; the owning service checks again, DESIGN §10) and records audit events, through
/// `ProjectService/Authorize` and `RecordAuditEvent`.
///
/// ```swift
/// let principal = try await access.require(request.metadata, projectID: message.projectID, permission: "workflow.write")
/// try await access.audit(principal, projectID: message.projectID, action: "workflow.create", target: id, metadata: request.metadata)
/// ```
public struct ProjectAccess: Sendable {
    private let project: Sparkops_Project_V1_ProjectService.Client<SparkWireClientTransport>

    public init(client: GRPCClient<SparkWireClientTransport>) {
        self.project = .init(wrapping: client)
    }

    /// The call's principal, if it holds `permission` in the project: NOT_FOUND when it cannot
    /// see the project at all (its existence does not leak), PERMISSION_DENIED when it can but the
    /// role is too low.
    @discardableResult
    public func require(_ metadata: Metadata, projectID: String, permission: String) async throws -> Sparkops_Common_V1_Principal {
        let principal = try Sparkops_Common_V1_Principal.required(metadata)
        guard SparkID.isValid(projectID, prefix: "prj") else {
            throw SparkError.invalid("project_id", projectID.isEmpty ? "is required" : "is not a prj_… id")
        }
        let decision = try await self.project.authorize(.with {
            $0.principal = principal
            $0.projectID = projectID
            $0.permission = permission
        })
        guard decision.role != .unspecified else { throw SparkError.notFound("project") }
        guard decision.allowed else {
            throw SparkError(.permissionDenied, "\(permission) needs a higher role than \(decision.role.name)")
        }
        return principal
    }

    /// The principal's role in the project; `.unspecified` when it has none there.
    public func role(of principal: Sparkops_Common_V1_Principal, projectID: String) async throws -> Sparkops_Common_V1_Role {
        try await self.project.authorize(.with {
            $0.principal = principal
            $0.projectID = projectID
            $0.permission = "project.read"
        }).role
    }

    /// Appends a success to the project's audit log after a mutation that already stands: when
    /// the log cannot be reached, the failure is logged and the mutation is not undone.
    public func record(_ principal: Sparkops_Common_V1_Principal, projectID: String, action: String, target: String, detail: String = "", metadata: Metadata, logger: Logger) async {
        do {
            try await self.audit(principal, projectID: projectID, action: action, target: target, detail: detail, metadata: metadata)
        } catch {
            logger.error("could not record an audit event", metadata: ["action": "\(action)", "target": "\(target)", "error": "\(error)"])
        }
    }

    /// Appends a success to the project's audit log.
    public func audit(_ principal: Sparkops_Common_V1_Principal, projectID: String, action: String, target: String, detail: String = "", metadata: Metadata) async throws {
        _ = try await self.project.recordAuditEvent(.with {
            $0.event = .with {
                $0.projectID = projectID
                $0.actor = principal.id
                $0.action = action
                $0.target = target
                $0.outcome = "success"
                $0.ip = metadata[stringValues: "sparkops-client-ip"].first(where: { _ in true }) ?? ""
                $0.detail = detail
            }
        })
    }
}
