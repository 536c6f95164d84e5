public import Configuration
import Foundation
public import GRPCCore
import HTTPTypes
public import Hummingbird
import HummingbirdCore
import HummingbirdWebSocket
public import Logging
import NIOCore
public import ServiceLifecycle
public import SparkKit
import SparkProto
public import SparkWire

/// The HTTP/JSON and WebSocket edge of SparkOps (Hummingbird 2).
///
/// Routes come from the protos' `(sparkops.api.v1.http)` options (`SparkHTTPRoute.all`); each
/// authenticates the caller, checks its permission and calls the owning service over SparkWire.
/// It also serves `/api/v1/openapi.json`, WebSocket tickets and `/api/v1/ws`.
public enum Gateway {
    /// Everything the gateway runs: its HTTP listener, its admin listener, its SparkWire clients
    /// and, with `redis.url`, its Redis client.
    public static func services(host: HostConfig, config: ConfigReader, logger: Logger) async throws -> [any ServiceLifecycle.Service] {
        var logger = logger
        logger[metadataKey: "service"] = "gateway"
        let gatewayConfig = try GatewayConfig(config: config)
        // Every available service behind the gateway; it is ready once connected to all of them.
        let peers = try PeerClients(caller: .gateway, peers: ServiceName.available.filter { $0 != .gateway }, config: host)
        var services: [any ServiceLifecycle.Service] = peers.services
        let limiter: any RateLimiter
        let tickets: any TicketStore
        if let url = host.redisURL, !url.isEmpty {
            let redis = try RedisClient(url: url, logger: logger)
            services.append(redis)
            let prefix = config.string(forKey: "redis.keyPrefix", default: "sparkops")
            limiter = RedisRateLimiter(redis: redis, prefix: prefix, logger: logger)
            tickets = RedisTicketStore(redis: redis, prefix: prefix, logger: logger)
        } else {
            limiter = InMemoryRateLimiter()
            tickets = InMemoryTicketStore()
        }
        let clients = Dictionary(uniqueKeysWithValues: peers.channels.map { ($0.key.rawValue, $0.value) })
        let auditor = GatewayAuditor(client: clients["project"]!, interval: gatewayConfig.denialAuditInterval, logger: logger)
        services.append(auditor)
        let sockets = OpenWebSockets()
        services.append(Self.application(clients: clients, limiter: limiter, tickets: tickets, auditor: auditor, sockets: sockets, config: gatewayConfig, logger: logger))
        // After the server, so that it stops first: open WebSockets are closed before the server
        // waits for its connections.
        services.append(WebSocketDrain(sockets: sockets, drain: gatewayConfig.drain))
        services.append(AdminServer.application(service: .gateway, host: gatewayConfig.host, port: gatewayConfig.adminPort, ready: { peers.allReady }, logger: logger))
        return services
    }

    /// The HTTP application, over the given service clients (by service name: `project`, …).
    public static func application(
        clients: [String: SparkWireChannel],
        redis: RedisClient? = nil,
        config: GatewayConfig,
        logger: Logger,
        onServerRunning: @escaping @Sendable (Int) async -> Void = { _ in }
    ) -> some ApplicationProtocol {
        let limiter: any RateLimiter = redis.map { RedisRateLimiter(redis: $0) } ?? InMemoryRateLimiter()
        let tickets: any TicketStore = redis.map { RedisTicketStore(redis: $0, prefix: "sparkops") } ?? InMemoryTicketStore()
        let auditor = GatewayAuditor(client: clients["project"]!, interval: config.denialAuditInterval, logger: logger)
        return Self.application(clients: clients, limiter: limiter, tickets: tickets, auditor: auditor, sockets: OpenWebSockets(), config: config, logger: logger, onServerRunning: onServerRunning)
    }

    static func application(
        clients: [String: SparkWireChannel],
        limiter: any RateLimiter,
        tickets: any TicketStore,
        auditor: GatewayAuditor,
        sockets: OpenWebSockets,
        config: GatewayConfig,
        logger: Logger,
        onServerRunning: @escaping @Sendable (Int) async -> Void = { _ in }
    ) -> some ApplicationProtocol {
        GatewayRequestContext.maxBodyBytes = config.maxBodyBytes
        let authenticator = Authenticator(client: clients["project"]!, callTimeout: config.callTimeout, logger: logger)
        let webSockets = WebSocketGateway(authenticator: authenticator, tickets: tickets, runs: clients["run"], sockets: sockets, config: config, logger: logger)
        let routes = SparkHTTPRoute.all.filter { clients[$0.service] != nil }
        let methods = RouteMethods(
            routes.map { ($0.path, $0.verb.rawValue, true) }
                + [("/api/v1/openapi.json", "GET", false), ("/api/v1/ws/tickets", "POST", false), ("/api/v1/ws", "GET", false)]
        )

        // HEAD is answered wherever GET is, with the GET's headers and no body.
        let router = Router(context: GatewayRequestContext.self, options: .autoGenerateHeadEndpoints)
        // hb_requests_total / hb_request_duration_seconds / hb_request_errors by method, route and status.
        router.add(middleware: MetricsMiddleware())
        router.add(middleware: RequestMiddleware(config: config, limiter: limiter, logger: logger, methods: methods))
        router.add(middleware: CORSAllowlistMiddleware(origins: config.corsOrigins))
        for route in routes {
            guard let client = clients[route.service] else { continue }
            let dispatcher = RouteDispatcher(route: route, client: client, authenticator: authenticator, limiter: limiter, auditor: auditor, config: config, logger: logger)
            router.on(RouterPath(route.path), method: HTTPRequest.Method(rawValue: route.verb.rawValue)!) { request, context in
                try await dispatcher.handle(request, context: context)
            }
        }
        router.get("/api/v1/openapi.json") { _, _ in
            Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: SparkOpenAPI.json)))
        }
        router.post("/api/v1/ws/tickets") { request, context in
            try await webSockets.issueTicket(request, context: context)
        }

        let webSocketRouter = Router(context: GatewayRequestContext.self)
        webSocketRouter.add(middleware: RequestMiddleware(config: config, limiter: limiter, logger: logger, methods: methods))
        // Every handshake upgrades; `run` refuses bad ones with an error message the client can read.
        webSocketRouter.ws("/api/v1/ws") { inbound, outbound, context in
            try await webSockets.run(inbound: inbound, outbound: outbound, request: context.request)
        }

        // Hummingbird's idle timeout between requests, ours before the first (ConnectionGuard), and
        // WebSocket pings often enough that an idle socket whose client answers them stays open.
        let idle = TimeAmount.seconds(config.idleTimeout.components.seconds)
        let webSocketResponder = webSocketRouter.buildResponder()
        let webSocketConfiguration = WebSocketServerConfiguration(
            autoPing: .enabled(timePeriod: min(.seconds(30), config.idleTimeout / 2)),
            closeTimeout: .seconds(5)
        )
        let server = HTTPServerBuilder { responder in
            GuardedHTTPChannel(
                inner: HTTP1WebSocketUpgradeChannel(
                    responder: responder,
                    webSocketResponder: webSocketResponder,
                    configuration: .init(http1: .init(idleTimeout: idle), ws: webSocketConfiguration)
                ),
                firstRequestTimeout: config.idleTimeout
            )
        }
        return Application(
            router: router,
            server: server,
            configuration: .init(address: .hostname(config.host, port: config.port), serverName: "sparkops-gateway"),
            onServerRunning: { channel in await onServerRunning(channel.localAddress?.port ?? 0) },
            logger: logger
        )
    }
}
