import Foundation
import GRPCCore
import NIOCore
import SparkProto
import SparkTesting
@testable import SparkWire
import SwiftProtobuf
import Testing

/// Frames, deadlines, cancellation and flow control, observed on the wire.
@Suite("SparkWire streams")
struct StreamBehaviourTests {
    let certificates: TestCertificates

    init() throws {
        self.certificates = try TestCertificates.make()
    }

    static func echoRequest(_ text: String, count: UInt32 = 0) -> ByteBuffer {
        let request = Sparkops_Testing_V1_EchoRequest.with {
            $0.text = text
            $0.count = count
        }
        return ByteBuffer(bytes: try! request.serializedBytes() as [UInt8])
    }

    @Test("a unary call costs one frame each way")
    func unaryIsOneFrameEachWay() async throws {
        // Server side: a raw client sends the request as one frame; the answer must be one frame.
        try await withWireServer(services: [EchoService()], security: self.certificates.security("echo")) { _, port in
            let client = try await RawWireClient.handshake(port: port, certificates: self.certificates)
            defer { Task { await client.close() } }
            try await client.send(WireFrame(
                streamID: 1,
                headers: .init(method: "/sparkops.testing.v1.EchoService/Get"),
                messages: [Self.echoRequest("one frame")],
                endStream: true
            ))
            try await client.log.wait { frames, _ in frames.contains { $0.streamID == 1 && $0.trailers != nil } }
            let frames = client.frames(on: 1)
            #expect(frames.count == 1, "\(frames.map(\.summary))")
            #expect(frames.first?.headers != nil)
            #expect(frames.first?.messages.count == 1)
            #expect(frames.first?.trailers?.code == 0)
            let response = try Sparkops_Testing_V1_EchoResponse(serializedBytes: Array(buffer: frames[0].messages[0]))
            #expect(response.text == "one frame")
        }

        // Client side: a raw server records what SparkWireClientTransport sends for a unary call.
        let server = try await RawWireServer.start(certificates: self.certificates) { frame in
            guard frame.headers != nil else { return [] }
            return [WireFrame(
                streamID: frame.streamID,
                headers: .init(),
                messages: [ByteBuffer(bytes: try! Sparkops_Testing_V1_EchoResponse.with { $0.text = "raw" }.serializedBytes() as [UInt8])],
                trailers: .init(code: 0)
            )]
        }
        defer { Task { await server.stop() } }
        try await withWireClient(endpoints: [.init(host: "127.0.0.1", port: server.port)], security: self.certificates.security("client")) { client, _ in
            let echo = Sparkops_Testing_V1_EchoService.Client(wrapping: client)
            for index in 0 ..< 20 {
                let response = try await echo.get(.with { $0.text = "call \(index)" })
                #expect(response.text == "raw")
            }
        }
        let streamFrames = server.log.frames.filter { $0.streamID != 0 && $0.cancel == nil }
        #expect(streamFrames.count == 20, "\(streamFrames.map(\.summary))")
        for frame in streamFrames {
            #expect(frame.headers?.method == "/sparkops.testing.v1.EchoService/Get")
            #expect(frame.messages.count == 1)
            #expect(frame.endStream)
        }
        // Stream ids are increasing from 1.
        #expect(streamFrames.map(\.streamID) == (0 ..< 20).map { UInt32(1 + $0) })
    }

    @Test("the caller's deadline travels with the call and the server enforces it")
    func deadlineExceeded() async throws {
        let service = EchoService()
        try await withEchoPair(certificates: self.certificates, service: service) { echo, server, _ in
            // Connect first, so that the deadline covers the call and not the TLS handshake.
            _ = try await echo.get(.with { $0.text = "warm up" })
            var options = CallOptions.defaults
            options.timeout = .seconds(1)
            let started = ContinuousClock.now
            await #expect {
                _ = try await echo.get(.with { $0.text = "slow" }, metadata: ["echo-delay-ms": "60000"], options: options)
            } throws: { error in
                (error as? RPCError)?.code == .deadlineExceeded
            }
            // Far sooner than the handler's minute, however loaded the machine.
            #expect(ContinuousClock.now - started < .seconds(30))
            #expect(service.callCount("Get") == 2)
            // The server gave up too: the handler was cancelled and the stream is gone.
            try await eventually { service.cancelledCount == 1 }
            try await eventually { await server.openStreamCount == 0 }
        }

