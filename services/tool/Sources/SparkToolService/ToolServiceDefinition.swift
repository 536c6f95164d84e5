public import Configuration
import Foundation
public import Logging
import NIOSSL
import ServiceLifecycle
public import SparkKit
public import SparkWire

/// Settings of the tool service.
///
/// ## Configuration keys
/// - `tool.masterKeys` (string, secret): the master keys that seal secrets, `id:base64` entries
///   (32 bytes each) separated by commas; the first seals, every one opens. Rotate by putting a
///   new key first: the service re-seals every secret under it when it starts.
/// - `tool.masterKeyFile` (string, default `<home>/keys/tool-master-keys`): where the keys are
///   read from when `tool.masterKeys` is not set, one entry per line. The embedded mode creates it
///   with one key on first start; with a database URL the keys must be configured.
/// - `tool.outboundAllow` (string): comma-separated addresses, ranges (`10.0.0.0/8`,
///   `127.0.0.1:8080`) and host names that http tools may reach although they are not public.
///   Empty (the default): only public addresses.
/// - `tool.sandbox` (auto, bubblewrap or none; default auto): how python and node programs are
///   isolated; auto uses bubblewrap when it is installed.
/// - `tool.sandboxFirstUID` (int, default 1900000000): when the service runs as root, a program
///   runs as uid and gid `tool.sandboxFirstUID + n`, n its slot below `tool.maxConcurrentPrograms`,
///   so that each program's process limit counts its own processes only. The range must belong to
///   no user.
/// - `tool.pythonPath`, `tool.nodePath` (string): the interpreters (default `/usr/bin/python3`,
///   `/usr/bin/node`).
/// - `tool.maxConcurrentPrograms` (int, default 8): programs running at once; the others wait.
/// - `tool.invocationRetentionHours` (int, default 48, at least 24): how long a finished call's
///   idempotency key and result are kept.
/// - `tool.httpCAFile` (string): PEM certificates http and sql tools trust besides the system's.
/// - `tool.sqliteDirectories` (string): comma-separated directories whose SQLite files sql tools
///   may open (read-only). Empty (the default): none.
/// - `tool.chromiumPath` (string): the Chromium browser tools run (default `/usr/bin/chromium`
///   when installed).
/// - `tool.budgetHoldSeconds` (int, default 60, 1 to 3600): how long past a call's timeout the
///   reservation of a paid tool's cost holds, so that a tool service killed mid-call frees it.
/// - `tool.abandonGraceSeconds` (int, default 60, 1 to 3600): how long past a call's timeout a
///   call under an idempotency key still counts as running (on another replica, say); after it,
///   the call counts as lost: sent again, a side-effect-free call runs again, and a
///   non_idempotent one is refused as one that may have run.
public struct ToolServiceConfig: Sendable {
    public var outboundAllow: [String]
    public var sandbox: String
    public var sandboxFirstUID: Int
    public var pythonPath: String?
    public var nodePath: String?
    public var maxConcurrentPrograms: Int
    public var retentionHours: Int
    public var httpCAFile: String?
    public var sqliteDirectories: [String]
    public var chromiumPath: String?
    public var budgetHoldSeconds: Int
    public var abandonGraceSeconds: Int

    public init(config: ConfigReader) throws {
        self.outboundAllow = config.string(forKey: "tool.outboundAllow", default: "").split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        self.sandbox = config.string(forKey: "tool.sandbox", default: "auto")
        self.sandboxFirstUID = try config.integer(forKey: "tool.sandboxFirstUID", default: 1_900_000_000, in: 1...4_000_000_000)
        self.pythonPath = config.string(forKey: "tool.pythonPath")
        self.nodePath = config.string(forKey: "tool.nodePath")
        self.maxConcurrentPrograms = try config.integer(forKey: "tool.maxConcurrentPrograms", default: 8, in: 1...1024)
        self.retentionHours = try config.integer(forKey: "tool.invocationRetentionHours", default: 48, in: 24...100_000)
        self.httpCAFile = config.string(forKey: "tool.httpCAFile")
        self.sqliteDirectories = config.string(forKey: "tool.sqliteDirectories", default: "").split(separator: ",")
            .map { URL(filePath: $0.trimmingCharacters(in: .whitespaces)).standardizedFileURL.resolvingSymlinksInPath().path }
            .filter { $0.hasPrefix("/") && $0 != "/" }
        self.chromiumPath = config.string(forKey: "tool.chromiumPath")
        self.budgetHoldSeconds = try config.integer(forKey: "tool.budgetHoldSeconds", default: 60, in: 1...3600)
        self.abandonGraceSeconds = try config.integer(forKey: "tool.abandonGraceSeconds", default: 60, in: 1...3600)
    }
}

