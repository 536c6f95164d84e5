public import Configuration
import Foundation
public import Logging
public import ServiceLifecycle
public import SparkKit
import SparkAgentService
import SparkBudgetService
import SparkPolicyService
import SparkGateway
import SparkProjectService
import SparkRunService
import SparkToolService
import SparkWorkflowService
import SparkWire
import UnixSignals

/// The composition root: builds any SparkOps service from configuration. `sparkops dev`,
/// `sparkops serve <service>` and every `sparkops-<service>` executable go through here, so a
/// service runs the same way alone or with the others in one process.
public enum SparkRuntime {
    /// The lifecycle services that make up `service`.
    public static func services(
        for service: ServiceName,
        host: HostConfig,
        config: ConfigReader,
        logger: Logger
    ) async throws -> [any ServiceLifecycle.Service] {
        switch service {
        case .gateway:
            return try await Gateway.services(host: host, config: config, logger: logger)
        case .project:
            return ServiceHost.services(try await ProjectService.definition(host: host, config: config, logger: logger), config: host, logger: logger)
        case .workflow:
            return ServiceHost.services(try await WorkflowService.definition(host: host, config: config, logger: logger), config: host, logger: logger)
        case .tool:
            return ServiceHost.services(try await ToolService.definition(host: host, config: config, logger: logger), config: host, logger: logger)
        case .agent:
            return ServiceHost.services(try await AgentService.definition(host: host, config: config, logger: logger), config: host, logger: logger)
        case .policy:
            return ServiceHost.services(try await PolicyService.definition(host: host, config: config, logger: logger), config: host, logger: logger)
        case .budget:
            return ServiceHost.services(try await BudgetService.definition(host: host, config: config, logger: logger), config: host, logger: logger)
        case .run:
            return ServiceHost.services(try await RunService.definition(host: host, config: config, logger: logger), config: host, logger: logger)
        case .scheduler:
            throw SparkConfigurationError("the \(service.rawValue) service is not available yet; available: \(ServiceName.available.map(\.rawValue).joined(separator: ", "))")
        }
    }

    /// Runs the services in one service group until SIGTERM or SIGINT, then shuts them down
    /// gracefully: calls in flight finish, new ones are refused.
    public static func run(_ names: [ServiceName], host: HostConfig, config: ConfigReader, logger: Logger) async throws {
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = []
        for name in Self.startOrder(names) {
            var serviceLogger = logger
            serviceLogger[metadataKey: "service"] = "\(name.rawValue)"
            services += Self.supervised(try await Self.services(for: name, host: host, config: config, logger: serviceLogger), logger: serviceLogger)
        }
        let group = ServiceGroup(configuration: .init(
            services: services,
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger
        ))
        try await group.run()
    }

    /// Each part of a service in a service group: one that fails says so in the log (the group
    /// itself logs only at debug level), and the others then shut down gracefully rather than
    /// being cancelled, so that listeners finish the connections they accepted.
    public static func supervised(_ services: [any ServiceLifecycle.Service], logger: Logger) -> [ServiceGroupConfiguration.ServiceConfiguration] {
        services.map { service in
            .init(service: SupervisedService(service: service, logger: logger), successTerminationBehavior: .gracefullyShutdownGroup, failureTerminationBehavior: .gracefullyShutdownGroup)
        }
    }

    /// The gateway last: a service group stops its services in reverse order, so the edge stops
    /// taking requests (and writes its last audit counts) before the services behind it stop.
    public static func startOrder(_ names: [ServiceName]) -> [ServiceName] {
        names.filter { $0 != .gateway } + names.filter { $0 == .gateway }
    }

    /// Applies every pending migration of the services that own a database, then returns.
    public static func migrate(_ names: [ServiceName], host: HostConfig, config: ConfigReader, logger: Logger) async throws -> [String: [String]] {
        var applied: [String: [String]] = [:]
        for name in names {
            let definition: ServiceDefinition
            switch name {
            case .project: definition = try await ProjectService.definition(host: host, config: config, logger: logger)
            case .workflow: definition = try await WorkflowService.definition(host: host, config: config, logger: logger)
            case .tool: definition = try await ToolService.definition(host: host, config: config, logger: logger)
            case .agent: definition = try await AgentService.definition(host: host, config: config, logger: logger)
            case .policy: definition = try await PolicyService.definition(host: host, config: config, logger: logger)
            case .budget: definition = try await BudgetService.definition(host: host, config: config, logger: logger)
            case .run: definition = try await RunService.definition(host: host, config: config, logger: logger)
            default: continue
            }
            guard let store = definition.store else { continue }
            applied[name.rawValue] = try await withThrowingTaskGroup(of: [String]?.self) { group in
                group.addTask {
                    try await store.run()
                    return nil
                }
                let result = try await store.migrate(definition.migrations)
                group.cancelAll()
                return result
            }
        }
        return applied
    }

