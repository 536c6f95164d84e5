import Foundation
import GRPCCore
import SparkProto
import SparkWire
import SwiftProtobuf
import NIOCore
import NIOHTTP1
import NIOPosix
import SparkTesting
import Synchronization
import Testing

/// What a rolling restart needs of a process: SIGTERM ends it within its drain time, whatever its
/// clients do.
@Suite("Graceful shutdown")
struct ShutdownTests {
    @Test("SIGTERM closes open WebSockets with 1001 and the process exits within the drain time, whether or not clients answer")
    func gatewayExitsWithWebSocketsOpen() async throws {
        let deployment = try await DistributedTests.Deployment.make(databaseURL: nil, redisURL: nil)
        defer { try? FileManager.default.removeItem(atPath: deployment.home) }
        let dev = try await deployment.startDev(["gateway.drainSeconds=3", "run.drainSeconds=3"])
        do {
            try await Self.closeSocketsAtShutdown(dev, deployment)
        } catch {
            // Whatever failed, the process this test started does not outlive it.
            if dev.isRunning { await dev.kill() }
            throw error
        }
    }

    /// Two subscribed sockets (one that never answers a close frame), SIGTERM, then the checks.
    static func closeSocketsAtShutdown(_ dev: ServiceProcess, _ deployment: DistributedTests.Deployment) async throws {
        let http = deployment.gateway
        let login = try await http.send(.POST, "/api/v1/auth/login", json: ["email": TestCluster.adminEmail, "password": TestCluster.adminPassword])
        let token = try #require(login.json["accessToken"] as? String)
        let created = try await http.send(.POST, "/api/v1/projects", token: token, json: ["name": "shutdown"])
        let project = try #require(created.json["id"] as? String, "\(created.text)")
        func ticket() async throws -> String {
            let issued = try await http.send(.POST, "/api/v1/ws/tickets", token: token)
            return try #require(issued.json["ticket"] as? String, "\(issued.text)")
        }

        // A client that never answers a close frame, and one that does; both subscribed.
        let silent = try await SilentWebSocket.open(port: deployment.gatewayPort, path: "/api/v1/ws?ticket=\(try await ticket())")
        try await silent.send(["type": "subscribe", "topic": "runs", "projectId": project])
        try await silent.waitFor("\"subscribed\"")

        var signalled = ContinuousClock.now
        let outcome = try await WebSocketTestClient.converse(port: deployment.gatewayPort, path: "/api/v1/ws?ticket=\(try await ticket())") { client in
            #expect(try await client.receive()["type"] as? String == "ready")
            try await client.send(["type": "subscribe", "topic": "runs", "projectId": project])
            #expect(try await client.receive()["type"] as? String == "subscribed")
            signalled = ContinuousClock.now
            dev.signal(SIGTERM)
            // Messages until the server's close frame (an empty object once it came).
            while !(try await client.receive()).isEmpty {}
        }
        let status = await dev.exit(within: .seconds(40))
        let elapsed = ContinuousClock.now - signalled
        if status == nil { await dev.kill() }
        #expect(status == 0, "the process did not exit within 40 s of SIGTERM:\n\(dev.output.suffix(3000))")
        // The drain is 3 s; the other services' own shutdown on a loaded machine takes the rest.
        #expect(elapsed < .seconds(25), "exited \(elapsed) after SIGTERM")
        #expect(outcome.serverCloseCode == 1001)
        #expect(await silent.closeCode() == 1001)
    }
}

