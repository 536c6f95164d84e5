package import NIOCore

/// Splits the inbound byte stream into ``WireFrame``s.
///
/// A length prefix above `maxFrameSize` is refused as soon as the four bytes are read, before any
/// of the frame is buffered; NIOExtras' `LengthFieldBasedFrameDecoder` has no such limit.
package struct FrameDecoder: NIOSingleStepByteToMessageDecoder {
    package typealias InboundOut = WireFrame

    package let maxFrameSize: Int

    package init(maxFrameSize: Int) {
        self.maxFrameSize = maxFrameSize
    }

    package mutating func decode(buffer: inout ByteBuffer) throws -> WireFrame? {
        guard let length = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self) else {
            return nil
        }
        guard length <= self.maxFrameSize else {
            throw WireFrameError(.tooLarge, "length prefix \(length) exceeds the maximum of \(self.maxFrameSize) bytes")
        }
        guard buffer.readableBytes >= SparkWireProtocol.prefixLength + Int(length) else {
            return nil
        }
        buffer.moveReaderIndex(forwardBy: SparkWireProtocol.prefixLength)
        let body = buffer.readSlice(length: Int(length))!
        return try WireFrame.decode(body)
    }

    package mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> WireFrame? {
        try self.decode(buffer: &buffer)
    }
}
