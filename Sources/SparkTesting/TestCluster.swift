import Synchronization
public import GRPCCore
public import SparkWire
import Configuration
import Foundation
import NIOHTTP1
import Logging
import ServiceLifecycle
public import SparkKit
import SparkRuntime

/// SparkOps in this process, built by the same composition root as `sparkops dev`: the project
/// service and the gateway on free loopback ports, talking over SparkWire with mutual TLS, on
/// SQLite or a fresh PostgreSQL database (and Redis rate limits when the backend brings one).
///
/// ```swift
/// try await TestCluster.run(backend: .sqlite) { cluster in
///     let token = try await cluster.adminToken()
///     let reply = try await cluster.http.send(.GET, "/api/v1/projects", token: token)
/// }
/// ```
public struct TestCluster: Sendable {
    public static let adminEmail = "admin@sparkops.test"
    public static let adminPassword = "admin-password-123"

    public let backend: TestBackend
    public let home: String
    public let databaseURL: String?
    public let gatewayPort: Int
    public let gatewayAdminPort: Int
    public let projectAdminPort: Int
    /// The admin port (`/readyz`) of every service but the gateway.
    public let serviceAdminPorts: [ServiceName: Int]
    public let http: HTTPTestClient
    public let hostConfig: HostConfig

    public var baseURL: String { self.http.baseURL }

    /// Runs SparkOps for the duration of `body`.
    /// - Parameter overrides: configuration keys to set, such as rate limits.
    public static func run<T: Sendable>(
        backend: TestBackend,
        overrides: [String: String] = [:],
        _ body: @Sendable (TestCluster) async throws -> T
    ) async throws -> T {
        // At most a few clusters at once: eight services each, and a 2-core machine, would
        // otherwise run dozens side by side and none would start within its bounds.
        try await ClusterSlots.shared.withSlot {
            try await Self.start(backend: backend, overrides: overrides, body)
        }
    }

