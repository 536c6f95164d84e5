public import Configuration
import Foundation
public import Logging
public import SparkKit
public import SparkWire
import SparkWorkflow

/// Settings of the policy service.
///
/// ## Configuration keys
/// - `policy.timeZone` (string, default `UTC`): the IANA time zone of the `time.*` names rules
///   read (`time.hour`, `time.weekday`).
/// - `policy.defaultEffect` (string, default `allow`): the decision at a point where no policy
///   applies: `allow`, `deny` or `require_approval`.
public struct PolicyServiceConfig: Sendable {
    var timeZone: TimeZone
    var defaultEffect: PolicyDefinition.Effect

    public init(config: ConfigReader) throws {
        let zone = config.string(forKey: "policy.timeZone", default: "UTC")
        guard let timeZone = TimeZone(identifier: zone) else {
            throw SparkConfigurationError("policy.timeZone: \(zone.debugDescription) is not an IANA time zone, such as UTC or Europe/Paris")
        }
        self.timeZone = timeZone
        let effect = config.string(forKey: "policy.defaultEffect", default: "allow")
        guard let defaultEffect = PolicyDefinition.Effect(rawValue: effect) else {
            throw SparkConfigurationError("policy.defaultEffect: \(effect.debugDescription) is not allow, deny or require_approval")
        }
        self.defaultEffect = defaultEffect
    }
}

extension PolicyService {
    /// Who may call what: the gateway everything (for users); the services that enforce policy
    /// ask for decisions.
    public static let allowlist = CallerAllowlist(
        methods: [
            "/sparkops.policy.v1.PolicyService/Evaluate": ["agent", "tool", "run"],
        ],
        services: ["sparkops.policy.v1.PolicyService": ["gateway"]],
        principalSetters: ["gateway", "agent", "tool", "run"]
    )

    /// The policy service ready for the host: its store and migrations, and its clients of the
    /// project service (roles, audit) and the budget service (the `budget.*` names).
    public static func definition(host: HostConfig, config: ConfigReader, logger: Logger) async throws -> ServiceDefinition {
        let settings = try PolicyServiceConfig(config: config)
        let store = try SparkStore(service: "policy", location: host.storeLocation(), logger: logger)
        let peers = try PeerClients(caller: .policy, peers: [.project, .budget], config: host)
        let service = PolicyService(
            store: store, access: ProjectAccess(client: peers[.project]), budgets: BudgetFigures(client: peers[.budget]), settings: settings, logger: logger
        )
        return ServiceDefinition(
            name: .policy,
            rpcServices: [service],
            allowlist: Self.allowlist,
            store: store,
            migrations: PolicyStore.migrations,
            background: peers.services,
            peersReady: { peers.allReady }
        )
    }
}