    /// Where the gateway that `config` describes serves its API, and the URL of its readiness
    /// probe, read exactly as the gateway reads its own settings (`gateway.port`, `gateway.adminPort`
    /// and `gateway.host`), so that whatever ports are set, a caller polls the right one.
    public static func gatewayAddresses(config: ConfigReader) throws -> (apiPort: Int, readyz: String) {
        let gateway = try GatewayConfig(config: config)
        var host = gateway.host
        if host == "0.0.0.0" || host == "::" { host = "127.0.0.1" }
        let authority = host.contains(":") ? "[\(host)]" : host
        return (gateway.port, "http://\(authority):\(gateway.adminPort)/readyz")
    }

    /// Creates the embedded mode's certificates under `<home>/certs` on first start.
    public static func ensureCertificates(host: HostConfig, logger: Logger) throws {
        let directory = URL(filePath: host.certificateDirectory)
        guard !FileManager.default.fileExists(atPath: directory.appending(path: "ca.pem").path) else { return }
        // Each certificate names its service only: a name every certificate shared (localhost, say)
        // would let a client that checked it accept any service.
        try CertificateAuthority.initialize(directory: directory, services: ServiceName.allCases.map(\.rawValue))
        logger.info("created certificates", metadata: ["directory": "\(host.certificateDirectory)"])
    }

    /// Logging and metrics for a process: JSON lines (`log.format=json`, the default) or plain text.
    public static func bootstrapTelemetry(config: ConfigReader, defaultFormat: String = "json") -> Logger {
        let level = Logger.Level(rawValue: config.string(forKey: "log.level", default: "info")) ?? .info
        let format = config.string(forKey: "log.format", default: defaultFormat)
        SparkTelemetry.bootstrap(logLevel: level, jsonLogs: format == "json")
        var logger = Logger(label: "sparkops")
        logger.logLevel = level
        return logger
    }

    /// The `main` of every `sparkops-<service>` executable: `--config FILE`, `--set key=value`
    /// (repeatable), `--help`.
    public static func main(serving names: [ServiceName]) async {
        var overrides: [String: String] = [:]
        var file: String?
        var arguments = Array(CommandLine.arguments.dropFirst())[...]
        while let argument = arguments.popFirst() {
            switch argument {
            case "--config":
                file = arguments.popFirst()
            case "--set":
                guard let pair = arguments.popFirst(), let equals = pair.firstIndex(of: "=") else {
                    Self.fail("--set takes key=value")
                }
                overrides[String(pair[..<equals])] = String(pair[pair.index(after: equals)...])
            case "--help", "-h":
                print("""
                    usage: sparkops-\(names.map(\.rawValue).joined(separator: "+")) [--config FILE] [--set key=value]...

                    Runs the SparkOps \(names.map(\.rawValue).joined(separator: ", ")) service until SIGTERM or SIGINT.
                    Configuration: --set > SPARKOPS_* environment > --config/SPARKOPS_CONFIG JSON file > defaults;
                    docs/configuration.md lists the keys.
                    """)
                return
            default:
                Self.fail("unknown argument \(argument); see --help")
            }
        }
        do {
            let config = try await SparkConfiguration.reader(overrides: overrides, file: file)
            let logger = Self.bootstrapTelemetry(config: config)
            let host = try HostConfig(config: config)
            try await Self.run(names, host: host, config: config, logger: logger)
        } catch {
            Self.fail("\(error)")
        }
    }

    static func fail(_ message: String) -> Never {
        FileHandle.standardError.write(Data("error: \(message)\n".utf8))
        exit(1)
    }
}

/// A part of a service that logs why it stopped when it failed.
struct SupervisedService: ServiceLifecycle.Service, CustomStringConvertible {
    let service: any ServiceLifecycle.Service
    let logger: Logger

    var description: String { "\(type(of: self.service))" }

    func run() async throws {
        do {
            try await self.service.run()
        } catch is CancellationError {
            throw CancellationError()
        } catch {
            self.logger.error("a part of the service failed; SparkOps shuts down", metadata: ["part": "\(type(of: self.service))", "error": "\(String(reflecting: error).prefix(2000))"])
            throw error
        }
    }
}