        // The server alone enforces the deadline a raw client sends, answering DEADLINE_EXCEEDED.
        try await withWireServer(services: [service], security: self.certificates.security("echo")) { _, port in
            let client = try await RawWireClient.handshake(port: port, certificates: self.certificates)
            defer { Task { await client.close() } }
            var metadata = Metadata()
            // The handler would answer after a minute; the deadline must end the call long before.
            metadata.addString("60000", forKey: "echo-delay-ms")
            try await client.send(WireFrame(
                streamID: 1,
                headers: .init(method: "/sparkops.testing.v1.EchoService/Get", timeoutMicros: 150_000, metadata: metadata),
                messages: [Self.echoRequest("slow")],
                endStream: true
            ))
            let frames = try await client.log.wait(timeout: .seconds(30)) { frames, _ in
                frames.contains { $0.streamID == 1 && $0.trailers != nil }
            }
            #expect(frames.first { $0.streamID == 1 }?.trailers?.code == UInt32(Status.Code.deadlineExceeded.rawValue))
            try await eventually { service.cancelledCount == 2 }
        }
    }

    @Test("a handler's outgoing calls inherit the time left of its incoming call")
    func deadlinePropagation() async throws {
        let downstream = EchoService()
        try await withWireServer(services: [downstream], security: self.certificates.security("echo")) { _, downstreamPort in
            try await withWireClient(
                endpoints: [.init(host: "127.0.0.1", port: downstreamPort)],
                security: self.certificates.security("run")
            ) { downstreamClient, _ in
                let forwarding = EchoService(downstream: .init(wrapping: downstreamClient))
                try await withWireServer(services: [forwarding], security: self.certificates.security("echo")) { _, port in
                    try await withWireClient(
                        endpoints: [.init(host: "127.0.0.1", port: port)],
                        security: self.certificates.security("client")
                    ) { client, _ in
                        let echo = Sparkops_Testing_V1_EchoService.Client(wrapping: client)
                        // Without a deadline upstream, none is invented downstream. (This call also
                        // opens both connections, so the timed call below measures no handshakes.)
                        let none = try await echo.get(.with { $0.text = "x" }, metadata: ["echo-forward": "1", "echo-report-deadline": "1"])
                        #expect(none.text == "none")

                        var options = CallOptions.defaults
                        options.timeout = .seconds(10)
                        let reported = try await echo.get(
                            .with { $0.text = "x" },
                            metadata: ["echo-forward": "1", "echo-report-deadline": "1"],
                            options: options
                        )
                        let micros = try #require(Int64(reported.text), "downstream saw no deadline: \(reported.text)")
                        #expect(micros > 5_000_000)
                        #expect(micros < 10_000_000)
                    }
                }
            }
        }
    }

    @Test("cancelling the caller's task cancels the server's handler")
    func clientCancellation() async throws {
        let service = EchoService()
        try await withEchoPair(certificates: self.certificates, service: service) { echo, server, _ in
            let (started, startedContinuation) = AsyncStream.makeStream(of: Void.self)
            let call = Task {
                try await echo.expand(.with {
                    $0.count = 10_000_000
                    $0.payload = Data(repeating: 1, count: 64)
                }) { response in
                    for try await _ in response.messages {
                        startedContinuation.yield()
                        try await Task.sleep(for: .milliseconds(1))
                    }
                }
            }
            var iterator = started.makeAsyncIterator()
            _ = await iterator.next()
            call.cancel()
            _ = await call.result
            try await eventually { service.cancelledCount == 1 }
            try await eventually { await server.openStreamCount == 0 }
            // The connection is still good.
            let after = try await echo.get(.with { $0.text = "after" })
            #expect(after.text == "after")
        }
    }

    @Test("a server that cancels a stream fails the call with its code")
    func serverCancellation() async throws {
        let server = try await RawWireServer.start(certificates: self.certificates) { frame in
            guard frame.headers != nil else { return [] }
            return [
                WireFrame(streamID: frame.streamID, headers: .init()),
                WireFrame(streamID: frame.streamID, cancel: .init(code: UInt32(Status.Code.aborted.rawValue), message: "changed my mind")),
            ]
        }
        defer { Task { await server.stop() } }
        try await withWireClient(endpoints: [.init(host: "127.0.0.1", port: server.port)], security: self.certificates.security("client")) { client, transport in
            let echo = Sparkops_Testing_V1_EchoService.Client(wrapping: client)
            await #expect {
                _ = try await echo.expand(.with { $0.text = "a b" }) { response in
                    for try await _ in response.messages {}
                }
            } throws: { error in
                let rpcError = error as? RPCError
                return rpcError?.code == .aborted && rpcError?.message == "changed my mind"
            }
            #expect(transport.readyConnectionCount == 1)
        }
    }

    @Test("a stream never gets more messages than the window the reader granted")
    func flowControl() async throws {
        try await withWireServer(services: [EchoService()], security: self.certificates.security("echo")) { _, port in
            let window: UInt32 = 16
            let client = try await RawWireClient.handshake(port: port, certificates: self.certificates, settings: .init(initialWindow: window))
            defer { Task { await client.close() } }
            try await client.send(WireFrame(
                streamID: 1,
                headers: .init(method: "/sparkops.testing.v1.EchoService/Expand"),
                messages: [Self.echoRequest("flow", count: 1000)],
                endStream: true
            ))
            func received() -> Int { client.frames(on: 1).reduce(0) { $0 + $1.messages.count } }
            try await client.log.wait { _, _ in received() == Int(window) }
            try await Task.sleep(for: .milliseconds(300))
            #expect(received() == Int(window), "the server sent past the window")

            try await client.send(WireFrame(streamID: 1, windowUpdate: 10))
            try await client.log.wait { _, _ in received() == Int(window) + 10 }
            try await Task.sleep(for: .milliseconds(200))
            #expect(received() == Int(window) + 10)
        }
    }

    @Test("a slow reader of a long stream gets every message, and both sides stay within the window")
    func slowReader() async throws {
        try await withEchoPair(
            certificates: self.certificates,
            configureClient: { $0.limits.initialWindow = 8 }
        ) { echo, _, _ in
            let total = try await echo.expand(.with {
                $0.count = 400
                $0.payload = Data(repeating: 3, count: 1024)
            }) { response in
                var total = 0
                for try await message in response.messages {
                    total += message.payload.count
                    if total % (64 * 1024) == 0 { try await Task.sleep(for: .milliseconds(20)) }
                }
                return total
            }
            #expect(total == 400 * 1024)
        }
    }

    @Test("a slow reader's connection holds at most its byte limit of unread messages")
    func bufferedBytesAreBounded() async throws {
        let limit = 1 << 20
        let frame = 256 << 10
        try await withWireServer(services: [EchoService()], security: self.certificates.security("echo")) { _, port in
            try await withWireClient(
                endpoints: [.init(host: "127.0.0.1", port: port)],
                security: self.certificates.security("client"),
                configure: { $0.limits = SparkWireConnectionLimits(maxFrameSize: frame, initialWindow: 1024, maxBufferedBytes: limit) }
            ) { client, transport in
                let echo = Sparkops_Testing_V1_EchoService.Client(wrapping: client)
                // 1,024 messages of 100 KiB would be allowed by the window: 100 MiB.
                let received = try await echo.expand(.with {
                    $0.count = 200
                    $0.payload = Data(repeating: 5, count: 100 << 10)
                }) { response in
                    var count = 0
                    for try await _ in response.messages {
                        count += 1
                        if count % 10 == 0 { try await Task.sleep(for: .milliseconds(10)) }
                    }
                    return count
                }
                #expect(received == 200)
                #expect(transport.peakBufferedBytes > 0)
                #expect(transport.peakBufferedBytes <= limit + 2 * frame, "peak \(transport.peakBufferedBytes)")
            }
        }
    }

    @Test("a message larger than the peer's frame limit fails the call locally with RESOURCE_EXHAUSTED")
    func oversizedMessage() async throws {
        try await withEchoPair(
            certificates: self.certificates,
            configureServer: { $0.limits.maxFrameSize = 64 * 1024 }
        ) { echo, _, _ in
            await #expect {
                _ = try await echo.get(.with { $0.payload = Data(repeating: 0, count: 100 * 1024) })
            } throws: { error in
                (error as? RPCError)?.code == .resourceExhausted
            }
            let fits = try await echo.get(.with { $0.payload = Data(repeating: 0, count: 60 * 1024) })
            #expect(fits.payload.count == 60 * 1024)
        }
    }

    @Test("large messages split across frames reassemble")
    func largeMessages() async throws {
        try await withEchoPair(certificates: self.certificates) { echo, _, _ in
            let payload = Data((0 ..< 3_000_000).map { UInt8(truncatingIfNeeded: $0) })
            let response = try await echo.get(.with { $0.payload = payload })
            #expect(response.payload == payload)
        }
    }
}

/// Polls `condition` until it holds, for at most `timeout`: generous, since it returns as soon as
/// the condition holds and the bound only has to catch one that never comes, on a loaded machine.
func eventually(
    timeout: Duration = .seconds(60),
    _ condition: () async throws -> Bool,
    sourceLocation: SourceLocation = #_sourceLocation
) async throws {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if try await condition() { return }
        try await Task.sleep(for: .milliseconds(10))
    }
    Issue.record("condition did not hold within \(timeout)", sourceLocation: sourceLocation)
}
