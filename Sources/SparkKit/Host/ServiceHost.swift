public import GRPCCore
import GRPCNIOTransportHTTP2
public import Logging
public import ServiceLifecycle
import SparkProto
public import SparkWire
import Synchronization
import SQLKit
import NIOCore

/// What a service module hands the host: the RPC services it implements, who may call them, its
/// store and migrations, and anything else long-lived it runs.
public struct ServiceDefinition: Sendable {
    public var name: ServiceName
    public var rpcServices: [any RegistrableRPCService & Sendable]
    public var allowlist: CallerAllowlist
    public var store: SparkStore?
    public var migrations: [SparkMigration]
    public var background: [any ServiceLifecycle.Service]
    /// Runs after migrations, before the listeners open (seed data, caches).
    public var prepare: @Sendable () async throws -> Void
    /// Whether the services this one calls are connected; `/readyz` waits for it, so that a
    /// caller that waits for readiness is not answered UNAVAILABLE by a peer still connecting.
    public var peersReady: @Sendable () -> Bool

    public init(
        name: ServiceName,
        rpcServices: [any RegistrableRPCService & Sendable],
        allowlist: CallerAllowlist,
        store: SparkStore? = nil,
        migrations: [SparkMigration] = [],
        background: [any ServiceLifecycle.Service] = [],
        prepare: @escaping @Sendable () async throws -> Void = {},
        peersReady: @escaping @Sendable () -> Bool = { true }
    ) {
        self.name = name
        self.rpcServices = rpcServices
        self.allowlist = allowlist
        self.store = store
        self.migrations = migrations
        self.background = background
        self.prepare = prepare
        self.peersReady = peersReady
    }
}

/// Builds the lifecycle services of one SparkOps service: its store, its SparkWire server (and the
/// standard gRPC listener when `<service>.grpcPort` is set), its admin HTTP listener and its
/// background work. `sparkops dev` runs several in one ServiceGroup; `sparkops-<name>` runs one.
public enum ServiceHost {
    public static func services(_ definition: ServiceDefinition, config: HostConfig, logger: Logger) -> [any ServiceLifecycle.Service] {
        var logger = logger
        logger[metadataKey: "service"] = "\(definition.name.rawValue)"
        let health = HealthService()
        health.setStatus(.notServing)
        let readiness = Readiness()
        var services: [any ServiceLifecycle.Service] = []
        if let store = definition.store {
            services.append(store)
        }
        services.append(contentsOf: definition.background)
        services.append(ServingService(definition: definition, config: config, health: health, readiness: readiness, logger: logger))
        let listener = config.listener(definition.name)
        services.append(AdminServer.application(
            service: definition.name,
            host: listener.host,
            port: listener.adminPort,
            ready: { [store = definition.store, peersReady = definition.peersReady] in
                guard readiness.isReady, peersReady() else { return false }
                guard let store else { return true }
                return (try? await store.sql { try await $0.raw("SELECT 1").run() }) != nil
            },
            logger: logger
        ))
        return services
    }
}

/// Whether a service has migrated and opened its listeners.
final class Readiness: Sendable {
    private let ready = Atomic<Bool>(false)
    var isReady: Bool { self.ready.load(ordering: .acquiring) }
    func markReady() { self.ready.store(true, ordering: .releasing) }
}

/// Migrates, prepares, then serves the service's RPCs until graceful shutdown.
struct ServingService: ServiceLifecycle.Service {
    let definition: ServiceDefinition
    let config: HostConfig
    let health: HealthService
    let readiness: Readiness
    let logger: Logger

    func run() async throws {
        let listener = self.config.listener(self.definition.name)
        self.logger.debug("starting", metadata: ["admin": "\(listener.host):\(listener.adminPort)"])
        if let store = self.definition.store {
            let applied = try await self.migrateWithRetry(store)
            if !applied.isEmpty {
                self.logger.info("applied migrations", metadata: ["migrations": "\(applied.joined(separator: ","))", "dialect": "\(store.dialect.rawValue)"])
            }
        }
        self.logger.debug("migrated; preparing", metadata: ["admin": "\(listener.host):\(listener.adminPort)"])
        try await self.definition.prepare()
        self.logger.debug("prepared", metadata: ["admin": "\(listener.host):\(listener.adminPort)"])

        var allowlist = self.definition.allowlist
        allowlist.services["sparkops.health.v1.Health"] = ["*"]
        let telemetry = RPCTelemetryInterceptor(service: self.definition.name.rawValue, logger: self.logger)
        let allowed = CallerAllowlistInterceptor.anyTransport(allowlist)
        let interceptors: [any ServerInterceptor] = [telemetry, allowed]
        let services: [any RegistrableRPCService] = self.definition.rpcServices + [self.health]
        // Unary methods take SparkWire's lean path with the same interceptors; streaming methods
        // and the standard gRPC listener go through GRPCCore.
        let wire = SparkWireServerTransport(
            config: .init(
                host: listener.host,
                port: listener.port,
                security: .mutualTLS(self.config.credentials(self.definition.name)),
                methods: SparkProtoMethods.all,
                unaryMethods: self.config.leanUnary ? SparkProtoMethods.unary(of: services) : [],
                unaryInterceptors: [telemetry, allowed]
            ),
            logger: self.logger
        )
        let wireServer = GRPCServer(transport: wire, services: services, interceptors: interceptors)
        let standardServer = listener.grpcPort.map { port in
            GRPCServer(
                transport: StandardGRPC.serverTransport(
                    host: listener.host,
                    port: port,
                    certificateDirectory: self.config.certificateDirectory,
                    service: self.definition.name.rawValue
                ),
                services: services,
                interceptors: interceptors
            )
        }
        try await withGracefulShutdownHandler {
            try await withThrowingDiscardingTaskGroup { group in
                group.addTask { try await wireServer.serve() }
                if let standardServer {
                    group.addTask { try await standardServer.serve() }
                }
                let address = try await wire.listeningAddress
                self.health.setStatus(.serving)
                self.readiness.markReady()
                self.logger.info("serving", metadata: ["sparkwire": "\(listener.host):\(address.port ?? listener.port)", "admin": "\(listener.host):\(listener.adminPort)"])
            }
        } onGracefulShutdown: {
            self.health.markAllNotServing()
            wireServer.beginGracefulShutdown()
            standardServer?.beginGracefulShutdown()
        }
    }

    /// A database that is still starting (a container, say) gets 30 seconds.
    private func migrateWithRetry(_ store: SparkStore) async throws -> [String] {
        var attempt = 0
        while true {
            do {
                return try await store.migrate(self.definition.migrations)
            } catch {
                attempt += 1
                if attempt >= 15 || Task.isCancelled { throw error }
                self.logger.warning("database not ready; retrying", metadata: ["error": "\(String(reflecting: error))", "attempt": "\(attempt)"])
                try await Task.sleep(for: .seconds(2))
            }
        }
    }
}
