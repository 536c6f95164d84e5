public import GRPCCore
public import NIOCore

/// The bytes of one message on a SparkWire stream: a `ByteBuffer`, so that a received message is a
/// slice of the receive buffer rather than a copy.
public struct SparkWireBytes: GRPCContiguousBytes, Hashable, Sendable {
    public var buffer: ByteBuffer

    public init(_ buffer: ByteBuffer) {
        self.buffer = buffer
    }

    public init(repeating byte: UInt8, count: Int) {
        self.buffer = ByteBuffer(repeating: byte, count: count)
    }

    public init(_ sequence: some Sequence<UInt8>) {
        self.buffer = ByteBuffer(bytes: sequence)
    }

    public var count: Int { self.buffer.readableBytes }

    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try self.buffer.withUnsafeReadableBytes(body)
    }

    public mutating func withUnsafeMutableBytes<R>(_ body: (UnsafeMutableRawBufferPointer) throws -> R) rethrows -> R {
        // All stored bytes are readable: GRPCContiguousBytes has no notion of spare capacity.
        try self.buffer.withUnsafeMutableReadableBytes(body)
    }
}
