import GRPCCore
package import NIOCore

// Field numbers of sparkops.wire.v1 (proto/sparkops/wire/v1/frame.proto).
private enum FrameField {
    static let streamID: UInt32 = 1
    static let headers: UInt32 = 2
    static let messages: UInt32 = 3
    static let endStream: UInt32 = 4
    static let trailers: UInt32 = 5
    static let cancel: UInt32 = 6
    static let windowUpdate: UInt32 = 7
    static let settings: UInt32 = 8
    static let ping: UInt32 = 9
    static let goAway: UInt32 = 10
}

extension WireFrame {
    /// The size of the frame's protobuf encoding, without the length prefix.
    package var encodedSize: Int {
        var size = ProtobufWire.varintFieldSize(field: FrameField.streamID, UInt64(self.streamID))
        if let headers = self.headers {
            size += ProtobufWire.lengthDelimitedSize(field: FrameField.headers, payload: headers.encodedSize)
        }
        for message in self.messages {
            size += ProtobufWire.lengthDelimitedSize(field: FrameField.messages, payload: message.readableBytes)
        }
        if self.endStream { size += 2 }
        if let trailers = self.trailers {
            size += ProtobufWire.lengthDelimitedSize(field: FrameField.trailers, payload: trailers.encodedSize)
        }
        if let cancel = self.cancel {
            size += ProtobufWire.lengthDelimitedSize(field: FrameField.cancel, payload: cancel.encodedSize)
        }
        if let increment = self.windowUpdate {
            let payload = ProtobufWire.varintFieldSize(field: 1, UInt64(increment))
            size += ProtobufWire.lengthDelimitedSize(field: FrameField.windowUpdate, payload: payload)
        }
        if let settings = self.settings {
            size += ProtobufWire.lengthDelimitedSize(field: FrameField.settings, payload: settings.encodedSize)
        }
        if let ping = self.ping {
            size += ProtobufWire.lengthDelimitedSize(field: FrameField.ping, payload: ping.encodedSize)
        }
        if let goAway = self.goAway {
            size += ProtobufWire.lengthDelimitedSize(field: FrameField.goAway, payload: goAway.encodedSize)
        }
        return size
    }

    /// Writes the 4-byte big-endian length and then the frame's protobuf encoding.
    package func encode(into buffer: inout ByteBuffer) {
        let size = self.encodedSize
        buffer.reserveCapacity(minimumWritableBytes: SparkWireProtocol.prefixLength + size)
        buffer.writeInteger(UInt32(size))
        buffer.writeVarintField(FrameField.streamID, UInt64(self.streamID))
        if let headers = self.headers {
            buffer.writeLengthDelimitedHeader(FrameField.headers, length: headers.encodedSize)
            headers.encodeFields(into: &buffer)
        }
        for message in self.messages {
            buffer.writeLengthDelimitedHeader(FrameField.messages, length: message.readableBytes)
            buffer.writeImmutableBuffer(message)
        }
        if self.endStream {
            buffer.writeVarintField(FrameField.endStream, 1)
        }
        if let trailers = self.trailers {
            buffer.writeLengthDelimitedHeader(FrameField.trailers, length: trailers.encodedSize)
            trailers.encodeFields(into: &buffer)
        }
        if let cancel = self.cancel {
            buffer.writeLengthDelimitedHeader(FrameField.cancel, length: cancel.encodedSize)
            buffer.writeVarintField(1, UInt64(cancel.code))
            buffer.writeStringField(2, cancel.message)
        }
        if let increment = self.windowUpdate {
            buffer.writeLengthDelimitedHeader(
                FrameField.windowUpdate,
                length: ProtobufWire.varintFieldSize(field: 1, UInt64(increment))
            )
            buffer.writeVarintField(1, UInt64(increment))
        }
        if let settings = self.settings {
            buffer.writeLengthDelimitedHeader(FrameField.settings, length: settings.encodedSize)
            buffer.writeVarintField(1, UInt64(settings.version))
            buffer.writeVarintField(2, UInt64(settings.initialWindow))
            buffer.writeVarintField(3, UInt64(settings.maxFrameSize))
            buffer.writeVarintField(4, UInt64(settings.maxConcurrentStreams))
        }
        if let ping = self.ping {
            buffer.writeLengthDelimitedHeader(FrameField.ping, length: ping.encodedSize)
            buffer.writeVarintField(1, ping.payload)
            buffer.writeVarintField(2, ping.ack ? 1 : 0)
        }
        if let goAway = self.goAway {
            buffer.writeLengthDelimitedHeader(FrameField.goAway, length: goAway.encodedSize)
            buffer.writeVarintField(1, UInt64(goAway.lastStreamID))
            buffer.writeVarintField(2, UInt64(goAway.code))
            buffer.writeStringField(3, goAway.message)
        }
    }

