/// A Redis reply.
public enum RESPValue: Hashable, Sendable {
    case simpleString(String)
    case error(String)
    case integer(Int64)
    case bulkString([UInt8])
    case array([RESPValue])
    case null

    /// The value as text, for string replies.
    public var string: String? {
        switch self {
        case .simpleString(let text): return text
        case .bulkString(let bytes): return String(decoding: bytes, as: UTF8.self)
        default: return nil
        }
    }

    public var integer: Int64? {
        if case .integer(let value) = self { return value }
        return nil
    }
}

/// A Redis error reply, or a connection failure.
public struct RedisError: Error, CustomStringConvertible, Sendable {
    public var description: String
    /// Redis could not be reached, or the connection dropped before the reply: a caller may fall
    /// back to what it can do without Redis. False for Redis's own error replies.
    public var isConnectionFailure: Bool

    public init(_ description: String, isConnectionFailure: Bool = false) {
        self.description = description
        self.isConnectionFailure = isConnectionFailure
    }
}
