public import Configuration
import Foundation
public import Logging
import ServiceLifecycle
import Synchronization
public import SparkKit
import SparkProto
public import SparkWire

/// Settings of the run service.
///
/// ## Configuration keys
/// - `run.mode` (string, default `both`): `api` serves the RPCs only, `workers` runs the workers
///   only, `both` does both. Workers scale out apart from the API this way.
/// - `run.workers` (int, default 16): how many attempts a replica's workers run at once.
/// - `run.leaseSeconds` (int, default 30): how long a claim holds without a heartbeat; a worker
///   heartbeats every third of it. A task whose lease expired is claimed again by any replica.
/// - `run.claimIntervalMilliseconds` (int, default 1000): the longest a worker waits between
///   claims when nothing woke it (leases that expired, timers that came due, other replicas).
/// - `run.takeOver` (bool, default true): the worker whose commit dispatches a step starts it
///   itself, in that commit, instead of queuing it for the next claim (docs/runs.md, Workers).
/// - `run.drainSeconds` (int, default 20): at graceful shutdown, how long attempts in flight may
///   finish before their tasks are handed back.
/// - `run.defaultStepTimeoutSeconds` (int, default 600): the deadline of a step's call when the
///   step sets no `timeout`.
/// - `run.idempotencyHours` (int, default 48): how long a run's idempotency key is kept (at least 24).
/// - `run.watchIntervalMilliseconds` (int, default 500): how often a watch reads events that
///   other replicas committed.
/// - `run.envelopeTTLSeconds` (int, default 86400): the longest a run's estimated cost is held on
///   its budgets (less for a workflow with a shorter `timeout`); at most the budget service's
///   `budget.maxReservationTTLSeconds`. A run that goes on longer draws nothing more from it.
public struct RunServiceConfig: Sendable {
    public enum Mode: String, Sendable {
        case api, workers, both
    }

    var mode: Mode
    var workers: Int
    var leaseSeconds: Int
    var claimInterval: Duration
    var drainSeconds: Int
    var takeOver: Bool
    var defaultStepTimeout: Duration
    var idempotencyHours: Int
    var watchInterval: Duration
    var envelopeTTLSeconds: Int

    public init(config: ConfigReader) throws {
        let mode = config.string(forKey: "run.mode", default: "both")
        guard let parsed = Mode(rawValue: mode) else {
            throw SparkConfigurationError("run.mode: \(mode.debugDescription) is not api, workers or both")
        }
        self.mode = parsed
        self.workers = try config.integer(forKey: "run.workers", default: 16, in: 1...1024)
        self.leaseSeconds = try config.integer(forKey: "run.leaseSeconds", default: 30, in: 2...3600)
        self.claimInterval = .milliseconds(try config.integer(forKey: "run.claimIntervalMilliseconds", default: 1000, in: 10...60_000))
        self.drainSeconds = try config.integer(forKey: "run.drainSeconds", default: 20, in: 0...3600)
        self.takeOver = config.bool(forKey: "run.takeOver", default: true)
        self.defaultStepTimeout = .seconds(try config.integer(forKey: "run.defaultStepTimeoutSeconds", default: 600, in: 1...2_592_000))
        self.idempotencyHours = try config.integer(forKey: "run.idempotencyHours", default: 48, in: 24...8760)
        self.watchInterval = .milliseconds(try config.integer(forKey: "run.watchIntervalMilliseconds", default: 500, in: 10...60_000))
        self.envelopeTTLSeconds = try config.integer(forKey: "run.envelopeTTLSeconds", default: 86_400, in: 60...2_592_000)
    }
}

extension RunService {
    /// Who may call what: the gateway everything (for users); the scheduler starts runs.
    public static let allowlist = CallerAllowlist(
        methods: [
            "/sparkops.run.v1.RunService/CreateRun": ["gateway", "scheduler"],
        ],
        services: ["sparkops.run.v1.RunService": ["gateway"]],
        principalSetters: ["gateway", "scheduler"]
    )

    /// The run service ready for the host: its store and migrations (runs, events, approvals,
    /// the task queue), its clients of the project, workflow, policy, tool, agent and budget services,
    /// its workers (unless `run.mode=api`) and the pruner of old idempotency keys.
    public static func definition(host: HostConfig, config: ConfigReader, logger: Logger) async throws -> ServiceDefinition {
        let settings = try RunServiceConfig(config: config)
        let store = try SparkStore(service: "run", location: host.storeLocation(), logger: logger)
        let peers = try PeerClients(caller: .run, peers: [.project, .workflow, .policy, .tool, .agent, .budget], config: host)
        let signals = RunSignals()
        // With Redis, commits reach the other replicas' workers and watchers through it.
        var relay: RunRelay?
        if let url = host.redisURL, !url.isEmpty {
            relay = RunRelay(redis: try RedisClient(url: url, logger: logger), prefix: config.string(forKey: "redis.keyPrefix", default: "sparkops"), signals: signals, logger: logger)
        }
        let engine = RunEngine(store: RunStore(store: store), signals: signals, relay: relay, logger: logger)
        let policy = PolicyCheck(client: peers[.policy])
        let envelopes = RunEnvelopes(budgets: .init(wrapping: peers[.budget]), ttlSeconds: settings.envelopeTTLSeconds, logger: logger)
        let service = RunService(
            engine: engine, access: ProjectAccess(client: peers[.project]), policy: policy, workflows: peers[.workflow], envelopes: envelopes,
            settings: settings, logger: logger
        )
        // Idempotency keys older than run.idempotencyHours are forgotten, every ten minutes.
        let pruner = PeriodicJob("prune old idempotency keys", every: .seconds(600), logger: logger) {
            let before = RunStore.now() - Int64(settings.idempotencyHours) * 3_600_000_000
            try await engine.store.store.transaction { try await engine.store.pruneKeys(before: before, on: $0) }
        }
        var background: [any ServiceLifecycle.Service] = peers.services + [pruner, RunListener(store: engine.store, signals: engine.signals, logger: logger)]
        if let relay { background += [relay.redis, relay] }
        let calls = StepCalls(
            tools: .init(wrapping: peers[.tool]), agents: .init(wrapping: peers[.agent]), policy: policy,
            defaultTimeout: settings.defaultStepTimeout, logger: logger
        )
        let workers = settings.mode == .api ? nil : RunWorkers(engine: engine, calls: calls, envelopes: envelopes, settings: settings, logger: logger)
        if let workers { background.append(workers) }
        return ServiceDefinition(
            name: .run,
            rpcServices: settings.mode == .workers ? [] : [service],
            allowlist: Self.allowlist,
            store: store,
            migrations: RunStore.migrations,
            background: background,
            prepare: { workers?.migrated.store(true, ordering: .releasing) },
            peersReady: { peers.allReady }
        )
    }
}
