public import Configuration
import SparkKit

/// Settings of the HTTP gateway.
///
/// ## Configuration keys
/// - `gateway.host` (string, default `127.0.0.1`; `0.0.0.0` for every interface).
/// - `gateway.port` (int, default 8000): the HTTP/JSON and WebSocket port (`SPARKOPS_GATEWAY_PORT`).
/// - `gateway.adminPort` (int, default `gateway.port` + 1000, so 9000; `gateway.port` − 1000 when
///   that is above 65535): `/healthz`, `/readyz`, `/metrics`.
/// - `gateway.corsOrigins` (strings, default `http://localhost:8000,http://127.0.0.1:8000`): origins
///   browsers may call from; WebSocket handshakes from other origins are refused.
/// - `gateway.maxBodyBytes` (int, default 1048576): larger request bodies get 413.
/// - `gateway.rateLimit.principalPerMinute` (int, default 6000) and `.principalBurst` (default 600).
/// - `gateway.rateLimit.ipPerMinute` (int, default 12000) and `.ipBurst` (default 1200).
/// - `gateway.rateLimit.authPerMinute` (int, default 30) and `.authBurst` (default 10): login and
///   refresh, per IP.
/// - `gateway.trustedProxies` (strings, default none): peers whose `X-Forwarded-For` names the client.
/// - `gateway.callTimeoutSeconds` (int, default 30): deadline of each call to a service.
/// - `gateway.webSocketAuthTimeoutSeconds` (int, default 10): a WebSocket that has not
///   authenticated (ticket or first message) within this time is closed.
/// - `gateway.webSocketRecheckSeconds` (int, default 5): how often an open WebSocket checks that
///   its session, its API key and its membership of each subscribed project still hold; it is
///   closed (1008) within this bound of a logout, a revocation or a removal.
/// - `gateway.drainSeconds` (int, default 10): on SIGTERM or SIGINT, each open WebSocket is sent a
///   going-away close (1001) and may take this long to answer it before it is cut; requests in
///   flight finish.
/// - `gateway.idleTimeoutSeconds` (int, default 60): a connection that sends nothing for this long
///   (before its first request, between requests, or in the middle of one) is closed.
/// - `gateway.hstsMaxAgeSeconds` (int, default 0: off): set when the gateway is reached over HTTPS
///   (a TLS-terminating proxy in front of it); every response then carries
///   `Strict-Transport-Security: max-age=…; includeSubDomains`.
/// - `gateway.denialAuditSeconds` (int, default 60): refused requests (401, 403, 404 to a
///   non-member) are audited once per caller, route and status in each such interval, then as
///   one count of the rest.
public struct GatewayConfig: Sendable {
    public struct Limit: Sendable, Hashable {
        public var perMinute: Int
        public var burst: Int

        public init(perMinute: Int, burst: Int) {
            self.perMinute = perMinute
            self.burst = burst
        }
    }

    public var host: String
    public var port: Int
    public var adminPort: Int
    public var corsOrigins: Set<String>
    public var maxBodyBytes: Int
    public var principalLimit: Limit
    public var ipLimit: Limit
    public var authLimit: Limit
    public var trustedProxies: Set<String>
    public var callTimeout: Duration
    public var webSocketAuthTimeout: Duration
    public var webSocketRecheck: Duration
    public var drain: Duration
    public var idleTimeout: Duration
    public var hstsMaxAge: Int
    public var denialAuditInterval: Int

