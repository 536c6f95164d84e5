import Foundation
import GRPCCore
import NIOCore
import SparkProto
@testable import SparkWire
import SwiftProtobuf
import Testing

@Suite("Frame encoding")
struct FrameCodecTests {
    static let samples: [WireFrame] = [
        WireFrame(streamID: 0, settings: .init(version: 1, initialWindow: 32, maxFrameSize: 65536, maxConcurrentStreams: 7)),
        WireFrame(
            streamID: 1,
            headers: .init(method: "/sparkops.testing.v1.EchoService/Get", timeoutMicros: 1_500_000, metadata: ["x-a": "1", "x-b-bin": .binary([0, 255])]),
            messages: [ByteBuffer(bytes: [1, 2, 3])],
            endStream: true
        ),
        WireFrame(streamID: 3, messages: [ByteBuffer(), ByteBuffer(bytes: Array(repeating: 9, count: 300))]),
        WireFrame(
            streamID: 5,
            headers: .init(metadata: ["server": "sparkops"]),
            messages: [ByteBuffer(string: "reply")],
            trailers: .init(code: 0, metadata: ["t": "v"])
        ),
        WireFrame(streamID: 7, trailers: .init(code: 5, message: "run_01 not found — ü")),
        WireFrame(streamID: 9, cancel: .init(code: 1, message: "bye")),
        WireFrame(streamID: 11, windowUpdate: 32),
        WireFrame(streamID: 0, ping: .init(payload: .max, ack: true)),
        WireFrame(streamID: 0, goAway: .init(lastStreamID: 4_000_000_001, code: 14, message: "draining")),
        WireFrame(streamID: .max, headers: .init(method: "/a/b"), endStream: true),
    ]

    @Test("every part survives encode then decode", arguments: Self.samples)
    func roundTrip(frame: WireFrame) throws {
        var buffer = ByteBuffer()
        frame.encode(into: &buffer)
        #expect(buffer.getInteger(at: 0, as: UInt32.self) == UInt32(frame.encodedSize))
        #expect(buffer.readableBytes == frame.encodedSize + 4)
        buffer.moveReaderIndex(forwardBy: 4)
        #expect(try WireFrame.decode(buffer) == frame)
    }

    @Test("the hand-written encoding is what swift-protobuf reads and writes", arguments: Self.samples)
    func matchesSwiftProtobuf(frame: WireFrame) throws {
        var buffer = ByteBuffer()
        frame.encode(into: &buffer)
        buffer.moveReaderIndex(forwardBy: 4)
        let generated = try Sparkops_Wire_V1_Frame(serializedBytes: Array(buffer: buffer))
        #expect(generated.streamID == frame.streamID)
        #expect(generated.hasHeaders == (frame.headers != nil))
        #expect(generated.headers.method == (frame.headers?.method ?? ""))
        #expect(generated.headers.timeoutMicros == (frame.headers?.timeoutMicros ?? 0))
        #expect(generated.headers.metadata.count == (frame.headers?.metadata.count ?? 0))
        #expect(generated.messages.map { Array($0) } == frame.messages.map { Array(buffer: $0) })
        #expect(generated.endStream == frame.endStream)
        #expect(generated.hasTrailers == (frame.trailers != nil))
        #expect(generated.trailers.code == (frame.trailers?.code ?? 0))
        #expect(generated.trailers.message == (frame.trailers?.message ?? ""))
        #expect(generated.hasCancel == (frame.cancel != nil))
        #expect(generated.hasWindowUpdate == (frame.windowUpdate != nil))
        #expect(generated.windowUpdate.increment == (frame.windowUpdate ?? 0))
        #expect(generated.hasSettings == (frame.settings != nil))
        #expect(generated.hasPing == (frame.ping != nil))
        #expect(generated.ping.ack == (frame.ping?.ack ?? false))
        #expect(generated.hasGoAway == (frame.goAway != nil))
        #expect(generated.goAway.lastStreamID == (frame.goAway?.lastStreamID ?? 0))

        // And the other way: swift-protobuf's bytes decode to the same frame.
        let bytes: [UInt8] = try generated.serializedBytes()
        #expect(try WireFrame.decode(ByteBuffer(bytes: bytes)) == frame)
    }

    @Test("the byte-by-byte example in docs/wire-protocol.md is what the encoder writes")
    func documentedExample() {
        var request = ByteBuffer()
        WireFrame(
            streamID: 1,
            headers: .init(method: "/sparkops.testing.v1.EchoService/Get", timeoutMicros: 1_000_000),
            messages: [ByteBuffer(bytes: [0x0A, 0x02, 0x68, 0x69])],
            endStream: true
        ).encode(into: &request)
        let method = Array("/sparkops.testing.v1.EchoService/Get".utf8)
        let expected: [UInt8] = [0, 0, 0, 0x36, 0x08, 0x01, 0x12, 0x2A, 0x0A, 0x24] + method + [0x10, 0xC0, 0x84, 0x3D, 0x1A, 0x04, 0x0A, 0x02, 0x68, 0x69, 0x20, 0x01]
        #expect(Array(buffer: request) == expected)

        var response = ByteBuffer()
        WireFrame(streamID: 1, headers: .init(), messages: [ByteBuffer(bytes: [0x0A, 0x02, 0x68, 0x69])], trailers: .init(code: 0)).encode(into: &response)
        #expect(Array(buffer: response) == [0, 0, 0, 0x0C, 0x08, 0x01, 0x12, 0x00, 0x1A, 0x04, 0x0A, 0x02, 0x68, 0x69, 0x2A, 0x00])
    }

