import NIOCore

/// Protobuf binary encoding primitives over `ByteBuffer`, enough for `sparkops.wire.v1.Frame`.
///
/// SparkWire encodes its frames by hand so that a message's bytes go onto the socket without being
/// copied into an intermediate protobuf object; the tests check the result against swift-protobuf.
enum ProtobufWire {
    enum WireType: UInt8 {
        case varint = 0
        case fixed64 = 1
        case lengthDelimited = 2
        case fixed32 = 5
    }

    @inline(__always)
    static func varintSize(_ value: UInt64) -> Int {
        // 1 byte per 7 bits, at least one byte.
        let bits = 64 - value.leadingZeroBitCount
        return max(1, (bits + 6) / 7)
    }

    @inline(__always)
    static func tagSize(_ field: UInt32) -> Int {
        self.varintSize(UInt64(field) << 3)
    }

    /// Size of a length-delimited field: tag, length and payload.
    @inline(__always)
    static func lengthDelimitedSize(field: UInt32, payload: Int) -> Int {
        self.tagSize(field) + self.varintSize(UInt64(payload)) + payload
    }

    /// Size of a varint field, or 0 when the value is the proto3 default and so not written.
    @inline(__always)
    static func varintFieldSize(field: UInt32, _ value: UInt64) -> Int {
        value == 0 ? 0 : self.tagSize(field) + self.varintSize(value)
    }

    @inline(__always)
    static func stringFieldSize(field: UInt32, _ value: String) -> Int {
        value.isEmpty ? 0 : self.lengthDelimitedSize(field: field, payload: value.utf8.count)
    }
}

extension ByteBuffer {
    @inline(__always)
    mutating func writeVarint(_ value: UInt64) {
        var value = value
        while value >= 0x80 {
            self.writeInteger(UInt8(truncatingIfNeeded: value) | 0x80)
            value >>= 7
        }
        self.writeInteger(UInt8(value))
    }

    @inline(__always)
    mutating func writeTag(_ field: UInt32, _ type: ProtobufWire.WireType) {
        self.writeVarint(UInt64(field) << 3 | UInt64(type.rawValue))
    }

    /// Writes a varint field unless it holds the default value 0.
    @inline(__always)
    mutating func writeVarintField(_ field: UInt32, _ value: UInt64) {
        guard value != 0 else { return }
        self.writeTag(field, .varint)
        self.writeVarint(value)
    }

    /// Writes a string field unless it is empty.
    @inline(__always)
    mutating func writeStringField(_ field: UInt32, _ value: String) {
        guard !value.isEmpty else { return }
        self.writeTag(field, .lengthDelimited)
        self.writeVarint(UInt64(value.utf8.count))
        self.writeString(value)
    }

    @inline(__always)
    mutating func writeLengthDelimitedHeader(_ field: UInt32, length: Int) {
        self.writeTag(field, .lengthDelimited)
        self.writeVarint(UInt64(length))
    }
}

/// Reads protobuf fields from a buffer, rejecting malformed input with ``WireFrameError``.
struct ProtobufReader {
    private(set) var buffer: ByteBuffer

    init(_ buffer: ByteBuffer) {
        self.buffer = buffer
    }

    var isAtEnd: Bool { self.buffer.readableBytes == 0 }

    mutating func readVarint() throws(WireFrameError) -> UInt64 {
        var result: UInt64 = 0
        var shift: UInt64 = 0
        while true {
            guard let byte = self.buffer.readInteger(as: UInt8.self) else {
                throw WireFrameError(.malformed, "truncated varint")
            }
            if shift == 63 && byte > 1 {
                throw WireFrameError(.malformed, "varint overflows 64 bits")
            }
            result |= UInt64(byte & 0x7F) << shift
            if byte & 0x80 == 0 { return result }
            shift += 7
            if shift > 63 {
                throw WireFrameError(.malformed, "varint longer than 10 bytes")
            }
        }
    }

    /// Reads the next tag: a field number and a wire type.
    mutating func readTag() throws(WireFrameError) -> (field: UInt32, type: ProtobufWire.WireType) {
        let tag = try self.readVarint()
        let field = tag >> 3
        guard field > 0, field <= 0x1FFF_FFFF else {
            throw WireFrameError(.malformed, "invalid field number \(field)")
        }
        guard let type = ProtobufWire.WireType(rawValue: UInt8(tag & 7)) else {
            throw WireFrameError(.malformed, "unsupported wire type \(tag & 7) for field \(field)")
        }
        return (UInt32(field), type)
    }

    mutating func readLengthDelimited() throws(WireFrameError) -> ByteBuffer {
        let length = try self.readVarint()
        guard length <= UInt64(self.buffer.readableBytes) else {
            throw WireFrameError(.malformed, "length \(length) runs past the end of the frame")
        }
        return self.buffer.readSlice(length: Int(length))!
    }

    mutating func readString(field: String) throws(WireFrameError) -> String {
        var slice = try self.readLengthDelimited()
        guard let string = try? slice.readUTF8ValidatedString(length: slice.readableBytes) else {
            throw WireFrameError(.malformed, "\(field) is not valid UTF-8")
        }
        return string
    }

    /// Reads a varint and checks the wire type first.
    mutating func readVarintField(_ type: ProtobufWire.WireType, field: String) throws(WireFrameError) -> UInt64 {
        guard type == .varint else {
            throw WireFrameError(.malformed, "\(field) has wire type \(type.rawValue), expected varint")
        }
        return try self.readVarint()
    }

    mutating func readLengthDelimitedField(
        _ type: ProtobufWire.WireType,
        field: String
    ) throws(WireFrameError) -> ByteBuffer {
        guard type == .lengthDelimited else {
            throw WireFrameError(.malformed, "\(field) has wire type \(type.rawValue), expected length-delimited")
        }
        return try self.readLengthDelimited()
    }

    mutating func readStringField(_ type: ProtobufWire.WireType, field: String) throws(WireFrameError) -> String {
        guard type == .lengthDelimited else {
            throw WireFrameError(.malformed, "\(field) has wire type \(type.rawValue), expected length-delimited")
        }
        return try self.readString(field: field)
    }

    /// Skips a field this version does not know, as protobuf requires.
    mutating func skip(_ type: ProtobufWire.WireType) throws(WireFrameError) {
        switch type {
        case .varint:
            _ = try self.readVarint()
        case .fixed64:
            guard self.buffer.readableBytes >= 8 else { throw WireFrameError(.malformed, "truncated fixed64") }
            self.buffer.moveReaderIndex(forwardBy: 8)
        case .fixed32:
            guard self.buffer.readableBytes >= 4 else { throw WireFrameError(.malformed, "truncated fixed32") }
            self.buffer.moveReaderIndex(forwardBy: 4)
        case .lengthDelimited:
            _ = try self.readLengthDelimited()
        }
    }
}
