public import GRPCCore
public import Logging
public import SparkProto
public import SparkWire
import SwiftProtobuf
import Synchronization

/// How a service other than the project service checks a caller's project role (the gateway
/// checked first; the owning service checks again, DESIGN §10) and records audit events, through
/// `ProjectService/Authorize` and `RecordAuditEvent`.
///
/// ```swift
/// let principal = try await access.require(request.metadata, projectID: message.projectID, permission: "workflow.write")
/// try await access.audit(principal, projectID: message.projectID, action: "workflow.create", target: id, metadata: request.metadata)
/// ```
///
/// Decisions are kept for ``decisionLifetime`` (2 s) per principal, project and permission, as
/// the gateway keeps its own: a run's steps, each checked by the tool service as the run's
/// principal, cost one `Authorize` call every two seconds rather than one each. A role changed or
/// a key revoked holds here for at most that long; the gateway, which checks every request
/// first, refuses it as soon as its own cache lets go.
public struct ProjectAccess: Sendable {
    private let project: Sparkops_Project_V1_ProjectService.SparkWireClient
    private let decisions: DecisionCache

    /// How long a decision is kept.
    public static let decisionLifetime: Duration = .seconds(2)

    public init(client: SparkWireChannel) {
        self.project = .init(wrapping: client)
        self.decisions = DecisionCache()
    }

    /// The project service's decision, from the cache while it is fresh.
    private func decide(_ principal: Sparkops_Common_V1_Principal, projectID: String, permission: String) async throws -> Sparkops_Project_V1_AuthorizeResponse {
        let key = DecisionCache.Key(
            principal: principal.id, kind: principal.kind.rawValue, role: principal.role.rawValue, userID: principal.userID,
            projectID: projectID, permission: permission
        )
        if let cached = self.decisions.get(key) { return cached }
        let decision = try await self.project.authorize(.with {
            $0.principal = principal
            $0.projectID = projectID
            $0.permission = permission
        })
        self.decisions.put(key, decision, for: Self.decisionLifetime)
        return decision
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
        let decision = try await self.decide(principal, projectID: projectID, permission: permission)
        guard decision.role != .unspecified else { throw SparkError.notFound("project") }
        guard decision.allowed else {
            throw SparkError(.permissionDenied, "\(permission) needs a higher role than \(decision.role.name)")
        }
        return principal
    }

    /// The principal's role in the project; `.unspecified` when it has none there.
    public func role(of principal: Sparkops_Common_V1_Principal, projectID: String) async throws -> Sparkops_Common_V1_Role {
        try await self.decide(principal, projectID: projectID, permission: "project.read").role
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

/// Authorization decisions by principal, project and permission, each until it expires; at most
/// 50,000 (past that, the whole cache is dropped: decisions are cheap to ask again).
final class DecisionCache: Sendable {
    struct Key: Hashable {
        var principal: String
        var kind: Int
        var role: Int
        var userID: String
        var projectID: String
        var permission: String
    }

    private let entries = Mutex<[Key: (decision: Sparkops_Project_V1_AuthorizeResponse, until: ContinuousClock.Instant)]>([:])

    func get(_ key: Key) -> Sparkops_Project_V1_AuthorizeResponse? {
        self.entries.withLock { entries in
            guard let entry = entries[key] else { return nil }
            guard entry.until > .now else {
                entries.removeValue(forKey: key)
                return nil
            }
            return entry.decision
        }
    }

    func put(_ key: Key, _ decision: Sparkops_Project_V1_AuthorizeResponse, for lifetime: Duration) {
        self.entries.withLock { entries in
            if entries.count >= 50_000 { entries.removeAll(keepingCapacity: true) }
            entries[key] = (decision, .now + lifetime)
        }
    }
}