    /// Decodes the protobuf encoding of a frame (without its length prefix).
    ///
    /// Unknown fields are skipped, as protobuf requires; a repeated singular field merges as protobuf
    /// merges. Throws ``WireFrameError`` with kind `.malformed` for anything else that is not a valid
    /// `sparkops.wire.v1.Frame`, including strings that are not UTF-8 and metadata keys that gRPC
    /// does not allow.
    package static func decode(_ buffer: ByteBuffer) throws(WireFrameError) -> WireFrame {
        var reader = ProtobufReader(buffer)
        var frame = WireFrame(streamID: 0)
        while !reader.isAtEnd {
            let (field, type) = try reader.readTag()
            switch field {
            case FrameField.streamID:
                frame.streamID = UInt32(truncatingIfNeeded: try reader.readVarintField(type, field: "stream_id"))
            case FrameField.headers:
                var headers = frame.headers ?? Headers()
                try headers.merge(try reader.readLengthDelimitedField(type, field: "headers"))
                frame.headers = headers
            case FrameField.messages:
                frame.messages.append(try reader.readLengthDelimitedField(type, field: "messages"))
            case FrameField.endStream:
                frame.endStream = try reader.readVarintField(type, field: "end_stream") != 0
            case FrameField.trailers:
                var trailers = frame.trailers ?? Trailers(code: 0)
                try trailers.merge(try reader.readLengthDelimitedField(type, field: "trailers"))
                frame.trailers = trailers
            case FrameField.cancel:
                var cancel = frame.cancel ?? Cancel(code: 0)
                try cancel.merge(try reader.readLengthDelimitedField(type, field: "cancel"))
                frame.cancel = cancel
            case FrameField.windowUpdate:
                var sub = ProtobufReader(try reader.readLengthDelimitedField(type, field: "window_update"))
                var increment = frame.windowUpdate ?? 0
                while !sub.isAtEnd {
                    let (subField, subType) = try sub.readTag()
                    if subField == 1 {
                        increment = UInt32(truncatingIfNeeded: try sub.readVarintField(subType, field: "increment"))
                    } else {
                        try sub.skip(subType)
                    }
                }
                frame.windowUpdate = increment
            case FrameField.settings:
                var settings = frame.settings ?? Settings(version: 0)
                try settings.merge(try reader.readLengthDelimitedField(type, field: "settings"))
                frame.settings = settings
            case FrameField.ping:
                var ping = frame.ping ?? Ping(payload: 0)
                try ping.merge(try reader.readLengthDelimitedField(type, field: "ping"))
                frame.ping = ping
            case FrameField.goAway:
                var goAway = frame.goAway ?? GoAway(lastStreamID: 0)
                try goAway.merge(try reader.readLengthDelimitedField(type, field: "go_away"))
                frame.goAway = goAway
            default:
                try reader.skip(type)
            }
        }
        return frame
    }
}

// MARK: - Parts

extension WireFrame.Headers {
    var encodedSize: Int {
        ProtobufWire.stringFieldSize(field: 1, self.method)
            + ProtobufWire.varintFieldSize(field: 2, self.timeoutMicros)
            + MetadataCoding.encodedSize(self.metadata, field: 3)
    }

    func encodeFields(into buffer: inout ByteBuffer) {
        buffer.writeStringField(1, self.method)
        buffer.writeVarintField(2, self.timeoutMicros)
        MetadataCoding.encode(self.metadata, field: 3, into: &buffer)
    }

