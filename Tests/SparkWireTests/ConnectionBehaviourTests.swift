import Foundation
import GRPCCore
import NIOCore
import NIOPosix
import SparkProto
import SparkTesting
@testable import SparkWire
import SwiftProtobuf
import Testing

/// Graceful shutdown, keepalive, the connection pool and retries.
@Suite("SparkWire connections")
struct ConnectionBehaviourTests {
    let certificates: TestCertificates

    init() throws {
        self.certificates = try TestCertificates.make()
    }

    @Test("graceful shutdown lets calls in flight finish and refuses new ones with UNAVAILABLE")
    func gracefulShutdown() async throws {
        let transport = SparkWireServerTransport(config: .init(host: "127.0.0.1", port: 0, security: self.certificates.security("echo"), methods: SparkProtoMethods.all))
        let service = EchoService()
        let server = GRPCServer(transport: transport, services: [service])
        try await withThrowingTaskGroup { group in
            group.addTask { try await server.serve() }
            let port = try await transport.listeningAddress.port!
            try await withWireClient(
                endpoints: [.init(host: "127.0.0.1", port: port)],
                security: self.certificates.security("client"),
                configure: { $0.backoff = SparkWireBackoff(initial: .seconds(5)) }
            ) { client, _ in
                let echo = Sparkops_Testing_V1_EchoService.Client(wrapping: client)
                _ = try await echo.get(.with { $0.text = "warm up" })
                try await withThrowingTaskGroup { calls in
                    calls.addTask {
                        let response = try await echo.get(.with { $0.text = "in flight" }, metadata: ["echo-delay-ms": "2000"])
                        #expect(response.text == "in flight")
                    }
                    // The handler has started (a count that only grows, so a loaded machine
                    // cannot poll past it); its call is in flight for two seconds.
                    try await eventually { service.callCount("Get") == 2 }
                    server.beginGracefulShutdown()
                    try await calls.waitForAll()
                }
                await #expect {
                    _ = try await echo.record(.with { $0.text = "too late" })
                } throws: { error in
                    (error as? RPCError)?.code == .unavailable
                }
            }
            try await group.waitForAll()
        }
    }

    @Test("a stream opened after GoAway is answered UNAVAILABLE without running a handler")
    func streamAfterGoAway() async throws {
        let service = EchoService()
        try await withWireServer(services: [service], security: self.certificates.security("echo")) { transport, port in
            let client = try await RawWireClient.handshake(port: port, certificates: self.certificates)
            defer { Task { await client.close() } }
            // Long enough that the connection is still draining when stream 3 arrives.
            var metadata = Metadata()
            metadata.addString("5000", forKey: "echo-delay-ms")
            try await client.send(WireFrame(
                streamID: 1,
                headers: .init(method: "/sparkops.testing.v1.EchoService/Get", metadata: metadata),
                messages: [ByteBuffer()],
                endStream: true
            ))
            try await eventually { await transport.openStreamCount == 1 }
            transport.beginGracefulShutdown()
            try await client.log.wait { frames, _ in frames.contains { $0.goAway != nil } }
            #expect(client.log.frames.first { $0.goAway != nil }?.goAway?.lastStreamID == 1)
            try await client.send(WireFrame(
                streamID: 3,
                headers: .init(method: "/sparkops.testing.v1.EchoService/Get"),
                messages: [ByteBuffer()],
                endStream: true
            ))
            let frames = try await client.log.wait(timeout: .seconds(10)) { frames, closed in closed }
            #expect(frames.first { $0.streamID == 3 }?.trailers?.code == UInt32(Status.Code.unavailable.rawValue))
            #expect(frames.first { $0.streamID == 1 }?.trailers?.code == 0)
            #expect(service.callCount("Get") == 1)
        }
    }

    @Test("the grace period bounds how long a draining connection may stay open")
    func gracePeriod() async throws {
        let service = EchoService()
        try await withEchoPair(
            certificates: self.certificates,
            service: service,
            configureServer: { $0.gracePeriod = .milliseconds(200) }
        ) { echo, server, _ in
            let started = ContinuousClock.now
            try await withThrowingTaskGroup { group in
                group.addTask {
                    await #expect(throws: RPCError.self) {
                        _ = try await echo.get(.with { $0.text = "slow" }, metadata: ["echo-delay-ms": "60000"])
                    }
                }
                try await eventually { await server.openStreamCount == 1 }
                server.beginGracefulShutdown()
                try await group.waitForAll()
            }
            // The handler would take a minute; the 200 ms grace period ends it far sooner (the
            // margin is for loaded machines).
            #expect(ContinuousClock.now - started < .seconds(15))
            try await eventually { service.cancelledCount == 1 }
        }
    }

    @Test("keepalive pings keep a quiet connection and detect a dead one")
    func keepalive() async throws {
        // A server that never answers pings: the client closes the connection after interval + timeout.
        let silent = try await RawWireServer.start(certificates: self.certificates, answerPings: false) { _ in [] }
        defer { Task { await silent.stop() } }
        try await withWireClient(
            endpoints: [.init(host: "127.0.0.1", port: silent.port)],
            security: self.certificates.security("client"),
            configure: {
                $0.keepalive = SparkWireKeepalive(interval: .milliseconds(100), timeout: .milliseconds(100))
                $0.backoff = SparkWireBackoff(initial: .seconds(10))
            }
        ) { _, transport in
            // The client pings only on a ready connection, so a ping proves it was established; the
            // ready state itself lasts only interval + timeout, too short to poll on a loaded machine.
            try await silent.log.wait { frames, _ in frames.contains { $0.ping != nil } }
            // The client says why it closes (§3.3): a GoAway UNAVAILABLE, then the close.
            try await silent.log.wait { frames, _ in frames.contains { $0.goAway != nil } }
            try await silent.log.waitForClose()
            let goAway = try #require(silent.log.frames.compactMap(\.goAway).first)
            #expect(goAway.code == UInt32(Status.Code.unavailable.rawValue))
            #expect(goAway.message.contains("keepalive"))
            try await eventually { transport.readyConnectionCount == 0 }
        }

        // A live server answers: after several intervals the same single connection still serves calls.
        try await withEchoPair(
            certificates: self.certificates,
            configureClient: { $0.keepalive = SparkWireKeepalive(interval: .milliseconds(50), timeout: .seconds(2)) }
        ) { echo, server, _ in
            _ = try await echo.get(.with { $0.text = "a" })
            try await Task.sleep(for: .milliseconds(600))
            _ = try await echo.get(.with { $0.text = "b" })
            #expect(server.acceptedConnectionCount == 1)
        }
    }

    @Test("a keepalive ping comes one interval after the last frame received, not up to two")
    func keepaliveTiming() async throws {
        // A peer that answers pings at once: each answer is a frame, so the next ping is due one
        // interval after it. Checking on a fixed period instead sent every second ping an interval late.
        let peer = try await RawWireServer.start(certificates: self.certificates, answerPings: true) { _ in [] }
        defer { Task { await peer.stop() } }
        try await withWireClient(
            endpoints: [.init(host: "127.0.0.1", port: peer.port)],
            security: self.certificates.security("client"),
            configure: { $0.keepalive = SparkWireKeepalive(interval: .seconds(2), timeout: .seconds(10)) }
        ) { _, _ in
            _ = try await peer.log.wait(timeout: .seconds(40)) { frames, _ in frames.filter { $0.ping != nil }.count >= 4 }
            let pings = peer.log.timedFrames.filter { $0.frame.ping != nil }.map(\.time)
            let gaps = zip(pings.dropFirst(), pings).map { $0 - $1 }
            // An interval plus the ack's way back (up to ~0.6 s on a loaded machine), not two.
            #expect(gaps.allSatisfy { $0 > .milliseconds(1800) && $0 < .milliseconds(3200) }, "gaps between pings: \(gaps)")
        }
    }

    @Test("calls are spread round robin across every address")
    func roundRobin() async throws {
        let first = EchoService()
        let second = EchoService()
        try await withWireServer(services: [first], security: self.certificates.security("echo")) { _, firstPort in
            try await withWireServer(services: [second], security: self.certificates.security("echo")) { _, secondPort in
                try await withWireClient(
                    endpoints: try SparkWireEndpoint.parseList("127.0.0.1:\(firstPort), 127.0.0.1:\(secondPort)"),
                    security: self.certificates.security("client")
                ) { client, transport in
                    let echo = Sparkops_Testing_V1_EchoService.Client(wrapping: client)
                    _ = try await echo.get(.with { $0.text = "first" })
                    try await eventually { transport.readyConnectionCount == 2 }
                    let before = (first.callCount("Get"), second.callCount("Get"))
                    for _ in 0 ..< 20 {
                        _ = try await echo.get(.with { $0.text = "spread" })
                    }
                    #expect(first.callCount("Get") - before.0 == 10)
                    #expect(second.callCount("Get") - before.1 == 10)
                }
            }
        }
    }

    @Test("a host name resolves to its addresses")
    func resolution() async throws {
        try await withEchoPair(
            certificates: self.certificates,
            configureClient: { config in
                config.endpoints = config.endpoints.map { SparkWireEndpoint(host: "localhost", port: $0.port) }
            }
        ) { echo, _, _ in
            let response = try await echo.get(.with { $0.text = "by name" })
            #expect(response.text == "by name")
        }
        let unresolvable = try SparkWireClientTransport(config: .init(
            endpoints: [.init(host: "no-such-host.invalid", port: 1)],
            serverIdentity: "echo",
            security: self.certificates.security("client")
        ))
        try await withGRPCClient(transport: unresolvable) { client in
            let echo = Sparkops_Testing_V1_EchoService.Client(wrapping: client)
            await #expect {
                _ = try await echo.record(.with { $0.text = "x" })
            } throws: { error in
                let rpcError = error as? RPCError
                return rpcError?.code == .unavailable && rpcError?.message.contains("no-such-host.invalid") == true
            }
        }
    }

    @Test("a client reconnects with backoff when its server comes back")
    func reconnect() async throws {
        // Reserve a free port, then release it for the server to take later.
        let probe = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton).bind(host: "127.0.0.1", port: 0).get()
        let port = probe.localAddress!.port!
        try await probe.close()

        try await withWireClient(
            endpoints: [.init(host: "127.0.0.1", port: port)],
            security: self.certificates.security("client"),
            configure: { $0.backoff = SparkWireBackoff(initial: .milliseconds(20), maximum: .milliseconds(200)) }
        ) { client, transport in
            let echo = Sparkops_Testing_V1_EchoService.Client(wrapping: client)
            // Nothing listens: calls fail fast with UNAVAILABLE naming the cause.
            try await eventually {
                do {
                    _ = try await echo.record(.with { $0.text = "x" })
                    return false
                } catch let error as RPCError {
                    return error.code == .unavailable
                }
            }
            // A call that waits for ready is started now, while nothing listens, and completes when
            // the server comes up.
            try await withThrowingTaskGroup { group in
                group.addTask {
                    var options = CallOptions.defaults
                    options.waitForReady = true
                    options.timeout = .seconds(20)
                    let response = try await echo.record(.with { $0.text = "waited" }, options: options)
                    #expect(response.text == "waited")
                }
                try await Task.sleep(for: .milliseconds(300))
                try await withWireServer(
                    services: [EchoService()],
                    security: self.certificates.security("echo"),
                    configure: { $0.port = port }
                ) { _, _ in
                    try await group.waitForAll()
                    try await eventually { transport.readyConnectionCount == 1 }
                    let response = try await echo.get(.with { $0.text = "back" })
                    #expect(response.text == "back")
                }
            }
            // The server went away again; the client notices and stops offering the connection.
            try await eventually { transport.readyConnectionCount == 0 }
        }
    }

    @Test("backoff grows exponentially, is capped, and jitters within bounds")
    func backoff() {
        let backoff = SparkWireBackoff(initial: .milliseconds(100), maximum: .seconds(2), multiplier: 2, jitter: 0.2)
        var generator = SystemRandomNumberGenerator()
        for attempt in 1 ... 12 {
            let expected = min(0.1 * pow(2, Double(attempt - 1)), 2.0)
            for _ in 0 ..< 20 {
                let delay = backoff.delay(attempt: attempt, using: &generator)
                let seconds = Double(delay.components.seconds) + Double(delay.components.attoseconds) / 1e18
                #expect(seconds >= expected * 0.8 - 1e-9 && seconds <= expected * 1.2 + 1e-9, "attempt \(attempt): \(seconds)")
            }
        }
        let fixed = SparkWireBackoff(initial: .milliseconds(100), maximum: .seconds(1), multiplier: 3, jitter: 0)
        #expect(fixed.delay(attempt: 1) == .milliseconds(100))
        #expect(fixed.delay(attempt: 2) == .milliseconds(300))
        #expect(fixed.delay(attempt: 5) == .seconds(1))
    }

    @Test("GRPCCore retries failed calls of idempotent methods only")
    func retries() async throws {
        let service = EchoService()
        try await withEchoPair(
            certificates: self.certificates,
            service: service,
            configureClient: { $0.retryPolicy = SparkWireClientTransport.defaultRetryPolicy }
        ) { echo, _, _ in
            // Get is NO_SIDE_EFFECTS: two failures, then success on the third attempt.
            let response = try await echo.get(.with { $0.text = "retried" }, metadata: ["echo-fail-attempts": "2"])
            #expect(response.text == "retried")
            #expect(service.callCount("Get") == 3)

            // Record declares no idempotency: one failure is final.
            await #expect {
                _ = try await echo.record(.with { $0.text = "once" }, metadata: ["echo-fail-attempts": "1"])
            } throws: { error in
                (error as? RPCError)?.code == .unavailable
            }
            #expect(service.callCount("Record") == 1)
        }
        // Without a policy, nothing is retried.
        let plain = EchoService()
        try await withEchoPair(certificates: self.certificates, service: plain) { echo, _, _ in
            await #expect(throws: RPCError.self) {
                _ = try await echo.get(.with { $0.text = "once" }, metadata: ["echo-fail-attempts": "1"])
            }
            #expect(plain.callCount("Get") == 1)
        }
    }

    @Test("endpoint lists parse, and bad ones name the problem")
    func endpoints() throws {
        #expect(try SparkWireEndpoint.parseList("a:1, b:2 ,[::1]:3") == [
            .init(host: "a", port: 1), .init(host: "b", port: 2), .init(host: "::1", port: 3),
        ])
        #expect(throws: SparkWireConfigurationError.self) { try SparkWireEndpoint.parseList("") }
        #expect(throws: SparkWireConfigurationError.self) { try SparkWireEndpoint.parse("host") }
        #expect(throws: SparkWireConfigurationError.self) { try SparkWireEndpoint.parse("host:0") }
        #expect(throws: SparkWireConfigurationError.self) { try SparkWireEndpoint.parse("host:99999") }
        #expect(throws: SparkWireConfigurationError.self) { try SparkWireEndpoint.parse("[::1:5") }
    }
}
