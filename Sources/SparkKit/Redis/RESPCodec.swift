import CHiredis
import NIOCore

/// Parses Redis replies with libhiredis's `redisReader`.
final class RESPDecoder {
    private let reader: UnsafeMutablePointer<redisReader>

    init() {
        self.reader = redisReaderCreate()
    }

    deinit {
        redisReaderFree(self.reader)
    }

    /// Adds received bytes.
    func feed(_ buffer: ByteBuffer) throws {
        let status = buffer.withUnsafeReadableBytes { bytes in
            redisReaderFeed(self.reader, bytes.baseAddress?.assumingMemoryBound(to: CChar.self), bytes.count)
        }
        guard status == REDIS_OK else { throw RedisError("redis reader: \(self.errorText)") }
    }

    /// The next complete reply, or nil until more bytes arrive.
    func next() throws -> RESPValue? {
        var raw: UnsafeMutableRawPointer?
        guard redisReaderGetReply(self.reader, &raw) == REDIS_OK else {
            throw RedisError("malformed reply from Redis: \(self.errorText)")
        }
        guard let raw else { return nil }
        defer { freeReplyObject(raw) }
        return Self.convert(raw.assumingMemoryBound(to: redisReply.self))
    }

    private var errorText: String {
        withUnsafeBytes(of: self.reader.pointee.errstr) { bytes in
            String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
        }
    }

    private static func convert(_ reply: UnsafeMutablePointer<redisReply>) -> RESPValue {
        let value = reply.pointee
        func bytes() -> [UInt8] {
            guard let str = value.str else { return [] }
            return Array(UnsafeRawBufferPointer(start: str, count: value.len))
        }
        switch value.type {
        case REDIS_REPLY_STRING: return .bulkString(bytes())
        case REDIS_REPLY_STATUS: return .simpleString(String(decoding: bytes(), as: UTF8.self))
        case REDIS_REPLY_ERROR: return .error(String(decoding: bytes(), as: UTF8.self))
        case REDIS_REPLY_INTEGER: return .integer(value.integer)
        case REDIS_REPLY_NIL: return .null
        case REDIS_REPLY_ARRAY:
            var elements: [RESPValue] = []
            elements.reserveCapacity(value.elements)
            for index in 0 ..< value.elements {
                if let element = value.element[index] { elements.append(Self.convert(element)) }
            }
            return .array(elements)
        default:
            return .null
        }
    }
}

enum RESPEncoder {
    /// The RESP encoding of a command, by libhiredis's `redisFormatCommandArgv`.
    static func encode(_ arguments: [[UInt8]]) throws -> ByteBuffer {
        var target: UnsafeMutablePointer<CChar>?
        let length: Int32 = try withArgv(arguments) { argv, lengths in
            redisFormatCommandArgv(&target, Int32(arguments.count), argv, lengths)
        }
        guard length >= 0, let target else { throw RedisError("cannot encode the command") }
        defer { redisFreeCommand(target) }
        return ByteBuffer(bytes: UnsafeRawBufferPointer(start: target, count: Int(length)))
    }

    private static func withArgv<T>(
        _ arguments: [[UInt8]],
        _ body: (UnsafeMutablePointer<UnsafePointer<CChar>?>, UnsafePointer<Int>) throws -> T
    ) throws -> T {
        // Copies each argument into one contiguous allocation for the C call's duration.
        let total = arguments.reduce(0) { $0 + $1.count }
        let storage = UnsafeMutableRawBufferPointer.allocate(byteCount: max(total, 1), alignment: 1)
        defer { storage.deallocate() }
        var pointers: [UnsafePointer<CChar>?] = []
        var lengths: [Int] = []
        var offset = 0
        for argument in arguments {
            let destination = storage.baseAddress! + offset
            argument.withUnsafeBytes { destination.copyMemory(from: $0.baseAddress ?? UnsafeRawPointer(destination), byteCount: $0.count) }
            pointers.append(UnsafePointer(destination.assumingMemoryBound(to: CChar.self)))
            lengths.append(argument.count)
            offset += argument.count
        }
        return try pointers.withUnsafeMutableBufferPointer { argv in
            try lengths.withUnsafeBufferPointer { try body(argv.baseAddress!, $0.baseAddress!) }
        }
    }
}
