public import Configuration
public import Logging
public import SparkKit
public import SparkWire

extension WorkflowService {
    /// Who may call what: the gateway everything (on behalf of users); the run service reads
    /// versions to pin them.
    public static let allowlist = CallerAllowlist(
        methods: [
            "/sparkops.workflow.v1.WorkflowService/GetWorkflowVersion": ["gateway", "run"],
            "/sparkops.workflow.v1.WorkflowService/GetWorkflow": ["gateway", "run"],
        ],
        services: ["sparkops.workflow.v1.WorkflowService": ["gateway"]],
        principalSetters: ["gateway", "run"]
    )

    /// The workflow service ready for the host: its store, migrations, its client of the
    /// project service (for roles and the audit log) and of the tool and agent services (the tools
    /// and agents steps name); ready once all are connected.
    public static func definition(host: HostConfig, config: ConfigReader, logger: Logger) async throws -> ServiceDefinition {
        let store = try SparkStore(service: "workflow", location: host.storeLocation(), logger: logger)
        let peers = try PeerClients(caller: .workflow, peers: [.project, .tool, .agent], config: host)
        let directory = ReferenceDirectory(tools: peers[.tool], agents: peers[.agent])
        let service = WorkflowService(store: store, access: ProjectAccess(client: peers[.project]), directory: directory, logger: logger)
        return ServiceDefinition(
            name: .workflow,
            rpcServices: [service],
            allowlist: Self.allowlist,
            store: store,
            migrations: WorkflowMigrations.all,
            background: peers.services,
            peersReady: { peers.allReady }
        )
    }
}
