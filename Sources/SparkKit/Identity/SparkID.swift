public import Foundation

/// Resource ids: a type prefix and a UUIDv7 in lower-case hex without dashes, such as
/// `prj_0193a1f2c4d87e5f9a1b2c3d4e5f6a7b`. UUIDv7 starts with the creation time in milliseconds,
/// so ids sort by creation time, which keeps index inserts local and makes them usable as page tokens.
public enum SparkID {
    /// A new id with the given prefix (`usr`, `prj`, `key`, …).
    public static func make(_ prefix: String, now: Date = Date()) -> String {
        var bytes = SparkRandom.bytes(16)
        let millis = UInt64(max(0, now.timeIntervalSince1970 * 1000))
        for index in 0 ..< 6 {
            bytes[index] = UInt8(truncatingIfNeeded: millis >> (8 * (5 - index)))
        }
        bytes[6] = (bytes[6] & 0x0F) | 0x70  // version 7
        bytes[8] = (bytes[8] & 0x3F) | 0x80  // variant 10
        return prefix + "_" + SparkHex.encode(bytes)
    }

    /// Whether `id` has the shape of an id with `prefix`. Says nothing about whether it exists.
    public static func isValid(_ id: String, prefix: String) -> Bool {
        guard id.count == prefix.count + 33, id.hasPrefix(prefix + "_") else { return false }
        return id.utf8.dropFirst(prefix.count + 1).allSatisfy { (0x30 ... 0x39).contains($0) || (0x61 ... 0x66).contains($0) }
    }
}

/// Random bytes from the system's cryptographic generator, eight per draw (one `getrandom` call
/// each): drawing byte by byte cost a system call per byte, ten for every request id.
public enum SparkRandom {
    public static func bytes(_ count: Int) -> [UInt8] {
        var generator = SystemRandomNumberGenerator()
        var bytes = [UInt8]()
        bytes.reserveCapacity(count + 7)
        while bytes.count < count {
            withUnsafeBytes(of: generator.next() as UInt64) { bytes.append(contentsOf: $0) }
        }
        bytes.removeLast(bytes.count - count)
        return bytes
    }
}
