import AsyncHTTPClient
public import Configuration
import Foundation
public import Logging
public import SparkKit
public import SparkWire

/// Settings of the agent service.
///
/// ## Configuration keys
/// - `agent.catalog` (string): the model catalog itself, YAML or JSON (docs/agents.md): the
///   providers agents may name (`openai`, `anthropic` and any OpenAI-compatible server) and the
///   models' prices and context windows.
/// - `agent.catalogFile` (string): a file holding the catalog, when `agent.catalog` is not set.
///   Without either, the catalog has the providers openai and anthropic and prices no model.
/// - `agent.allowUnpricedModels` (bool, default false): models the catalog has no price for may
///   run, at no recorded cost; by default such an agent is refused.
public struct AgentServiceConfig: Sendable {
    var catalog: ModelCatalog

    public init(config: ConfigReader) throws {
        let allowUnpriced = config.bool(forKey: "agent.allowUnpricedModels", default: false)
        if let text = config.string(forKey: "agent.catalog"), !text.isEmpty {
            self.catalog = try ModelCatalog.parse(text, allowUnpriced: allowUnpriced)
        } else if let path = config.string(forKey: "agent.catalogFile"), !path.isEmpty {
            let text: String
            do { text = try String(contentsOfFile: path, encoding: .utf8) } catch { throw SparkConfigurationError("agent.catalogFile: cannot read \(path)") }
            self.catalog = try ModelCatalog.parse(text, allowUnpriced: allowUnpriced)
        } else {
            self.catalog = ModelCatalog(
                providers: Dictionary(uniqueKeysWithValues: ModelCatalog.builtInProviders.map { ($0.name, $0) }),
                models: [], allowUnpriced: allowUnpriced
            )
        }
    }
}

extension AgentService {
    /// Who may call what: the gateway everything (for users); the run service runs agent steps
    /// and reads agents; the workflow service checks the agents steps name.
    public static let allowlist = CallerAllowlist(
        methods: [
            "/sparkops.agent.v1.AgentService/ExecuteAgentStep": ["gateway", "run"],
            "/sparkops.agent.v1.AgentService/GetAgent": ["gateway", "run", "workflow"],
            "/sparkops.agent.v1.AgentService/ListAgents": ["gateway", "run", "workflow"],
        ],
        services: ["sparkops.agent.v1.AgentService": ["gateway"]],
        principalSetters: ["gateway", "run", "workflow"]
    )

    /// The agent service ready for the host: its store and migrations, its model catalog, and its
    /// clients of the project service (roles, audit), the tool service (tools, API keys), the
    /// policy service (a decision before every model call) and the budget service (each call's
    /// worst case held before it, its cost settled after).
    public static func definition(host: HostConfig, config: ConfigReader, logger: Logger) async throws -> ServiceDefinition {
        let settings = try AgentServiceConfig(config: config)
        let store = try SparkStore(service: "agent", location: host.storeLocation(), logger: logger)
        let peers = try PeerClients(caller: .agent, peers: [.project, .tool, .policy, .budget], config: host)
        let service = AgentService(
            store: store, access: ProjectAccess(client: peers[.project]), tools: ProjectTools(client: peers[.tool]),
            catalog: settings.catalog, llm: LLMClient(http: HTTPClient.shared, logger: logger),
            policy: PolicyCheck(client: peers[.policy]), budget: BudgetSpend(client: peers[.budget], logger: logger), logger: logger
        )
        return ServiceDefinition(
            name: .agent,
            rpcServices: [service],
            allowlist: Self.allowlist,
            store: store,
            migrations: AgentStore.migrations,
            background: peers.services,
            peersReady: { peers.allReady }
        )
    }
}
