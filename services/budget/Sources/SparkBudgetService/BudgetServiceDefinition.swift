public import Configuration
import Foundation
public import Logging
import ServiceLifecycle
public import SparkKit
public import SparkWire

/// Settings of the budget service.
///
/// ## Configuration keys
/// - `budget.timeZone` (string, default `UTC`): the IANA time zone in which day and month
///   periods begin and end.
/// - `budget.reservationTTLSeconds` (int, default 600): how long a reservation holds when the
///   caller names no time to live; then it expires and its amount returns.
/// - `budget.maxReservationTTLSeconds` (int, default 86400): the longest time to live a caller may ask.
/// - `budget.sweepIntervalSeconds` (int, default 5): how often each replica gives back the
///   amounts of expired reservations.
public struct BudgetServiceConfig: Sendable {
    var timeZone: TimeZone
    var defaultTTLSeconds: Int
    var maxTTLSeconds: Int
    var sweepIntervalSeconds: Int

    public init(config: ConfigReader) throws {
        let zone = config.string(forKey: "budget.timeZone", default: "UTC")
        guard let timeZone = TimeZone(identifier: zone) else {
            throw SparkConfigurationError("budget.timeZone: \(zone.debugDescription) is not an IANA time zone, such as UTC or Europe/Paris")
        }
        self.timeZone = timeZone
        self.maxTTLSeconds = try config.integer(forKey: "budget.maxReservationTTLSeconds", default: 86_400, in: 1...2_592_000)
        self.defaultTTLSeconds = try config.integer(forKey: "budget.reservationTTLSeconds", default: 600, in: 1...self.maxTTLSeconds)
        self.sweepIntervalSeconds = try config.integer(forKey: "budget.sweepIntervalSeconds", default: 5, in: 1...3600)
    }
}

extension BudgetService {
    /// Who may call what: the gateway everything (for users); the services that spend reserve,
    /// settle and release, and the policy service reads budgets for its rules.
    public static let allowlist = CallerAllowlist(
        methods: [
            "/sparkops.budget.v1.BudgetService/Reserve": ["gateway", "agent", "tool", "run"],
            "/sparkops.budget.v1.BudgetService/Settle": ["gateway", "agent", "tool", "run"],
            "/sparkops.budget.v1.BudgetService/Release": ["gateway", "agent", "tool", "run"],
            "/sparkops.budget.v1.BudgetService/GetBudget": ["gateway", "policy", "run"],
            "/sparkops.budget.v1.BudgetService/ListBudgets": ["gateway", "policy", "run"],
        ],
        services: ["sparkops.budget.v1.BudgetService": ["gateway"]],
        principalSetters: ["gateway", "agent", "tool", "run", "policy"]
    )

    /// The budget service ready for the host: its store and migrations, its client of the project
    /// service (roles, audit), and the sweeper that expires forgotten reservations.
    public static func definition(host: HostConfig, config: ConfigReader, logger: Logger) async throws -> ServiceDefinition {
        let settings = try BudgetServiceConfig(config: config)
        let store = try SparkStore(service: "budget", location: host.storeLocation(), logger: logger)
        let peers = try PeerClients(caller: .budget, peers: [.project], config: host)
        let service = BudgetService(store: store, access: ProjectAccess(client: peers[.project]), settings: settings, logger: logger)
        return ServiceDefinition(
            name: .budget,
            rpcServices: [service],
            allowlist: Self.allowlist,
            store: store,
            migrations: BudgetStore.migrations,
            background: peers.services + [ReservationSweeper(service: service, interval: settings.sweepIntervalSeconds, logger: logger)],
            peersReady: { peers.allReady }
        )
    }
}

/// Expires forgotten reservations every few seconds, so that a caller that died between reserve
/// and settle holds its amount for its time to live only.
struct ReservationSweeper: ServiceLifecycle.Service {
    let service: BudgetService
    let interval: Int
    let logger: Logger

    func run() async throws {
        await cancelWhenGracefulShutdown {
            var failing = false
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(self.interval))
                guard !Task.isCancelled else { return }
                do {
                    // Batches of 500 until none is due.
                    while try await self.service.expireDue(limit: 500) == 500, !Task.isCancelled {}
                    failing = false
                } catch {
                    // Before the migrations ran, or while the database is away: say so once.
                    if !failing { self.logger.warning("could not expire reservations", metadata: ["error": "\(String(reflecting: error).prefix(1000))"]) }
                    failing = true
                }
            }
        }
    }
}