    @Test("metadata keeps order, text and binary values")
    func metadataKinds() throws {
        var generated = Sparkops_Wire_V1_Frame()
        generated.streamID = 1
        generated.headers.method = "/s/m"
        generated.headers.metadata = [
            .with { $0.key = "k"; $0.text = "" },
            .with { $0.key = "k"; $0.text = "two" },
            .with { $0.key = "blob-bin"; $0.binary = Data([0, 1]) },
        ]
        let frame = try WireFrame.decode(ByteBuffer(bytes: try generated.serializedBytes() as [UInt8]))
        let values = frame.headers!.metadata.map { $0 }
        #expect(values.count == 3)
        #expect(values[0].key == "k" && values[0].value == .string(""))
        #expect(values[1].key == "k" && values[1].value == .string("two"))
        #expect(values[2].key == "blob-bin" && values[2].value == .binary([0, 1]))
    }

    @Test("unknown fields are skipped")
    func unknownFields() throws {
        // stream_id = 3, then field 99 (varint 1), field 100 (length-delimited "xy"), field 101 (fixed32), field 102 (fixed64).
        var bytes: [UInt8] = [0x08, 0x03]
        bytes += [0x98, 0x06, 0x01]
        bytes += [0xA2, 0x06, 0x02, 0x78, 0x79]
        bytes += [0xAD, 0x06, 1, 2, 3, 4]
        bytes += [0xB1, 0x06, 1, 2, 3, 4, 5, 6, 7, 8]
        bytes += [0x20, 0x01]
        let frame = try WireFrame.decode(ByteBuffer(bytes: bytes))
        #expect(frame.streamID == 3)
        #expect(frame.endStream)
    }

    static let malformed: [(String, [UInt8])] = [
        ("truncated varint", [0x08, 0x80]),
        ("varint longer than 10 bytes", [0x08] + Array(repeating: 0xFF, count: 10) + [0x01]),
        ("length past the end", [0x1A, 0x05, 0x01]),
        ("field number 0", [0x00, 0x01]),
        ("group wire type", [0x0B]),
        ("wire type 7", [0x0F]),
        ("stream_id as bytes", [0x0A, 0x00]),
        ("invalid UTF-8 method", [0x12, 0x04, 0x0A, 0x02, 0xC3, 0x28]),
        ("upper-case metadata key", [0x12, 0x07, 0x1A, 0x05, 0x0A, 0x01, 0x4B, 0x12, 0x00]),
        ("binary value without -bin", [0x12, 0x07, 0x1A, 0x05, 0x0A, 0x01, 0x6B, 0x1A, 0x00]),
        ("empty metadata key", [0x12, 0x04, 0x1A, 0x02, 0x12, 0x00]),
        ("truncated fixed64", [0xB1, 0x06, 1, 2]),
    ]

    @Test("malformed frames are rejected with a reason", arguments: Self.malformed)
    func malformedFrames(name: String, bytes: [UInt8]) {
        #expect(throws: WireFrameError.self, "\(name)") {
            _ = try WireFrame.decode(ByteBuffer(bytes: bytes))
        }
    }

    @Test("the decoder refuses an oversized prefix before buffering the frame")
    func oversizedPrefix() throws {
        var decoder = FrameDecoder(maxFrameSize: 1024)
        var buffer = ByteBuffer(bytes: [0x00, 0x00, 0x04, 0x01])  // 1025
        #expect(throws: WireFrameError(.tooLarge, "length prefix 1025 exceeds the maximum of 1024 bytes")) {
            _ = try decoder.decode(buffer: &buffer)
        }
    }

    @Test("the decoder waits for a whole frame and then yields it")
    func partialFrames() throws {
        var frameBytes = ByteBuffer()
        Self.samples[1].encode(into: &frameBytes)
        Self.samples[2].encode(into: &frameBytes)
        var decoder = FrameDecoder(maxFrameSize: 1 << 20)
        var buffer = ByteBuffer()
        var decoded: [WireFrame] = []
        for byte in frameBytes.readableBytesView {
            buffer.writeInteger(byte)
            if let frame = try decoder.decode(buffer: &buffer) { decoded.append(frame) }
        }
        #expect(decoded == [Self.samples[1], Self.samples[2]])
        #expect(buffer.readableBytes == 0)
    }

    @Test("timeouts in microseconds round up")
    func wireMicroseconds() {
        #expect(Duration.nanoseconds(1).wireMicroseconds == 1)
        #expect(Duration.milliseconds(250).wireMicroseconds == 250_000)
        #expect(Duration.seconds(-1).wireMicroseconds == 0)
        #expect(GRPCTimeout.parse("100m") == .milliseconds(100))
        #expect(GRPCTimeout.parse("7S") == .seconds(7))
        #expect(GRPCTimeout.parse("123456789m") == nil)
        #expect(GRPCTimeout.parse("m") == nil)
    }
}

extension WireFrame: CustomTestStringConvertible {
    public var testDescription: String { self.summary }
}
