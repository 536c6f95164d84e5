public import Configuration
import Foundation
public import SparkWire

/// What every service process shares: where its data and certificates are, what it listens on,
/// and where its peers are.
///
/// ## Configuration keys
/// - `home` (string, default `./.sparkops`): data, certificates and config of the embedded mode.
/// - `certs.directory` (string, default `<home>/certs`): the directory `sparkops certs init` wrote.
/// - `database.url` (string, optional, secret): `postgres://user:password@host:port/database`;
///   unset, each service uses `<home>/data/<service>.sqlite`.
/// - `database.maxConnections` (int, default 20), `database.minConnections` (int, default 0, at most
///   the maximum), `database.keepAliveSeconds` (int, default 30, 0 turns keep-alive off): each
///   store's PostgreSQL pool.
/// - `redis.url` (string, optional, secret): `redis://host:port/db`; unset, no Redis.
/// - `redis.keyPrefix` (string, default `sparkops`): namespace of SparkOps keys in Redis.
/// - `<service>.host` (string, default `127.0.0.1`): address the service's listeners bind.
/// - `<service>.port` (int, default 7001 for project … 7008 for scheduler): SparkWire port.
/// - `<service>.adminPort` (int, default SparkWire port + 2000): `/healthz`, `/readyz`, `/metrics`.
/// - `<service>.grpcPort` (int, optional): also serve standard gRPC (HTTP/2, mTLS) on this port.
/// - `<service>.address` (string, default `127.0.0.1:<port>`): where peers reach the service;
///   several `host:port` comma-separated for replicas.
/// - `wire.leanUnary` (bool, default true): serve and send unary calls on SparkWire's lean path;
///   false sends them through GRPCCore's executors, as before the lean path existed.
/// - `log.level` (string, default `info`): `trace`, `debug`, `info`, `notice`, `warning`, `error`.
public struct HostConfig: Sendable {
    public var home: String
    public var certificateDirectory: String
    public var databaseURL: String?
    /// PostgreSQL connections each service's store may hold (`database.maxConnections`).
    public var databaseMaxConnections: Int
    /// How each store keeps idle PostgreSQL connections (`database.minConnections`,
    /// `database.keepAliveSeconds`).
    public var databasePool: SparkStore.PostgresPool
    public var redisURL: String?
    public var logLevel: String
    /// Whether unary calls take SparkWire's lean path (`wire.leanUnary`).
    public var leanUnary: Bool
    private var services: [ServiceName: Listener]

    public struct Listener: Sendable {
        public var host: String
        public var port: Int
        public var adminPort: Int
        public var grpcPort: Int?
        public var address: [SparkWireEndpoint]
    }

    public init(config: ConfigReader) throws {
        self.home = config.string(forKey: "home", default: "./.sparkops")
        self.certificateDirectory = config.string(forKey: "certs.directory", default: "\(self.home)/certs")
        self.databaseURL = config.string(forKey: "database.url", isSecret: true)
        self.databaseMaxConnections = try config.integer(forKey: "database.maxConnections", default: 20, in: 1...1000)
        let minConnections = try config.integer(forKey: "database.minConnections", default: 0, in: 0...1000)
        guard minConnections <= self.databaseMaxConnections else {
            throw SparkConfigurationError(
                "database.minConnections (\(SparkConfiguration.environmentName("database.minConnections"))) must not exceed database.maxConnections (\(self.databaseMaxConnections)), not \(minConnections)"
            )
        }
        let keepAliveSeconds = try config.integer(forKey: "database.keepAliveSeconds", default: 30, in: 0...86_400)
        self.databasePool = SparkStore.PostgresPool(
            minConnections: minConnections,
            keepAlive: keepAliveSeconds == 0 ? nil : .seconds(keepAliveSeconds)
        )
        self.redisURL = config.string(forKey: "redis.url", isSecret: true)
        self.logLevel = config.string(forKey: "log.level", default: "info")
        self.leanUnary = config.bool(forKey: "wire.leanUnary", default: true)
        var services: [ServiceName: Listener] = [:]
        for name in ServiceName.allCases {
            let scoped = config.scoped(to: ConfigKey(name.rawValue))
            let port = try config.integer(forKey: "\(name.rawValue).port", default: name.defaultWirePort, in: ConfigReader.portRange)
            let addressText = scoped.string(forKey: "address", default: "127.0.0.1:\(port)")
            let address: [SparkWireEndpoint]
            do {
                address = try SparkWireEndpoint.parseList(addressText)
            } catch {
                throw SparkConfigurationError("\(name.rawValue).address (SPARKOPS_\(name.rawValue.uppercased())_ADDRESS): \(error)")
            }
            services[name] = Listener(
                host: scoped.string(forKey: "host", default: "127.0.0.1"),
                port: port,
                adminPort: try config.integer(forKey: "\(name.rawValue).adminPort", default: port + 2000, in: ConfigReader.portRange),
                grpcPort: try config.integer(forKey: "\(name.rawValue).grpcPort"),
                address: address
            )
        }
        self.services = services
    }

    public func listener(_ service: ServiceName) -> Listener {
        self.services[service]!
    }

    public mutating func setListener(_ listener: Listener, for service: ServiceName) {
        self.services[service] = listener
    }

    /// Where the service's SQLite file lives, or the PostgreSQL URL.
    public func storeLocation() -> SparkStore.Location {
        if let url = self.databaseURL, !url.isEmpty {
            return .postgres(url: url, maxConnections: self.databaseMaxConnections, pool: self.databasePool)
        }
        return .sqlite(directory: "\(self.home)/data")
    }

    /// The credentials a service presents.
    public func credentials(_ service: ServiceName) -> SparkWireCredentials {
        .directory(self.certificateDirectory, service: service.rawValue)
    }
}
