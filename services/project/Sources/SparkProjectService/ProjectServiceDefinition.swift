public import Configuration
public import Logging
public import SparkKit
public import SparkWire

extension ProjectService {
    /// Every other service may ask who a credential is, whether a principal may act, and record audit events.
    static let otherServices: Set<String> = Set(ServiceName.allCases.map(\.rawValue)).subtracting(["project"])

    /// Who may call what: the gateway everything (on behalf of users), other services the internal RPCs.
    public static let allowlist = CallerAllowlist(
        methods: [
            "/sparkops.project.v1.ProjectService/Authorize": otherServices,
            "/sparkops.project.v1.ProjectService/RecordAuditEvent": otherServices,
        ],
        services: ["sparkops.project.v1.ProjectService": ["gateway"]],
        principalSetters: ["gateway"]
    )

    /// The project service ready for the host: its store, migrations and first-start preparation.
    public static func definition(host: HostConfig, config: ConfigReader, logger: Logger) async throws -> ServiceDefinition {
        let store = try SparkStore(service: "project", location: host.storeLocation(), logger: logger)
        let service = try await ProjectService(store: store, config: try ProjectServiceConfig(config: config), logger: logger)
        let adminEmail = service.config.adminEmail
        return ServiceDefinition(
            name: .project,
            rpcServices: [service],
            allowlist: Self.allowlist,
            store: store,
            migrations: ProjectMigrations.all,
            prepare: {
                if let password = try await service.prepare() {
                    // Shown once: the first administrator's generated password.
                    Console.say("""

                        SparkOps created the first administrator; this password is not shown again:
                          email:    \(adminEmail)
                          password: \(password)
                        Log in with `sparkops login --email \(adminEmail)` and change it with
                        `sparkops user password`, or set SPARKOPS_ADMIN_PASSWORD before the first start.

                        """)
                }
            }
        )
    }
}
