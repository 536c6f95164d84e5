public import SparkProto

/// What each project role may do. Roles are cumulative: each role has the permissions of the
/// roles below it, except that `approver` and `runner` are side by side (both above `viewer`,
/// both below `editor`).
public enum Permission {
    /// Every permission a route or RPC may require, with the least role that holds it.
    public static let minimumRole: [String: Sparkops_Common_V1_Role] = [
        "project.read": .viewer,
        "run.read": .viewer,
        "workflow.read": .viewer,
        "agent.read": .viewer,
        "tool.read": .viewer,
        "policy.read": .viewer,
        "budget.read": .viewer,
        "run.create": .runner,
        "run.cancel": .runner,
        "budget.spend": .runner,
        "approval.decide": .approver,
        "workflow.write": .editor,
        "agent.write": .editor,
        "tool.write": .editor,
        "schedule.write": .editor,
        "project.update": .admin,
        "member.manage": .admin,
        "apikey.manage": .admin,
        "policy.write": .admin,
        "budget.write": .admin,
        "secret.write": .admin,
        "audit.read": .admin,
        "project.delete": .owner,
    ]

    /// Whether `role` holds `permission`. Unknown permissions are held by no role.
    public static func role(_ role: Sparkops_Common_V1_Role, allows permission: String) -> Bool {
        guard let minimum = Self.minimumRole[permission] else { return false }
        switch (role, minimum) {
        case (.approver, .runner), (.runner, .approver):
            return false
        default:
            return role.rawValue >= minimum.rawValue
        }
    }

    /// Whether a caller with role `caller` may change, remove or revoke a member or key whose role
    /// is `target`: only one whose role is at most its own, so that only an owner touches an owner.
    /// (The caller also needs `member.manage` or `apikey.manage`.)
    public static func role(_ caller: Sparkops_Common_V1_Role, mayManage target: Sparkops_Common_V1_Role) -> Bool {
        target.rawValue <= caller.rawValue
    }

    /// The greatest role that holds no permission either role lacks: what a key holds when its
    /// creator's role is below the key's. `runner` and `approver` sit side by side, so together
    /// they meet at `viewer`: an approver key of a user who is now a runner may neither approve nor run.
    public static func lesser(_ a: Sparkops_Common_V1_Role, _ b: Sparkops_Common_V1_Role) -> Sparkops_Common_V1_Role {
        if Set([a, b]) == [.runner, .approver] { return .viewer }
        return a.rawValue <= b.rawValue ? a : b
    }

    /// The role names users type, such as `editor`.
    public static func role(named name: String) -> Sparkops_Common_V1_Role? {
        switch name.lowercased() {
        case "viewer": return .viewer
        case "runner": return .runner
        case "approver": return .approver
        case "editor": return .editor
        case "admin": return .admin
        case "owner": return .owner
        default: return nil
        }
    }
}

extension Sparkops_Common_V1_Role {
    /// The role's name as users type it: `viewer`, …, `owner`.
    public var name: String {
        switch self {
        case .viewer: return "viewer"
        case .runner: return "runner"
        case .approver: return "approver"
        case .editor: return "editor"
        case .admin: return "admin"
        case .owner: return "owner"
        case .unspecified, .UNRECOGNIZED: return "none"
        }
    }
}
