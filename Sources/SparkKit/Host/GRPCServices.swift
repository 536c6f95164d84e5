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

/// SparkWire clients to the other services, one per peer. Generated `SparkWireClient`s wrap the
/// channels: unary calls take SparkWire's lean path, streaming calls go through GRPCCore.
public final class PeerClients: Sendable {
    public let channels: [ServiceName: SparkWireChannel]

    /// Whether every peer has a connection ready for calls.
    public var allReady: Bool { self.channels.values.allSatisfy(\.transport.hasReadyConnection) }

    /// Whether `peer` has a connection ready for calls.
    public func isReady(_ peer: ServiceName) -> Bool { self.channels[peer]?.transport.hasReadyConnection ?? false }

    /// - Parameters:
    ///   - caller: the calling service, whose certificate the clients present.
    ///   - peers: the services it calls.
    public init(caller: ServiceName, peers: [ServiceName], config: HostConfig) throws {
        var channels: [ServiceName: SparkWireChannel] = [:]
        for peer in peers {
            let transport = try SparkWireClientTransport(config: .init(
                endpoints: config.listener(peer).address,
                serverIdentity: peer.rawValue,
                security: .mutualTLS(config.credentials(caller)),
                methods: SparkProtoMethods.all
            ))
            channels[peer] = SparkWireChannel(transport: transport, leanUnary: config.leanUnary)
        }
        self.channels = channels
    }

    public subscript(peer: ServiceName) -> SparkWireChannel {
        guard let channel = self.channels[peer] else {
            preconditionFailure("no client was configured for \(peer.rawValue)")
        }
        return channel
    }

    /// The clients' connection loops, to run in the service group.
    public var services: [any ServiceLifecycle.Service] {
        self.channels.values.map { GRPCClientService($0.grpc) }
    }
}

import SparkProto
