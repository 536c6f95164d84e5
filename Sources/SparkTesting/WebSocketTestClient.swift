import Foundation
import NIOCore
import NIOPosix

/// A WebSocket client for tests, written against RFC 6455 over a plain loopback TCP connection:
/// the handshake, masked client frames, and the server's frames read from the very bytes that
/// follow the `101` (a server may send its first message in the same packet as the handshake).
public final class WebSocketTestClient {
    /// How a conversation ended.
    public struct Outcome: Sendable {
        /// The close code the server sent, if it closed the socket.
        public var serverCloseCode: UInt16?
    }

    private var inbound: NIOAsyncChannelInboundStream<ByteBuffer>.AsyncIterator
    private let outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>
    private let channel: any Channel
    private var buffer: [UInt8]
    private(set) var serverCloseCode: UInt16?

    private init(
        inbound: NIOAsyncChannelInboundStream<ByteBuffer>.AsyncIterator,
        outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>,
        channel: any Channel,
        buffer: [UInt8]
    ) {
        self.inbound = inbound
        self.outbound = outbound
        self.channel = channel
        self.buffer = buffer
    }

    /// Connects to `ws://127.0.0.1:<port><path>`, runs `script`, then closes the socket (unless the
    /// server did). Fails when the handshake does not answer `101`.
    public static func converse(
        port: Int,
        path: String,
        headers: [String] = [],
        _ script: (WebSocketTestClient) async throws -> Void
    ) async throws -> Outcome {
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connectTimeout(.seconds(5))
            .connect(host: "127.0.0.1", port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                }
            }
        // The server may close the TCP connection right after its close frame; closing it again
        // here is not an error of the conversation.
        var outcome: Outcome?
        do {
            try await channel.executeThenClose { inbound, outbound in
                outcome = try await Self.run(channel: channel.channel, port: port, path: path, headers: headers, inbound: inbound, outbound: outbound, script)
            }
        } catch let error as ChannelError where outcome != nil && (error == .ioOnClosedChannel || error == .alreadyClosed) {}
        return outcome!
    }

    private static func run(
        channel: any Channel,
        port: Int,
        path: String,
        headers: [String],
        inbound: NIOAsyncChannelInboundStream<ByteBuffer>,
        outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>,
        _ script: (WebSocketTestClient) async throws -> Void
    ) async throws -> Outcome {
        let key = Data((0..<16).map { _ in UInt8.random(in: 0...255) }).base64EncodedString()
        let head = [
            "GET \(path) HTTP/1.1", "Host: 127.0.0.1:\(port)", "Connection: Upgrade", "Upgrade: websocket",
            "Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: \(key)",
        ] + headers
        try await outbound.write(ByteBuffer(string: head.joined(separator: "\r\n") + "\r\n\r\n"))

        var iterator = inbound.makeAsyncIterator()
        var received: [UInt8] = []
        let separator = Array("\r\n\r\n".utf8)
        let deadline = channel.eventLoop.scheduleTask(in: .seconds(10)) { channel.close(promise: nil) }
        var headEnd: Int?
        while headEnd == nil {
            guard let chunk = try await iterator.next() else {
                throw TestSetupError(description: "the server closed the connection during the WebSocket handshake")
            }
            received += chunk.readableBytesView
            headEnd = received.indices.dropLast(3).first { Array(received[$0..<$0 + 4]) == separator }
        }
        deadline.cancel()
        let statusLine = String(decoding: received.prefix { $0 != 13 }, as: UTF8.self)
        guard statusLine.split(separator: " ").dropFirst().first == "101" else {
            throw TestSetupError(description: "WebSocket handshake refused: \(statusLine)")
        }
        let client = WebSocketTestClient(
            inbound: iterator,
            outbound: outbound,
            channel: channel,
            buffer: Array(received[(headEnd! + 4)...])
        )
        try await script(client)
        if client.serverCloseCode == nil {
            // The server may be closing already (its close frame in flight, or the connection
            // gone): then the write fails and the read below finds its close frame.
            try? await client.sendFrame(opcode: 0x8, payload: [0x03, 0xE8])  // 1000, normal closure
            // Read (bounded) until the server's close frame.
            while client.serverCloseCode == nil, (try? await client.nextFrame(within: .seconds(5))) != nil {}
        }
        return Outcome(serverCloseCode: client.serverCloseCode)
    }

    /// Sends a JSON object as a text message.
    public func send(_ object: [String: Any]) async throws {
        try await self.sendText(String(decoding: try JSONSerialization.data(withJSONObject: object), as: UTF8.self))
    }

    public func sendText(_ text: String) async throws {
        try await self.sendFrame(opcode: 0x1, payload: Array(text.utf8))
    }

    /// The next text message as a JSON object (non-JSON text as `["text": …]`); empty when the
    /// server closed the socket. Bounded by 10 s.
    public func receive() async throws -> [String: Any] {
        while let (opcode, payload) = try await self.nextFrame(within: .seconds(10)) {
            switch opcode {
            case 0x1:
                let object = try? JSONSerialization.jsonObject(with: Data(payload))
                return object as? [String: Any] ?? ["text": String(decoding: payload, as: UTF8.self)]
            case 0x9:
                try await self.sendFrame(opcode: 0xA, payload: payload)  // pong
            default:
                continue
            }
        }
        return [:]
    }

    /// The next frame, or nil once the server has closed (answering its close frame).
    private func nextFrame(within limit: Duration) async throws -> (UInt8, [UInt8])? {
        if self.serverCloseCode != nil && self.buffer.isEmpty { return nil }
        let channel = self.channel
        let timer = channel.eventLoop.scheduleTask(in: .nanoseconds(Int64(limit.components.seconds) * 1_000_000_000)) {
            channel.close(promise: nil)
        }
        defer { timer.cancel() }
        while true {
            if let (opcode, payload, next) = RawHTTP.frame(self.buffer, at: 0) {
                self.buffer.removeFirst(next)
                if opcode == 0x8 {
                    self.serverCloseCode = payload.count >= 2 ? UInt16(payload[0]) << 8 | UInt16(payload[1]) : 1005
                    try? await self.sendFrame(opcode: 0x8, payload: Array(payload.prefix(2)))
                    return nil
                }
                return (opcode, payload)
            }
            guard let chunk = try await self.inbound.next() else {
                throw TestSetupError(description: "the WebSocket connection ended without a close frame (or nothing arrived within \(limit))")
            }
            self.buffer += chunk.readableBytesView
        }
    }

    /// Writes one final frame, masked as a client must.
    private func sendFrame(opcode: UInt8, payload: [UInt8]) async throws {
        var frame: [UInt8] = [0x80 | opcode]
        if payload.count < 126 {
            frame.append(0x80 | UInt8(payload.count))
        } else if payload.count <= 0xFFFF {
            frame += [0x80 | 126, UInt8(payload.count >> 8), UInt8(payload.count & 0xFF)]
        } else {
            frame.append(0x80 | 127)
            frame += (0..<8).reversed().map { UInt8((payload.count >> ($0 * 8)) & 0xFF) }
        }
        let mask = (0..<4).map { _ in UInt8.random(in: 0...255) }
        frame += mask
        frame += payload.enumerated().map { $0.element ^ mask[$0.offset % 4] }
        try await self.outbound.write(ByteBuffer(bytes: frame))
    }
}