extension ToolService {
    /// Who may call what: the gateway everything (for users); the agent and run services invoke
    /// tools and read their definitions; only
    /// the agent service reads a secret (a model provider's API key).
    public static let allowlist = CallerAllowlist(
        methods: [
            "/sparkops.tool.v1.ToolService/InvokeTool": ["gateway", "agent", "run"],
            "/sparkops.tool.v1.ToolService/GetTool": ["gateway", "agent", "run", "workflow"],
            "/sparkops.tool.v1.ToolService/ListTools": ["gateway", "agent", "run", "workflow"],
            "/sparkops.tool.v1.ToolService/RevealSecret": ["agent"],
            "/sparkops.tool.v1.ToolService/ListToolFunctions": ["gateway", "agent", "run"],
        ],
        services: ["sparkops.tool.v1.ToolService": ["gateway"]],
        principalSetters: ["gateway", "agent", "run", "workflow"]
    )

    /// The tool service ready for the host: its store and migrations, its master keys, its
    /// executors, and its clients of the project service (roles, audit), the policy service
    /// (a decision before every call) and the budget service (each call's cost held before it).
    public static func definition(host: HostConfig, config: ConfigReader, logger: Logger) async throws -> ServiceDefinition {
        let settings = try ToolServiceConfig(config: config)
        let store = try SparkStore(service: "tool", location: host.storeLocation(), logger: logger)
        let peers = try PeerClients(caller: .tool, peers: [.project, .policy, .budget], config: host)
        let secrets = try SecretBox.load(config: config, host: host)
        let outbound: OutboundGuard
        do {
            outbound = try OutboundGuard(allowlist: settings.outboundAllow)
        } catch {
            throw SparkConfigurationError("tool.outboundAllow: \(error)")
        }
        let trustRoots = try settings.httpCAFile.map { path in
            do { return try String(contentsOfFile: path, encoding: .utf8) } catch { throw SparkConfigurationError("tool.httpCAFile: cannot read \(path)") }
        }
        let sandbox = try CodeSandbox.detect(
            sandbox: settings.sandbox, pythonPath: settings.pythonPath, nodePath: settings.nodePath,
            firstUID: settings.sandboxFirstUID, maxConcurrent: settings.maxConcurrentPrograms, logger: logger
        )
        var databaseTLS = TLSConfiguration.makeClientConfiguration()
        if let pem = trustRoots {
            databaseTLS.additionalTrustRoots = [.certificates(try NIOSSLCertificate.fromPEMBytes(Array(pem.utf8)))]
        }
        let runner = ToolRunner(
            sandbox: sandbox,
            http: try GuardedHTTPClient(outbound: outbound, extraTrustRootsPEM: trustRoots),
            sql: SQLRunner(outbound: outbound, sqliteDirectories: settings.sqliteDirectories, tls: databaseTLS),
            browser: BrowserRunner(chromium: BrowserRunner.find(settings.chromiumPath), sandbox: sandbox, outbound: outbound)
        )
        let service = ToolService(
            store: store, access: ProjectAccess(client: peers[.project]), secrets: secrets, runner: runner,
            policy: PolicyCheck(client: peers[.policy]), budget: BudgetSpend(client: peers[.budget], logger: logger),
            budgetHoldSeconds: settings.budgetHoldSeconds, abandonGraceSeconds: settings.abandonGraceSeconds, logger: logger
        )
        return ServiceDefinition(
            name: .tool,
            rpcServices: [service],
            allowlist: Self.allowlist,
            store: store,
            migrations: ToolMigrations.all,
            background: peers.services + [
                // Finished calls older than the retention are forgotten, every ten minutes.
                PeriodicJob("prune old tool calls", every: .seconds(600), logger: logger) {
                    let before = ToolStore.now() - Int64(settings.retentionHours) * 3_600_000_000
                    try await service.store.store.transaction { try await service.store.prune(before: before, on: $0) }
                },
            ],
            prepare: {
                let resealed = try await secrets.resealOldSecrets(in: service.store)
                if resealed > 0 {
                    logger.info("re-sealed secrets under the active master key", metadata: ["count": "\(resealed)", "key": "\(secrets.active.id)"])
                }
            },
            peersReady: { peers.allReady }
        )
    }
}
