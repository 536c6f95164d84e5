import GRPCCore
import NIOCore

/// The fuzz target's body: bytes from the fuzzer go through the frame decoder, in chunks, and
/// every decoded frame through a server and a client state machine, with the protocol's invariants
/// checked after each step. A violated invariant traps, which libFuzzer reports as a finding.
package enum WireFuzzing {
    package static func run(_ bytes: UnsafeRawBufferPointer) {
        guard let first = bytes.first else { return }
        // The first byte picks how the rest is cut into reads, as a socket would deliver it.
        let chunkSize = Int(first % 64) + 1
        let body = bytes.dropFirst()

        var decoder = FrameDecoder(maxFrameSize: 1 << 16)
        let limits = ConnectionStateMachine.Limits(initialWindow: 8, maxFrameSize: 1 << 16, maxConcurrentStreams: 4)
        var server = ConnectionStateMachine(role: .server, local: limits)
        var client = ConnectionStateMachine(role: .client, local: limits)
        _ = client.receive(WireFrame(streamID: 0, settings: .init()))
        for id in stride(from: UInt32(1), through: 7, by: 2) {
            _ = client.openLocalStream(id)
        }

        var buffer = ByteBuffer()
        var index = body.startIndex
        while index < body.endIndex {
            let end = min(index + chunkSize, body.endIndex)
            buffer.writeBytes(UnsafeRawBufferPointer(rebasing: bytes[index ..< end]))
            index = end
            while true {
                let frame: WireFrame?
                do {
                    frame = try decoder.decode(buffer: &buffer)
                } catch {
                    return  // A decoding error ends the connection; nothing further is read.
                }
                guard let frame else { break }
                Self.checkRoundTrip(frame)
                Self.step(&server, frame)
                Self.step(&client, frame)
            }
        }
    }

    /// Re-encoding a decoded frame and decoding it again gives the same frame.
    private static func checkRoundTrip(_ frame: WireFrame) {
        var encoded = ByteBuffer()
        frame.encode(into: &encoded)
        precondition(encoded.readableBytes == frame.encodedSize + SparkWireProtocol.prefixLength, "encodedSize disagrees with encode")
        encoded.moveReaderIndex(forwardBy: SparkWireProtocol.prefixLength)
        guard let again = try? WireFrame.decode(encoded) else {
            preconditionFailure("a decoded frame did not decode after re-encoding")
        }
        precondition(again == frame, "re-encoding changed the frame")
    }

    private static func step(_ machine: inout ConnectionStateMachine, _ frame: WireFrame) {
        let action = machine.receive(frame)
        switch action {
        case .openStream(let delivery):
            // Answer some streams at once, as a handler would, to exercise closing.
            if delivery.endStream {
                _ = machine.willSend(WireFrame(streamID: delivery.streamID, trailers: .init(code: 0)))
            } else if !delivery.messages.isEmpty {
                _ = machine.willSend(WireFrame(streamID: delivery.streamID, windowUpdate: UInt32(delivery.messages.count)))
            }
        case .deliver(let delivery, _):
            if delivery.messages.count > 1 {
                _ = machine.willSend(WireFrame(streamID: delivery.streamID, windowUpdate: UInt32(delivery.messages.count)))
            }
        case .connectionError:
            precondition(machine.isClosed && machine.streams.isEmpty, "a connection error left streams behind")
        default:
            break
        }
        Self.checkInvariants(machine)
    }

    private static func checkInvariants(_ machine: ConnectionStateMachine) {
        precondition(machine.streams.count <= Int(machine.local.maxConcurrentStreams), "more streams than the limit")
        for (id, record) in machine.streams {
            precondition(id != 0 && id <= machine.highestStreamID, "stream id out of range")
            precondition(record.receiveWindow >= 0, "a receive window went negative")
            precondition(record.receiveWindow <= Int64(machine.local.initialWindow) + (1 << 32), "a receive window grew without bound")
        }
        if machine.isClosed {
            precondition(machine.streams.isEmpty, "a closed connection holds streams")
        }
    }

    /// Valid frames, one per file, to start the fuzzer from.
    package static var seeds: [(name: String, bytes: [UInt8])] {
        var metadata = Metadata()
        metadata.addString("value", forKey: "x-key")
        metadata.addBinary([0, 1, 2], forKey: "x-blob-bin")
        let frames: [(String, [WireFrame])] = [
            ("settings", [WireFrame(streamID: 0, settings: .init(initialWindow: 8, maxFrameSize: 65536, maxConcurrentStreams: 4))]),
            ("unary", [
                WireFrame(streamID: 0, settings: .init()),
                WireFrame(streamID: 1, headers: .init(method: "/sparkops.testing.v1.EchoService/Get", timeoutMicros: 1_000_000, metadata: metadata), messages: [ByteBuffer(bytes: [0x0A, 0x02, 0x68, 0x69])], endStream: true),
            ]),
            ("streaming", [
                WireFrame(streamID: 0, settings: .init()),
                WireFrame(streamID: 1, headers: .init(method: "/sparkops.testing.v1.EchoService/Update")),
                WireFrame(streamID: 1, messages: [ByteBuffer(bytes: [1]), ByteBuffer(bytes: [2]), ByteBuffer()]),
                WireFrame(streamID: 1, windowUpdate: 4),
                WireFrame(streamID: 1, endStream: true),
            ]),
            ("response", [
                WireFrame(streamID: 0, settings: .init()),
                WireFrame(streamID: 1, headers: .init(), messages: [ByteBuffer(bytes: [9, 9])], trailers: .init(code: 0, metadata: metadata)),
                WireFrame(streamID: 3, trailers: .init(code: 5, message: "not found")),
            ]),
            ("control", [
                WireFrame(streamID: 0, settings: .init()),
                WireFrame(streamID: 0, ping: .init(payload: 7)),
                WireFrame(streamID: 0, ping: .init(payload: 7, ack: true)),
                WireFrame(streamID: 5, cancel: .init(code: 1, message: "cancelled")),
                WireFrame(streamID: 0, goAway: .init(lastStreamID: 3, code: 0, message: "draining")),
            ]),
            ("many-streams", [WireFrame(streamID: 0, settings: .init())] + (0 ..< 6).map {
                WireFrame(streamID: UInt32(1 + 2 * $0), headers: .init(method: "/s/m"))
            }),
        ]
        return frames.map { name, frames in
            var buffer = ByteBuffer(bytes: [7])  // chunk size 8
            for frame in frames { frame.encode(into: &buffer) }
            return (name, Array(buffer: buffer))
        }
    }
}

