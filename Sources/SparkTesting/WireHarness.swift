public import GRPCCore
public import NIOCore
public import NIOPosix
public import SparkProto
public import SparkWire

/// Runs a GRPCServer over SparkWire on a free loopback port for the duration of `body`.
public func withWireServer<Result: Sendable>(
    services: [any RegistrableRPCService],
    security: SparkWireSecurity,
    configure: (inout SparkWireServerTransport.Config) -> Void = { _ in },
    interceptors: [any ServerInterceptor] = [],
    eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
    _ body: (_ transport: SparkWireServerTransport, _ port: Int) async throws -> Result
) async throws -> Result {
    var config = SparkWireServerTransport.Config(host: "127.0.0.1", port: 0, security: security, methods: SparkProtoMethods.all)
    configure(&config)
    let transport = SparkWireServerTransport(config: config, eventLoopGroup: eventLoopGroup)
    return try await withGRPCServer(transport: transport, services: services, interceptors: interceptors) { _ in
        let port = try await transport.listeningAddress.port!
        return try await body(transport, port)
    }
}

/// Runs a GRPCClient over SparkWire to `endpoints` for the duration of `body`.
public func withWireClient<Result: Sendable>(
    endpoints: [SparkWireEndpoint],
    serverIdentity: String? = "echo",
    security: SparkWireSecurity,
    configure: (inout SparkWireClientTransport.Config) -> Void = { _ in },
    eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
    _ body: (_ client: GRPCClient<SparkWireClientTransport>, _ transport: SparkWireClientTransport) async throws -> Result
) async throws -> Result {
    var config = SparkWireClientTransport.Config(
        endpoints: endpoints,
        serverIdentity: serverIdentity,
        security: security,
        methods: SparkProtoMethods.all
    )
    configure(&config)
    let transport = try SparkWireClientTransport(config: config, eventLoopGroup: eventLoopGroup)
    return try await withGRPCClient(transport: transport) { client in
        try await body(client, transport)
    }
}

/// A client and server pair on loopback: the common shape of SparkWire tests.
public func withEchoPair<Result: Sendable>(
    certificates: TestCertificates,
    service: EchoService = EchoService(),
    configureServer: (inout SparkWireServerTransport.Config) -> Void = { _ in },
    configureClient: (inout SparkWireClientTransport.Config) -> Void = { _ in },
    interceptors: [any ServerInterceptor] = [],
    clientIdentity: String = "client",
    eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
    _ body: (_ echo: Sparkops_Testing_V1_EchoService.Client<SparkWireClientTransport>, _ server: SparkWireServerTransport, _ port: Int) async throws -> Result
) async throws -> Result {
    try await withWireServer(
        services: [service],
        security: certificates.security("echo"),
        configure: configureServer,
        interceptors: interceptors,
        eventLoopGroup: eventLoopGroup
    ) { server, port in
        try await withWireClient(
            endpoints: [SparkWireEndpoint(host: "127.0.0.1", port: port)],
            security: certificates.security(clientIdentity),
            configure: configureClient,
            eventLoopGroup: eventLoopGroup
        ) { client, _ in
            try await body(Sparkops_Testing_V1_EchoService.Client(wrapping: client), server, port)
        }
    }
}

/// How a test's unary calls travel: through GRPCCore's executors on both sides, or on SparkWire's
/// lean unary path on both sides.
public enum WirePath: String, CaseIterable, Sendable, CustomStringConvertible {
    case grpcCore
    case lean

    public var description: String { self.rawValue }
}

/// An echo client and server on loopback whose unary calls take `path`, with the same
/// interceptors on both paths (GRPCCore's for streaming calls too).
public func withEchoPair<Result: Sendable>(
    path: WirePath,
    certificates: TestCertificates,
    service: EchoService = EchoService(),
    interceptors: [any ServerInterceptor & SparkWireUnaryInterceptor] = [],
    clientIdentity: String = "client",
    configureClient: (inout SparkWireClientTransport.Config) -> Void = { _ in },
    _ body: (_ echo: any Sparkops_Testing_V1_EchoService.ClientProtocol, _ server: SparkWireServerTransport) async throws -> Result
) async throws -> Result {
    try await withWireServer(
        services: [service],
        security: certificates.security("echo"),
        configure: { config in
            if path == .lean {
                config.unaryMethods = SparkProtoMethods.unary(of: [service])
                config.unaryInterceptors = interceptors
            }
        },
        interceptors: interceptors
    ) { server, port in
        var config = SparkWireClientTransport.Config(
            endpoints: [SparkWireEndpoint(host: "127.0.0.1", port: port)],
            serverIdentity: "echo",
            security: certificates.security(clientIdentity),
            methods: SparkProtoMethods.all
        )
        configureClient(&config)
        let transport = try SparkWireClientTransport(config: config)
        switch path {
        case .grpcCore:
            return try await withGRPCClient(transport: transport) { client in
                try await body(Sparkops_Testing_V1_EchoService.Client(wrapping: client), server)
            }
        case .lean:
            let channel = SparkWireChannel(transport: transport)
            return try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await channel.runConnections() }
                defer { channel.beginGracefulShutdown() }
                return try await body(Sparkops_Testing_V1_EchoService.SparkWireClient(wrapping: channel), server)
            }
        }
    }
}