    mutating func merge(_ bytes: ByteBuffer) throws(WireFrameError) {
        var reader = ProtobufReader(bytes)
        while !reader.isAtEnd {
            let (field, type) = try reader.readTag()
            switch field {
            case 1: self.method = try reader.readStringField(type, field: "headers.method")
            case 2: self.timeoutMicros = try reader.readVarintField(type, field: "headers.timeout_micros")
            case 3: try MetadataCoding.decodeEntry(try reader.readLengthDelimitedField(type, field: "headers.metadata"), into: &self.metadata)
            default: try reader.skip(type)
            }
        }
    }
}

extension WireFrame.Trailers {
    var encodedSize: Int {
        ProtobufWire.varintFieldSize(field: 1, UInt64(self.code))
            + ProtobufWire.stringFieldSize(field: 2, self.message)
            + MetadataCoding.encodedSize(self.metadata, field: 3)
    }

    func encodeFields(into buffer: inout ByteBuffer) {
        buffer.writeVarintField(1, UInt64(self.code))
        buffer.writeStringField(2, self.message)
        MetadataCoding.encode(self.metadata, field: 3, into: &buffer)
    }

    mutating func merge(_ bytes: ByteBuffer) throws(WireFrameError) {
        var reader = ProtobufReader(bytes)
        while !reader.isAtEnd {
            let (field, type) = try reader.readTag()
            switch field {
            case 1: self.code = UInt32(truncatingIfNeeded: try reader.readVarintField(type, field: "trailers.code"))
            case 2: self.message = try reader.readStringField(type, field: "trailers.message")
            case 3: try MetadataCoding.decodeEntry(try reader.readLengthDelimitedField(type, field: "trailers.metadata"), into: &self.metadata)
            default: try reader.skip(type)
            }
        }
    }
}

extension WireFrame.Cancel {
    var encodedSize: Int {
        ProtobufWire.varintFieldSize(field: 1, UInt64(self.code)) + ProtobufWire.stringFieldSize(field: 2, self.message)
    }

    mutating func merge(_ bytes: ByteBuffer) throws(WireFrameError) {
        var reader = ProtobufReader(bytes)
        while !reader.isAtEnd {
            let (field, type) = try reader.readTag()
            switch field {
            case 1: self.code = UInt32(truncatingIfNeeded: try reader.readVarintField(type, field: "cancel.code"))
            case 2: self.message = try reader.readStringField(type, field: "cancel.message")
            default: try reader.skip(type)
            }
        }
    }
}

extension WireFrame.Settings {
    var encodedSize: Int {
        ProtobufWire.varintFieldSize(field: 1, UInt64(self.version))
            + ProtobufWire.varintFieldSize(field: 2, UInt64(self.initialWindow))
            + ProtobufWire.varintFieldSize(field: 3, UInt64(self.maxFrameSize))
            + ProtobufWire.varintFieldSize(field: 4, UInt64(self.maxConcurrentStreams))
    }

    mutating func merge(_ bytes: ByteBuffer) throws(WireFrameError) {
        var reader = ProtobufReader(bytes)
        while !reader.isAtEnd {
            let (field, type) = try reader.readTag()
            switch field {
            case 1: self.version = UInt32(truncatingIfNeeded: try reader.readVarintField(type, field: "settings.version"))
            case 2: self.initialWindow = UInt32(truncatingIfNeeded: try reader.readVarintField(type, field: "settings.initial_window"))
            case 3: self.maxFrameSize = UInt32(truncatingIfNeeded: try reader.readVarintField(type, field: "settings.max_frame_size"))
            case 4: self.maxConcurrentStreams = UInt32(truncatingIfNeeded: try reader.readVarintField(type, field: "settings.max_concurrent_streams"))
            default: try reader.skip(type)
            }
        }
    }
}

extension WireFrame.Ping {
    var encodedSize: Int {
        ProtobufWire.varintFieldSize(field: 1, self.payload) + (self.ack ? 2 : 0)
    }

    mutating func merge(_ bytes: ByteBuffer) throws(WireFrameError) {
        var reader = ProtobufReader(bytes)
        while !reader.isAtEnd {
            let (field, type) = try reader.readTag()
            switch field {
            case 1: self.payload = try reader.readVarintField(type, field: "ping.payload")
            case 2: self.ack = try reader.readVarintField(type, field: "ping.ack") != 0
            default: try reader.skip(type)
            }
        }
    }
}