extension ShutdownTests {
    @Test("sparkops wire echo-server reports NOT_SERVING to health watchers once it begins a graceful shutdown")
    func echoServerHealthAtShutdown() async throws {
        let certificates = try TestCertificates.make(services: ["echo", "client"])
        defer { certificates.remove() }
        let logs = FileManager.default.temporaryDirectory.appending(path: "sparkops-echo-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: logs, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: logs) }
        let server = try await ServiceProcess("sparkops", ["wire", "echo-server", "--port", "0", "--certs", certificates.directory.path], logDirectory: logs)
        do {
            try await Self.watchEchoServerShutdown(server, certificates: certificates)
        } catch {
            // Whatever failed, the server this test started does not outlive it.
            _ = await server.stop()
            throw error
        }
    }

    /// Waits for the echo server's port, watches its health, sends SIGTERM once the watch has
    /// its first status, and expects SERVING then NOT_SERVING and a clean exit.
    static func watchEchoServerShutdown(_ server: ServiceProcess, certificates: TestCertificates) async throws {
        var port: Int?
        let deadline = ContinuousClock.now + .seconds(60)
        while port == nil, server.isRunning, ContinuousClock.now < deadline {
            port = server.output.split(separator: "\n").first { $0.contains("SparkWire echo server on") }
                .flatMap { $0.split(separator: ":").last.flatMap { Int($0.prefix { $0.isNumber }) } }
            try await Task.sleep(for: .milliseconds(20))
        }
        let listening = try #require(port, "no port announced:\n\(server.output)")
        let seen = try await withWireClient(endpoints: [.init(host: "127.0.0.1", port: listening)], security: certificates.security("client")) { client, _ in
            let health = Sparkops_Health_V1_Health.Client(wrapping: client)
            let echo = Sparkops_Testing_V1_EchoService.Client(wrapping: client)
            return try await withThrowingTaskGroup(of: [Sparkops_Health_V1_HealthCheckResponse.ServingStatus].self) { group in
                // A slow call keeps the shutdown graceful for a while.
                group.addTask {
                    _ = try? await echo.get(.with { $0.text = "slow" }, metadata: ["echo-delay-ms": "2000"])
                    return []
                }
                group.addTask {
                    try await health.watch(.init()) { response in
                        var statuses: [Sparkops_Health_V1_HealthCheckResponse.ServingStatus] = []
                        for try await message in response.messages {
                            statuses.append(message.status)
                            if statuses.count == 1 { server.signal(SIGTERM) }
                            if message.status == .notServing { break }
                        }
                        return statuses
                    }
                }
                var found: [Sparkops_Health_V1_HealthCheckResponse.ServingStatus] = []
                for try await statuses in group { found += statuses }
                return found
            }
        }
        #expect(seen == [.serving, .notServing], "\(seen)")
        #expect(await server.exit(within: .seconds(20)) == 0, "\(server.output)")
        if server.isRunning { _ = await server.stop() }
    }
}

/// A WebSocket client that reads everything and answers nothing, not even a close frame.
final class SilentWebSocket: Sendable {
    private final class Received: Sendable {
        let bytes = Mutex<[UInt8]>([])
    }

    private let channel: NIOAsyncChannel<ByteBuffer, ByteBuffer>
    private let received: Received
    private let reader: Task<Void, Never>

    private init(channel: NIOAsyncChannel<ByteBuffer, ByteBuffer>, received: Received, reader: Task<Void, Never>) {
        self.channel = channel
        self.received = received
        self.reader = reader
    }

    static func open(port: Int, path: String) async throws -> SilentWebSocket {
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connectTimeout(.seconds(5))
            .connect(host: "127.0.0.1", port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                }
            }
        let key = Data((0..<16).map { _ in UInt8.random(in: 0...255) }).base64EncodedString()
        let head = "GET \(path) HTTP/1.1\r\nHost: 127.0.0.1:\(port)\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: \(key)\r\n\r\n"
        try await channel.outbound.write(ByteBuffer(string: head))
        let received = Received()
        let inbound = channel.inbound
        let reader = Task {
            // Until the server closes the connection, or at most a minute.
            let timer = channel.channel.eventLoop.scheduleTask(in: .seconds(60)) { channel.channel.close(promise: nil) }
            defer { timer.cancel() }
            do {
                for try await chunk in inbound {
                    received.bytes.withLock { $0 += chunk.readableBytesView }
                }
            } catch {}
        }
        let socket = SilentWebSocket(channel: channel, received: received, reader: reader)
        try await socket.waitFor("\"ready\"")
        return socket
    }

    private var bytes: [UInt8] { self.received.bytes.withLock { $0 } }

    /// Waits (at most 10 s) until the received bytes contain `text`.
    func waitFor(_ text: String) async throws {
        let deadline = ContinuousClock.now + .seconds(10)
        while !String(decoding: self.bytes, as: UTF8.self).contains(text) {
            guard ContinuousClock.now < deadline else {
                throw TestSetupError(description: "no \(text) within 10 s: \(String(decoding: self.bytes, as: UTF8.self))")
            }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    /// Sends one JSON message in a masked frame.
    func send(_ object: [String: Any]) async throws {
        let payload = Array(try JSONSerialization.data(withJSONObject: object))
        precondition(payload.count < 126)
        let mask = (0..<4).map { _ in UInt8.random(in: 0...255) }
        let frame = [0x81, 0x80 | UInt8(payload.count)] + mask + payload.enumerated().map { $0.element ^ mask[$0.offset % 4] }
        try await self.channel.outbound.write(ByteBuffer(bytes: frame))
    }

    /// The code of the close frame the server sent, once the connection has ended (bounded by the
    /// reader's minute); nil when none came.
    func closeCode() async -> UInt16? {
        await self.reader.value
        let bytes = self.bytes
        let separator = Array("\r\n\r\n".utf8)
        guard let end = bytes.indices.dropLast(3).first(where: { Array(bytes[$0..<$0 + 4]) == separator }) else { return nil }
        var offset = end + 4
        while let (opcode, payload, next) = RawHTTP.frame(bytes, at: offset) {
            if opcode == 0x8 { return payload.count >= 2 ? UInt16(payload[0]) << 8 | UInt16(payload[1]) : 1005 }
            offset = next
        }
        return nil
    }
}