    public init(
        host: String = "127.0.0.1",
        port: Int = 8000,
        adminPort: Int = 9000,
        corsOrigins: Set<String> = ["http://localhost:8000", "http://127.0.0.1:8000"],
        maxBodyBytes: Int = 1 << 20,
        principalLimit: Limit = Limit(perMinute: 6000, burst: 600),
        ipLimit: Limit = Limit(perMinute: 12000, burst: 1200),
        authLimit: Limit = Limit(perMinute: 30, burst: 10),
        trustedProxies: Set<String> = [],
        callTimeout: Duration = .seconds(30),
        webSocketAuthTimeout: Duration = .seconds(10),
        webSocketRecheck: Duration = .seconds(5),
        drain: Duration = .seconds(10),
        idleTimeout: Duration = .seconds(60),
        hstsMaxAge: Int = 0,
        denialAuditInterval: Int = 60
    ) {
        self.host = host
        self.port = port
        self.adminPort = adminPort
        self.corsOrigins = corsOrigins
        self.maxBodyBytes = maxBodyBytes
        self.principalLimit = principalLimit
        self.ipLimit = ipLimit
        self.authLimit = authLimit
        self.trustedProxies = trustedProxies
        self.callTimeout = callTimeout
        self.webSocketAuthTimeout = webSocketAuthTimeout
        self.webSocketRecheck = webSocketRecheck
        self.drain = drain
        self.idleTimeout = idleTimeout
        self.hstsMaxAge = hstsMaxAge
        self.denialAuditInterval = denialAuditInterval
    }

    /// The admin port beside an API port: 1000 above it (8000 → 9000), or 1000 below near the top.
    static func defaultAdminPort(apiPort port: Int) -> Int {
        if port == 0 { return 0 }
        return port + 1000 <= 65535 ? port + 1000 : port - 1000
    }

    public init(config: ConfigReader) throws {
        let defaults = GatewayConfig()
        let port = try config.integer(forKey: "gateway.port", default: defaults.port, in: ConfigReader.portRange)
        self.init(
            host: config.string(forKey: "gateway.host", default: defaults.host),
            port: port,
            adminPort: try config.integer(forKey: "gateway.adminPort", default: Self.defaultAdminPort(apiPort: port), in: ConfigReader.portRange),
            corsOrigins: Set(config.stringArray(forKey: "gateway.corsOrigins", default: ["http://localhost:\(port)", "http://127.0.0.1:\(port)"])),
            maxBodyBytes: try config.integer(forKey: "gateway.maxBodyBytes", default: defaults.maxBodyBytes, in: 1...Int(Int32.max)),
            principalLimit: Limit(
                perMinute: try config.integer(forKey: "gateway.rateLimit.principalPerMinute", default: defaults.principalLimit.perMinute, in: 1...Int(Int32.max)),
                burst: try config.integer(forKey: "gateway.rateLimit.principalBurst", default: defaults.principalLimit.burst, in: 1...Int(Int32.max))
            ),
            ipLimit: Limit(
                perMinute: try config.integer(forKey: "gateway.rateLimit.ipPerMinute", default: defaults.ipLimit.perMinute, in: 1...Int(Int32.max)),
                burst: try config.integer(forKey: "gateway.rateLimit.ipBurst", default: defaults.ipLimit.burst, in: 1...Int(Int32.max))
            ),
            authLimit: Limit(
                perMinute: try config.integer(forKey: "gateway.rateLimit.authPerMinute", default: defaults.authLimit.perMinute, in: 1...Int(Int32.max)),
                burst: try config.integer(forKey: "gateway.rateLimit.authBurst", default: defaults.authLimit.burst, in: 1...Int(Int32.max))
            ),
            trustedProxies: Set(config.stringArray(forKey: "gateway.trustedProxies", default: [])),
            callTimeout: .seconds(try config.integer(forKey: "gateway.callTimeoutSeconds", default: 30, in: 1...Int(Int32.max))),
            webSocketAuthTimeout: .seconds(try config.integer(forKey: "gateway.webSocketAuthTimeoutSeconds", default: 10, in: 1...Int(Int32.max))),
            webSocketRecheck: .seconds(try config.integer(forKey: "gateway.webSocketRecheckSeconds", default: 5, in: 1...3600)),
            drain: .seconds(try config.integer(forKey: "gateway.drainSeconds", default: 10, in: 0...3600)),
            idleTimeout: .seconds(try config.integer(forKey: "gateway.idleTimeoutSeconds", default: 60, in: 1...86_400)),
            hstsMaxAge: try config.integer(forKey: "gateway.hstsMaxAgeSeconds", default: 0, in: 0...Int(Int32.max)),
            denialAuditInterval: try config.integer(forKey: "gateway.denialAuditSeconds", default: 60, in: 1...3600)
        )
    }
}
