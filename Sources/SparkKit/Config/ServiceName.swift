/// The SparkOps services, each its own executable (`sparkops-<name>`) or all in `sparkops dev`.
public enum ServiceName: String, CaseIterable, Sendable, Hashable {
    case gateway, project, agent, workflow, run, tool, policy, budget, scheduler

    /// The SparkWire port a service listens on unless configured (`<name>.port`).
    public var defaultWirePort: Int {
        switch self {
        case .gateway: return 7000
        case .project: return 7001
        case .agent: return 7002
        case .workflow: return 7003
        case .run: return 7004
        case .tool: return 7005
        case .policy: return 7006
        case .budget: return 7007
        case .scheduler: return 7008
        }
    }

    /// The admin HTTP port (`/healthz`, `/readyz`, `/metrics`) unless configured (`<name>.adminPort`).
    public var defaultAdminPort: Int { self.defaultWirePort + 2000 }

    /// The services implemented so far, each after the services it calls (the order they start
    /// in, but for the gateway, which starts last); the others are named but not built yet.
    public static let available: [ServiceName] = [.gateway, .project, .budget, .policy, .tool, .agent, .workflow, .run]
}