    static func start<T: Sendable>(
        backend: TestBackend,
        overrides: [String: String],
        _ body: @Sendable (TestCluster) async throws -> T
    ) async throws -> T {
        try await backend.withDatabase { databaseURL in
            let home = FileManager.default.temporaryDirectory.appending(path: "sparkops-cluster-\(UUID().uuidString)").path
            defer { try? FileManager.default.removeItem(atPath: home) }
            let ports = (gateway: try await FreePort.allocate(), gatewayAdmin: try await FreePort.allocate())
            var settings: [String: String] = [
                "home": home,
                "gateway.port": "\(ports.gateway)",
                "gateway.adminPort": "\(ports.gatewayAdmin)",
                "project.bcryptCost": "4",
                // Clusters side by side in one process: sandbox uids of their own for each.
                "tool.sandboxFirstUID": "\(1_900_000_000 + Int.random(in: 0 ..< 1_000_000) * 16)",
                "tool.maxConcurrentPrograms": "8",
                // A cluster stops within its shutdown bounds even with attempts in flight.
                "run.drainSeconds": "3",
                "tool.masterKeys": "test:\(Data((0 ..< 32).map { _ in UInt8.random(in: 0 ... 255) }).base64EncodedString())",
                "admin.email": Self.adminEmail,
                "admin.password": Self.adminPassword,
                "log.level": ProcessInfo.processInfo.environment["SPARKOPS_TEST_LOG_LEVEL"] ?? "warning",
            ]
            // Every service on ports of its own, so that clusters side by side do not meet.
            var adminPorts: [ServiceName: Int] = [:]
            for name in ServiceName.available where name != .gateway {
                settings["\(name.rawValue).port"] = "\(try await FreePort.allocate())"
                let admin = try await FreePort.allocate()
                settings["\(name.rawValue).adminPort"] = "\(admin)"
                adminPorts[name] = admin
            }
            if let databaseURL {
                settings["database.url"] = databaseURL
                // Many clusters run at once against one server: a few connections each.
                settings["database.maxConnections"] = "4"
            }
            if let redis = backend.redisURL {
                settings["redis.url"] = redis
                settings["redis.keyPrefix"] = "test-\(UUID().uuidString.prefix(8))"
            }
            settings.merge(overrides) { _, new in new }
            // The real environment is left out, so that a developer's SPARKOPS_* variables do not leak in.
            let config = try await SparkConfiguration.reader(overrides: settings, environment: [:])
            let host = try HostConfig(config: config)
            // SPARKOPS_TEST_LOG_LEVEL=debug: every service's log, unbuffered on stderr.
            var logger = Logger(label: "sparkops.test") { StreamLogHandler.standardError(label: $0) }
            logger.logLevel = Logger.Level(rawValue: ProcessInfo.processInfo.environment["SPARKOPS_TEST_LOG_LEVEL"] ?? "warning") ?? .warning
            try SparkRuntime.ensureCertificates(host: host, logger: logger)

            var services: [ServiceGroupConfiguration.ServiceConfiguration] = []
            for name in SparkRuntime.startOrder(ServiceName.available) {
                services += SparkRuntime.supervised(try await SparkRuntime.services(for: name, host: host, config: config, logger: logger), logger: logger)
            }
            var groupLogger = Logger(label: "sparkops.test.shutdown") { StreamLogHandler.standardError(label: $0) }
            groupLogger.logLevel = ProcessInfo.processInfo.environment["SPARKOPS_TEST_SHUTDOWN_DEBUG"] == nil ? .warning : .debug
            var groupConfiguration = ServiceGroupConfiguration(services: services, logger: groupLogger)
            // A service that does not finish its graceful shutdown is cancelled, and the test fails.
            // Six services and their peer clients stop one after another: on a loaded 2-core
            // machine that once took longer than 15 s.
            groupConfiguration.maximumGracefulShutdownDuration = .seconds(30)
            // Cancelled parts may wait on a database stalled by a checkpoint on a loaded machine;
            // past this bound ServiceLifecycle ends the whole test process.
            groupConfiguration.maximumCancellationDuration = .seconds(20)
            let group = ServiceGroup(configuration: groupConfiguration)
            let cluster = TestCluster(
                backend: backend,
                home: home,
                databaseURL: databaseURL,
                gatewayPort: ports.gateway,
                gatewayAdminPort: ports.gatewayAdmin,
                projectAdminPort: adminPorts[.project]!,
                serviceAdminPorts: adminPorts,
                http: HTTPTestClient(baseURL: "http://127.0.0.1:\(ports.gateway)"),
                hostConfig: host
            )
            return try await withThrowingTaskGroup(of: Void.self) { tasks in
                let ended = GroupEnd()
                tasks.addTask {
                    do {
                        try await group.run()
                        ended.record("without an error")
                    } catch {
                        ended.record(String(reflecting: error))
                        throw error
                    }
                }
                do {
                    try await cluster.waitUntilReady(unless: ended)
                    let result = try await body(cluster)
                    await group.triggerGracefulShutdown()
                    try await tasks.waitForAll()
                    return result
                } catch {
                    await group.triggerGracefulShutdown()
                    try? await tasks.waitForAll()
                    throw error
                }
            }
        }
    }

    /// Waits (bounded) until the project service has migrated and the gateway is connected to it,
    /// as an operator's readiness probe would.
    func waitUntilReady(unless ended: GroupEnd) async throws {
        let probes = [("gateway", self.gatewayAdminPort)] + self.serviceAdminPorts.map { ($0.key.rawValue, $0.value) }.sorted { $0.0 < $1.0 }
        let deadline = ContinuousClock.now + .seconds(120)
        while ContinuousClock.now < deadline {
            if let reason = ended.reason {
                throw TestSetupError(description: "SparkOps stopped while starting: \(reason)")
            }
            var allReady = true
            for (_, port) in probes {
                guard let ready = try? await HTTPTestClient(baseURL: "http://127.0.0.1:\(port)").send(.GET, "/readyz"), ready.status == 200 else {
                    allReady = false
                    break
                }
            }
            if allReady { return }
            try await Task.sleep(for: .milliseconds(50))
        }
        var states: [String] = []
        for (name, port) in probes {
            let status = (try? await HTTPTestClient(baseURL: "http://127.0.0.1:\(port)").send(.GET, "/readyz"))?.status
            states.append("\(name) admin :\(port) /readyz \(status.map(String.init) ?? "no answer")")
        }
        throw TestSetupError(description: "SparkOps did not become ready within 120 s: \(states.joined(separator: ", "))")
    }

