import Foundation
import NIOCore
import NIOPosix

/// One HTTP/1.1 exchange written byte for byte over a loopback TCP connection.
///
/// For requests a full client will not send as written: repeated headers, protocol upgrades
/// whose `101` answer must be seen rather than followed, malformed request lines.
public enum RawHTTP {
    public struct Reply: Sendable {
        public var status: Int
        public var headers: [(name: String, value: String)]
        public var body: String
        /// After a `101` to a WebSocket handshake: the server's frames, up to its close frame.
        public var frames: [(opcode: UInt8, payload: [UInt8])] = []

        /// The text frames' payloads, decoded as JSON objects.
        public var textMessages: [[String: Any]] {
            self.frames.filter { $0.opcode == 0x1 }.compactMap {
                (try? JSONSerialization.jsonObject(with: Data($0.payload))) as? [String: Any]
            }
        }

        /// The close frame's status code.
        public var closeCode: UInt16? {
            guard let close = self.frames.first(where: { $0.opcode == 0x8 }), close.payload.count >= 2 else { return nil }
            return UInt16(close.payload[0]) << 8 | UInt16(close.payload[1])
        }

        public func header(_ name: String) -> String? {
            self.headers.first { $0.name.caseInsensitiveCompare(name) == .orderedSame }?.value
        }

        /// `error.message` / `error.field` of a SparkOps error body.
        public var errorMessage: String? { self.error?["message"] as? String }
        /// The field an error names: in its details (HTTP answers), or in the object itself (a
        /// WebSocket's error message).
        public var errorField: String? {
            (self.error?["details"] as? [[String: Any]])?.first?["field"] as? String ?? self.error?["field"] as? String
        }

        private var error: [String: Any]? {
            let object = (try? JSONSerialization.jsonObject(with: Data(self.body.utf8))) as? [String: Any]
            return object?["error"] as? [String: Any]
        }
    }

    /// Sends `head` (request line and headers, without the blank line) and reads the answer:
    /// the head, then the body by `Content-Length`. A `101` answer ends at its head, or with
    /// `untilClose`, at the server's WebSocket close frame. Bounded by 10 s.
    /// `rawBody` is sent as it is, with no `Content-Length` added (a chunked body, say).
    public static func exchange(port: Int, head: [String], body: String = "", rawBody: String = "", untilClose: Bool = false) async throws -> Reply {
        var request = head.joined(separator: "\r\n") + "\r\n"
        if !body.isEmpty { request += "Content-Length: \(body.utf8.count)\r\n" }
        request += "\r\n" + body + rawBody

        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connectTimeout(.seconds(5))
            .connect(host: "127.0.0.1", port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                }
            }

        // The bound: the connection is closed under the reader after 10 s.
        let deadline = channel.channel.eventLoop.scheduleTask(in: .seconds(10)) { channel.channel.close(promise: nil) }
        defer { deadline.cancel() }
        return try await channel.executeThenClose { inbound, outbound in
            try await outbound.write(ByteBuffer(string: request))
            var received: [UInt8] = []
            for try await chunk in inbound {
                received += chunk.readableBytesView
                if let reply = Self.parse(received, untilClose: untilClose) { return reply }
            }
            throw TestSetupError(description: "no complete answer from port \(port) within 10 s: \(String(decoding: received, as: UTF8.self))")
        }
    }

    /// Sends `bytes` exactly as given and reads the answer; nil when the server closed the
    /// connection without one (as a server may for bytes that are not HTTP), or gave none within
    /// `limit` (as it does while it waits for the rest of an incomplete request).
    public static func exchange(port: Int, bytes: [UInt8], within limit: Duration) async throws -> Reply? {
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connectTimeout(.seconds(5))
            .connect(host: "127.0.0.1", port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                }
            }
        let deadline = channel.channel.eventLoop.scheduleTask(in: .nanoseconds(Int64(limit.components.seconds) * 1_000_000_000)) {
            channel.channel.close(promise: nil)
        }
        defer { deadline.cancel() }
        var received: [UInt8] = []
        do {
            try await channel.executeThenClose { inbound, outbound in
                try await outbound.write(ByteBuffer(bytes: bytes))
                for try await chunk in inbound {
                    received += chunk.readableBytesView
                    if Self.parse(received, untilClose: false) != nil { return }
                }
            }
        } catch is ChannelError {
            // Reset or closed under the reader: what arrived before is the answer, if anything.
        } catch is IOError {
        }
        return Self.parse(received, untilClose: false)
    }

    /// The answer in `bytes`, or nil while it is incomplete.
    static func parse(_ bytes: [UInt8], untilClose: Bool) -> Reply? {
        let separator: [UInt8] = Array("\r\n\r\n".utf8)
        guard let end = bytes.indices.dropLast(3).first(where: { Array(bytes[$0..<$0 + 4]) == separator }) else { return nil }
        let lines = String(decoding: bytes[..<end], as: UTF8.self).components(separatedBy: "\r\n")
        let statusParts = lines[0].split(separator: " ")
        guard statusParts.count >= 2, let status = Int(statusParts[1]) else { return nil }
        let headers = lines.dropFirst().compactMap { line -> (name: String, value: String)? in
            guard let colon = line.firstIndex(of: ":") else { return nil }
            return (String(line[..<colon]), line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces))
        }
        let bodyStart = end + 4
        if status == 101 {
            var reply = Reply(status: status, headers: headers, body: "")
            guard untilClose else { return reply }
            var offset = bodyStart
            while let (opcode, payload, next) = Self.frame(bytes, at: offset) {
                reply.frames.append((opcode, payload))
                if opcode == 0x8 { return reply }
                offset = next
            }
            return nil
        }
        let length = headers.first { $0.name.lowercased() == "content-length" }.flatMap { Int($0.value) } ?? 0
        guard bytes.count - bodyStart >= length else { return nil }
        return Reply(status: status, headers: headers, body: String(decoding: bytes[bodyStart..<bodyStart + length], as: UTF8.self))
    }

    /// One unmasked server frame at `offset`: opcode, payload and the next offset; nil while incomplete.
    public static func frame(_ bytes: [UInt8], at offset: Int) -> (UInt8, [UInt8], Int)? {
        guard bytes.count >= offset + 2 else { return nil }
        let opcode = bytes[offset] & 0x0F
        var length = Int(bytes[offset + 1] & 0x7F)
        var start = offset + 2
        if length == 126 {
            guard bytes.count >= offset + 4 else { return nil }
            length = Int(bytes[offset + 2]) << 8 | Int(bytes[offset + 3])
            start = offset + 4
        } else if length == 127 {
            guard bytes.count >= offset + 10 else { return nil }
            length = bytes[(offset + 2)..<(offset + 10)].reduce(0) { $0 << 8 | Int($1) }
            start = offset + 10
        }
        guard bytes.count >= start + length else { return nil }
        return (opcode, Array(bytes[start..<start + length]), start + length)
    }
}
