public import GRPCCore
public import ServiceLifecycle
public import SparkWire

/// A GRPCServer as a lifecycle `Service`: serves until graceful shutdown, then lets calls in
/// flight finish (the transport's grace period bounds how long).
public struct GRPCServerService<Transport: ServerTransport>: ServiceLifecycle.Service {
    public let server: GRPCServer<Transport>

    public init(_ server: GRPCServer<Transport>) {
        self.server = server
    }

    public func run() async throws {
        try await withGracefulShutdownHandler {
            try await self.server.serve()
        } onGracefulShutdown: {
            self.server.beginGracefulShutdown()
        }
    }
}

/// A GRPCClient's connections as a lifecycle `Service`.
public struct GRPCClientService<Transport: ClientTransport>: ServiceLifecycle.Service {
    public let client: GRPCClient<Transport>

    public init(_ client: GRPCClient<Transport>) {
        self.client = client
    }

    public func run() async throws {
        try await withGracefulShutdownHandler {
            try await self.client.runConnections()
        } onGracefulShutdown: {
            self.client.beginGracefulShutdown()
        }
    }
}

/// SparkWire clients to the other services, one per peer, made on first use.
public final class PeerClients: Sendable {
    public let clients: [ServiceName: GRPCClient<SparkWireClientTransport>]
    private let transports: [ServiceName: SparkWireClientTransport]

    /// Whether every peer has a connection ready for calls.
    public var allReady: Bool { self.transports.values.allSatisfy(\.hasReadyConnection) }

    /// Whether `peer` has a connection ready for calls.
    public func isReady(_ peer: ServiceName) -> Bool { self.transports[peer]?.hasReadyConnection ?? false }

    /// - Parameters:
    ///   - caller: the calling service, whose certificate the clients present.
    ///   - peers: the services it calls.
    public init(caller: ServiceName, peers: [ServiceName], config: HostConfig) throws {
        var clients: [ServiceName: GRPCClient<SparkWireClientTransport>] = [:]
        var transports: [ServiceName: SparkWireClientTransport] = [:]
        for peer in peers {
            let transport = try SparkWireClientTransport(config: .init(
                endpoints: config.listener(peer).address,
                serverIdentity: peer.rawValue,
                security: .mutualTLS(config.credentials(caller)),
                methods: SparkProtoMethods.all
            ))
            clients[peer] = GRPCClient(transport: transport)
            transports[peer] = transport
        }
        self.clients = clients
        self.transports = transports
    }

    public subscript(peer: ServiceName) -> GRPCClient<SparkWireClientTransport> {
        guard let client = self.clients[peer] else {
            preconditionFailure("no client was configured for \(peer.rawValue)")
        }
        return client
    }

    /// The clients' connection loops, to run in the service group.
    public var services: [any ServiceLifecycle.Service] {
        self.clients.values.map { GRPCClientService($0) }
    }
}

import SparkProto
