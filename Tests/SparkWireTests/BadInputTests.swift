import Foundation
import GRPCCore
import NIOCore
import NIOPosix
import NIOSSL
import SparkKit
import SparkProto
import SparkTesting
@testable import SparkWire
import SwiftProtobuf
import Testing

/// Each kind of bad input has a defined outcome, and the server keeps serving its other connections.
@Suite("SparkWire bad input")
struct BadInputTests {
    let certificates: TestCertificates

    init() throws {
        self.certificates = try TestCertificates.make()
    }

    /// Runs `attack` against a server while a well-behaved client holds its own connection, then
    /// checks that the well-behaved client is still served.
    func withServerUnderAttack(
        service: EchoService = EchoService(),
        configure: (inout SparkWireServerTransport.Config) -> Void = { _ in },
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        _ attack: (_ port: Int, _ server: SparkWireServerTransport) async throws -> Void
    ) async throws {
        try await withEchoPair(
            certificates: self.certificates,
            service: service,
            configureServer: configure,
            eventLoopGroup: eventLoopGroup
        ) { echo, server, port in
            _ = try await echo.get(.with { $0.text = "before" })
            try await attack(port, server)
            let after = try await echo.get(.with { $0.text = "after" })
            #expect(after.text == "after")
        }
    }

    func goAway(_ client: RawWireClient) async throws -> WireFrame.GoAway? {
        let frames = try await client.log.wait { _, closed in closed }
        return frames.first { $0.goAway != nil }?.goAway
    }

    @Test("random bytes instead of a TLS handshake close the connection")
    func randomBytesBeforeTLS() async throws {
        try await self.withServerUnderAttack { port, _ in
            let client = try await RawWireClient.connect(port: port, tls: nil)
            var generator = SystemRandomNumberGenerator()
            try await client.sendRaw((0 ..< 4096).map { _ in UInt8.random(in: 0 ... 255, using: &generator) })
            try await client.log.waitForClose()
        }
    }

    @Test("random bytes inside TLS end the connection with GoAway INTERNAL")
    func randomBytesInsideTLS() async throws {
        try await self.withServerUnderAttack { port, _ in
            let client = try await RawWireClient.handshake(port: port, certificates: self.certificates)
            try await client.sendRaw([0, 0, 0, 6, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF])
            let goAway = try await self.goAway(client)
            #expect(goAway?.code == UInt32(Status.Code.internalError.rawValue))
            #expect(goAway?.message.contains("malformed frame") == true)
        }
    }

    @Test("a length prefix over the limit is refused at once with GoAway RESOURCE_EXHAUSTED")
    func oversizedPrefix() async throws {
        try await self.withServerUnderAttack(configure: { $0.limits.maxFrameSize = 1 << 20 }) { port, _ in
            let client = try await RawWireClient.handshake(port: port, certificates: self.certificates)
            // Only the prefix is sent: the server must not wait for the 2 GiB it announces.
            try await client.sendRaw([0x7F, 0xFF, 0xFF, 0xFF])
            let goAway = try await self.goAway(client)
            #expect(goAway?.code == UInt32(Status.Code.resourceExhausted.rawValue))
        }
    }

    @Test("a frame cut short and then the socket closed leaves nothing behind")
    func truncatedFrame() async throws {
        let service = EchoService()
        try await self.withServerUnderAttack(service: service) { port, server in
            let client = try await RawWireClient.handshake(port: port, certificates: self.certificates)
            var bytes = ByteBuffer()
            WireFrame(streamID: 1, headers: .init(method: "/sparkops.testing.v1.EchoService/Update")).encode(into: &bytes)
            WireFrame(streamID: 1, messages: [ByteBuffer(repeating: 1, count: 500)]).encode(into: &bytes)
            try await client.sendRaw(Array(bytes.readableBytesView.dropLast(200)))
            try await eventually { await server.openStreamCount == 1 }
            await client.close()
            try await eventually { server.connectionCount == 1 }
            try await eventually { await server.openStreamCount == 0 }
            try await eventually { service.cancelledCount == 1 }
        }
    }