extension WireFrame.GoAway {
    var encodedSize: Int {
        ProtobufWire.varintFieldSize(field: 1, UInt64(self.lastStreamID))
            + ProtobufWire.varintFieldSize(field: 2, UInt64(self.code))
            + ProtobufWire.stringFieldSize(field: 3, self.message)
    }

    mutating func merge(_ bytes: ByteBuffer) throws(WireFrameError) {
        var reader = ProtobufReader(bytes)
        while !reader.isAtEnd {
            let (field, type) = try reader.readTag()
            switch field {
            case 1: self.lastStreamID = UInt32(truncatingIfNeeded: try reader.readVarintField(type, field: "go_away.last_stream_id"))
            case 2: self.code = UInt32(truncatingIfNeeded: try reader.readVarintField(type, field: "go_away.code"))
            case 3: self.message = try reader.readStringField(type, field: "go_away.message")
            default: try reader.skip(type)
            }
        }
    }
}

/// `repeated MetadataEntry` fields: `{ string key = 1; oneof value { string text = 2; bytes binary = 3; } }`.
enum MetadataCoding {
    static func entrySize(key: String, value: Metadata.Value) -> Int {
        let valueSize: Int
        switch value {
        case .string(let text): valueSize = ProtobufWire.lengthDelimitedSize(field: 2, payload: text.utf8.count)
        case .binary(let bytes): valueSize = ProtobufWire.lengthDelimitedSize(field: 3, payload: bytes.count)
        }
        return ProtobufWire.stringFieldSize(field: 1, key) + valueSize
    }

    static func encodedSize(_ metadata: Metadata, field: UInt32) -> Int {
        var size = 0
        for (key, value) in metadata {
            size += ProtobufWire.lengthDelimitedSize(field: field, payload: self.entrySize(key: key, value: value))
        }
        return size
    }

    static func encode(_ metadata: Metadata, field: UInt32, into buffer: inout ByteBuffer) {
        for (key, value) in metadata {
            buffer.writeLengthDelimitedHeader(field, length: self.entrySize(key: key, value: value))
            buffer.writeStringField(1, key)
            // A oneof member is written even when empty, so that the value's kind survives.
            switch value {
            case .string(let text):
                buffer.writeLengthDelimitedHeader(2, length: text.utf8.count)
                buffer.writeString(text)
            case .binary(let bytes):
                buffer.writeLengthDelimitedHeader(3, length: bytes.count)
                buffer.writeBytes(bytes)
            }
        }
    }

    static func decodeEntry(_ bytes: ByteBuffer, into metadata: inout Metadata) throws(WireFrameError) {
        var reader = ProtobufReader(bytes)
        var key = ""
        var value: Metadata.Value = .string("")
        while !reader.isAtEnd {
            let (field, type) = try reader.readTag()
            switch field {
            case 1: key = try reader.readStringField(type, field: "metadata.key")
            case 2: value = .string(try reader.readStringField(type, field: "metadata.text"))
            case 3: value = .binary(Array(buffer: try reader.readLengthDelimitedField(type, field: "metadata.binary")))
            default: try reader.skip(type)
            }
        }
        guard Self.isValidKey(key) else {
            throw WireFrameError(.malformed, "metadata key \(key.debugDescription) is not lower-case ASCII [0-9a-z_.-]")
        }
        if case .binary = value, !key.hasSuffix("-bin") {
            throw WireFrameError(.malformed, "binary metadata value for key \(key.debugDescription) without the -bin suffix")
        }
        switch value {
        case .string(let text): metadata.addString(text, forKey: key)
        case .binary(let bytes): metadata.addBinary(bytes, forKey: key)
        }
    }

    static func isValidKey(_ key: String) -> Bool {
        guard !key.isEmpty else { return false }
        for byte in key.utf8 {
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                UInt8(ascii: "-"), UInt8(ascii: "_"), UInt8(ascii: "."):
                continue
            default:
                return false
            }
        }
        return true
    }
}