    /// Logs in and returns the session's JSON.
    public func login(email: String = TestCluster.adminEmail, password: String = TestCluster.adminPassword) async throws -> [String: Any] {
        let reply = try await self.http.send(.POST, "/api/v1/auth/login", json: ["email": email, "password": password])
        guard reply.status == 200 else {
            throw TestSetupError(description: "login as \(email) failed: \(reply.status) \(reply.text)")
        }
        return reply.json
    }

    /// An access token of the administrator.
    public func adminToken() async throws -> String {
        try await self.login()["accessToken"] as! String
    }

    /// Creates a project as `token`'s user and returns its id.
    public func createProject(_ name: String, token: String) async throws -> String {
        let reply = try await self.http.send(.POST, "/api/v1/projects", token: token, json: ["name": name])
        guard reply.status == 201, let id = reply.json["id"] as? String else {
            throw TestSetupError(description: "creating project \(name) failed: \(reply.status) \(reply.text)")
        }
        return id
    }

    /// Creates a user (as the administrator) and returns its id.
    public func createUser(_ email: String, password: String = "user-password-123", adminToken: String) async throws -> String {
        let reply = try await self.http.send(.POST, "/api/v1/users", token: adminToken, json: ["email": email, "password": password])
        guard reply.status == 201, let id = reply.json["id"] as? String else {
            throw TestSetupError(description: "creating user \(email) failed: \(reply.status) \(reply.text)")
        }
        return id
    }

    /// Runs `body` with a SparkWire client to `peer` that presents `caller`'s certificate: for
    /// the calls only services make (a policy decision asked by the agent service, say).
    public func withPeer<T: Sendable>(
        _ peer: ServiceName, as caller: ServiceName, _ body: @Sendable (GRPCClient<SparkWireClientTransport>) async throws -> T
    ) async throws -> T {
        let client = try PeerClients(caller: caller, peers: [peer], config: self.hostConfig)[peer]
        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await client.runConnections() }
            do {
                let result = try await body(client.grpc)
                client.beginGracefulShutdown()
                try await group.waitForAll()
                return result
            } catch {
                client.beginGracefulShutdown()
                try? await group.waitForAll()
                throw error
            }
        }
    }

    /// Runs `body` against the project service's database directly (to set up what the API cannot,
    /// such as an expired key).
    public func withProjectStore<T: Sendable>(_ body: @Sendable (SparkStore) async throws -> T) async throws -> T {
        let store = try SparkStore(service: "project", location: self.hostConfig.storeLocation())
        return try await withThrowingTaskGroup(of: T?.self) { group in
            group.addTask {
                try await store.run()
                return nil
            }
            defer { group.cancelAll() }
            return try await body(store)
        }
    }
}

/// Why a cluster's service group ended, once it has.
final class GroupEnd: Sendable {
    private let value = Mutex<String?>(nil)

    var reason: String? { self.value.withLock { $0 } }

    func record(_ reason: String) {
        self.value.withLock { $0 = $0 ?? reason }
    }
}

/// How many test clusters run at once in this process (`SPARKOPS_TEST_CLUSTERS`, by default
/// twice the cores, at least 4); the others wait their turn, first come first served.
actor ClusterSlots {
    static let shared = ClusterSlots(
        limit: Int(ProcessInfo.processInfo.environment["SPARKOPS_TEST_CLUSTERS"] ?? "") ?? max(4, 2 * ProcessInfo.processInfo.activeProcessorCount)
    )

    private let limit: Int
    private var running = 0
    private var waiting: [CheckedContinuation<Void, Never>] = []

    init(limit: Int) {
        self.limit = max(1, limit)
    }

    func withSlot<T: Sendable>(_ body: @Sendable () async throws -> T) async throws -> T {
        await self.acquire()
        do {
            let result = try await body()
            self.release()
            return result
        } catch {
            self.release()
            throw error
        }
    }

    private func acquire() async {
        if self.running < self.limit {
            self.running += 1
            return
        }
        await withCheckedContinuation { self.waiting.append($0) }
    }

    /// Hands the slot to the next waiter, if any.
    private func release() {
        if self.waiting.isEmpty {
            self.running -= 1
        } else {
            self.waiting.removeFirst().resume()
        }
    }
}