    @Test("a frame for a stream that was never opened ends the connection with GoAway INTERNAL")
    func unknownStream() async throws {
        try await self.withServerUnderAttack { port, _ in
            let client = try await RawWireClient.handshake(port: port, certificates: self.certificates)
            try await client.send(WireFrame(streamID: 7, messages: [ByteBuffer(bytes: [1])]))
            let goAway = try await self.goAway(client)
            #expect(goAway?.code == UInt32(Status.Code.internalError.rawValue))
            #expect(goAway?.message.contains("stream 7") == true)
        }
    }

    @Test("a first frame without settings ends the connection")
    func settingsMissing() async throws {
        try await self.withServerUnderAttack { port, _ in
            let client = try await RawWireClient.connect(port: port, tls: .init(certificates: self.certificates))
            try await client.send(WireFrame(streamID: 1, headers: .init(method: "/sparkops.testing.v1.EchoService/Get"), endStream: true))
            let goAway = try await self.goAway(client)
            #expect(goAway?.message.contains("settings") == true)
        }
    }

    @Test("an unknown method is answered UNIMPLEMENTED")
    func unknownMethod() async throws {
        try await self.withServerUnderAttack { port, _ in
            try await withWireClient(endpoints: [.init(host: "127.0.0.1", port: port)], security: self.certificates.security("client")) { client, _ in
                let health = Sparkops_Health_V1_Health.Client(wrapping: client)
                await #expect {
                    _ = try await health.check(.init())
                } throws: { error in
                    (error as? RPCError)?.code == .unimplemented
                }
            }
            // A path that is not /service/method at all.
            let raw = try await RawWireClient.handshake(port: port, certificates: self.certificates)
            defer { Task { await raw.close() } }
            try await raw.send(WireFrame(streamID: 1, headers: .init(method: "nonsense"), messages: [ByteBuffer()], endStream: true))
            let frames = try await raw.log.wait { frames, _ in frames.contains { $0.trailers != nil } }
            #expect(frames.first { $0.trailers != nil }?.trailers?.code == UInt32(Status.Code.unimplemented.rawValue))
        }
    }

    @Test("a message that does not parse is answered INVALID_ARGUMENT")
    func unparsableMessage() async throws {
        try await self.withServerUnderAttack { port, _ in
            let client = try await RawWireClient.handshake(port: port, certificates: self.certificates)
            defer { Task { await client.close() } }
            try await client.send(WireFrame(
                streamID: 1,
                headers: .init(method: "/sparkops.testing.v1.EchoService/Get"),
                messages: [ByteBuffer(bytes: [0x0A, 0x7F, 0x01])],  // text claims 127 bytes, has 1
                endStream: true
            ))
            let frames = try await client.log.wait { frames, _ in frames.contains { $0.trailers != nil } }
            #expect(frames.first { $0.trailers != nil }?.trailers?.code == UInt32(Status.Code.invalidArgument.rawValue))
        }
    }

    @Test("headers that open a lower, never-used stream id are answered with trailers INTERNAL, not silence")
    func lowerStreamID() async throws {
        try await self.withServerUnderAttack { port, _ in
            let client = try await RawWireClient.handshake(port: port, certificates: self.certificates)
            defer { Task { await client.close() } }
            let get = "/sparkops.testing.v1.EchoService/Get"
            try await client.send(WireFrame(streamID: 9, headers: .init(method: get), messages: [ByteBuffer()], endStream: true))
            try await client.log.wait { frames, _ in frames.contains { $0.streamID == 9 && $0.trailers?.code == 0 } }
            try await client.send(WireFrame(streamID: 3, headers: .init(method: get), messages: [ByteBuffer()], endStream: true))
            let frames = try await client.log.wait { frames, _ in frames.contains { $0.streamID == 3 && $0.trailers != nil } }
            let trailers = try #require(frames.first { $0.streamID == 3 && $0.trailers != nil }?.trailers)
            #expect(trailers.code == UInt32(Status.Code.internalError.rawValue))
            #expect(trailers.message.contains("strictly increase"))
            // Only that call failed: the connection goes on serving higher ids.
            try await client.send(WireFrame(streamID: 11, headers: .init(method: get), messages: [ByteBuffer()], endStream: true))
            try await client.log.wait { frames, _ in frames.contains { $0.streamID == 11 && $0.trailers?.code == 0 } }
            #expect(!client.log.isClosed)
        }
    }

    @Test("stream rule violations reset only that stream")
    func streamViolations() async throws {
        try await self.withServerUnderAttack(configure: { $0.limits.initialWindow = 4 }) { port, _ in
            let client = try await RawWireClient.handshake(port: port, certificates: self.certificates)
            defer { Task { await client.close() } }
            let update = "/sparkops.testing.v1.EchoService/Update"
            // Headers twice.
            try await client.send(
                WireFrame(streamID: 1, headers: .init(method: update)),
                WireFrame(streamID: 1, headers: .init(method: update))
            )
            // More messages than the window, to a handler that reads nothing for a while (and so
            // grants no more credit).
            var slow = Metadata()
            slow.addString("3000", forKey: "echo-delay-ms")
            try await client.send(WireFrame(streamID: 3, headers: .init(method: update, metadata: slow), messages: Array(repeating: ByteBuffer(), count: 4)))
            try await client.send(WireFrame(streamID: 3, messages: [ByteBuffer(), ByteBuffer()]))
            let frames = try await client.log.wait { frames, _ in
                frames.contains { $0.streamID == 1 && $0.cancel != nil } && frames.contains { $0.streamID == 3 && $0.cancel != nil }
            }
            #expect(frames.first { $0.streamID == 1 && $0.cancel != nil }?.cancel?.code == UInt32(Status.Code.internalError.rawValue))
            #expect(frames.first { $0.streamID == 3 && $0.cancel != nil }?.cancel?.code == UInt32(Status.Code.resourceExhausted.rawValue))
            // The connection itself is still open and serves a new stream.
            try await client.send(WireFrame(streamID: 5, headers: .init(method: "/sparkops.testing.v1.EchoService/Get"), messages: [ByteBuffer()], endStream: true))
            try await client.log.wait { frames, _ in frames.contains { $0.streamID == 5 && $0.trailers?.code == 0 } }
            #expect(!client.log.isClosed)
        }
    }

    @Test("a client without a certificate is refused")
    func noClientCertificate() async throws {
        try await self.withServerUnderAttack { port, _ in
            let client = try await RawWireClient.connect(port: port, tls: .init(certificates: self.certificates, identity: nil))
            try? await client.send(WireFrame(streamID: 0, settings: .init()))
            try await client.log.waitForClose()
            #expect(!client.log.frames.contains { $0.settings != nil })
        }
    }

    @Test("a client certificate from another CA is refused")
    func foreignCertificate() async throws {
        let foreign = try TestCertificates.make()
        try await self.withServerUnderAttack { port, _ in
            // The foreign client trusts our CA, so only its own certificate is at fault.
            try FileManager.default.removeItem(atPath: foreign.path("trust.pem"))
            try FileManager.default.copyItem(atPath: self.certificates.path("trust.pem"), toPath: foreign.path("trust.pem"))
            try await withWireClient(
                endpoints: [.init(host: "127.0.0.1", port: port)],
                security: foreign.security("client"),
                configure: { $0.backoff = SparkWireBackoff(initial: .seconds(5)) }
            ) { client, _ in
                let echo = Sparkops_Testing_V1_EchoService.Client(wrapping: client)
                await #expect {
                    _ = try await echo.record(.with { $0.text = "x" })
                } throws: { error in
                    (error as? RPCError)?.code == .unavailable
                }
            }
        }
    }

    @Test("a server whose certificate names another service is refused by the client")
    func wrongServerIdentity() async throws {
        try await self.withServerUnderAttack { port, _ in
            try await withWireClient(
                endpoints: [.init(host: "127.0.0.1", port: port)],
                serverIdentity: "budget",
                security: self.certificates.security("client"),
                configure: { $0.backoff = SparkWireBackoff(initial: .seconds(5)) }
            ) { client, _ in
                let echo = Sparkops_Testing_V1_EchoService.Client(wrapping: client)
                await #expect {
                    _ = try await echo.record(.with { $0.text = "x" })
                } throws: { error in
                    (error as? RPCError)?.code == .unavailable
                }
            }
        }
    }

    @Test("a TLS 1.2-only client is refused")
    func tls12() async throws {
        try await self.withServerUnderAttack { port, _ in
            let client = try await RawWireClient.connect(
                port: port,
                tls: .init(certificates: self.certificates, maximumVersion: .tlsv12, minimumVersion: .tlsv1)
            )
            try await client.log.waitForClose()
            #expect(!client.log.handshakeCompleted)
        }
    }

    @Test("a client that does not negotiate ALPN sparkwire/1 is refused")
    func wrongALPN() async throws {
        try await self.withServerUnderAttack { port, _ in
            let client = try await RawWireClient.connect(port: port, tls: .init(certificates: self.certificates, alpn: ["h2"]))
            try? await client.send(WireFrame(streamID: 0, settings: .init()))
            try await client.log.waitForClose()
            #expect(!client.log.frames.contains { $0.settings != nil })
        }
    }

    @Test("10,000 streams opened and abandoned leave the server clean")
    func abandonedStreams() async throws {
        // Event loops of its own, so that this load does not slow the other tests' connections.
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { group.shutdownGracefully { _ in } }
        let service = EchoService()
        try await self.withServerUnderAttack(service: service, eventLoopGroup: group) { port, server in
            let client = try await RawWireClient.handshake(port: port, certificates: self.certificates)
            let update = "/sparkops.testing.v1.EchoService/Update"
            for batch in 0 ..< 100 {
                var frames: [WireFrame] = []
                for index in 0 ..< 100 {
                    frames.append(WireFrame(streamID: UInt32(1 + 2 * (batch * 100 + index)), headers: .init(method: update)))
                }
                var buffer = ByteBuffer()
                for frame in frames { frame.encode(into: &buffer) }
                try await client.channel.writeAndFlush(buffer)
            }
            // The first 100 streams run (the default concurrency limit); the rest are refused.
            let frames = try await client.log.wait(timeout: .seconds(20)) { frames, _ in
                frames.filter { $0.trailers != nil }.count >= 9_900
            }
            let refused = frames.filter { $0.trailers?.code == UInt32(Status.Code.resourceExhausted.rawValue) }
            #expect(refused.count == 9_900)
            #expect(await server.openStreamCount == 100)
            await client.close()
            try await eventually { await server.openStreamCount == 0 }
            try await eventually { service.cancelledCount == 100 }
        }

        // The same through the real client: 10,000 calls started and then cancelled.
        try await withEchoPair(certificates: self.certificates, service: service, eventLoopGroup: group) { echo, server, _ in
            await withTaskGroup { group in
                for _ in 0 ..< 10_000 {
                    group.addTask {
                        try? await echo.update(request: StreamingClientRequest { _ in try await Task.sleep(for: .seconds(60)) }) { response in
                            for try await _ in response.messages {}
                        }
                    }
                }
                try? await Task.sleep(for: .milliseconds(500))
                group.cancelAll()
            }
            try await eventually { await server.openStreamCount == 0 }
            let after = try await echo.get(.with { $0.text = "still here" })
            #expect(after.text == "still here")
        }
    }
}
