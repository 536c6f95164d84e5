import Foundation

/// An IPv4 or IPv6 address as its bytes (4 or 16), read from its text form.
public struct IPAddress: Sendable, Hashable, CustomStringConvertible {
    public let bytes: [UInt8]

    public var isIPv4: Bool { self.bytes.count == 4 }

    /// Dotted IPv4 (`10.0.0.1`) or IPv6 (`::1`, `fe80::1%eth0`, `::ffff:1.2.3.4`).
    public init?(_ text: String) {
        var address = text
        if let percent = address.firstIndex(of: "%") { address = String(address[..<percent]) }
        if let v4 = Self.parseIPv4(address) {
            self.bytes = v4
        } else if let v6 = Self.parseIPv6(address) {
            self.bytes = v6
        } else {
            return nil
        }
    }

    public init?(bytes: [UInt8]) {
        guard bytes.count == 4 || bytes.count == 16 else { return nil }
        self.bytes = bytes
    }

    public var description: String {
        if self.isIPv4 { return self.bytes.map(String.init).joined(separator: ".") }
        return stride(from: 0, to: 16, by: 2).map { String(UInt16(self.bytes[$0]) << 8 | UInt16(self.bytes[$0 + 1]), radix: 16) }.joined(separator: ":")
    }

    static func parseIPv4(_ text: String) -> [UInt8]? {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var bytes: [UInt8] = []
        for part in parts {
            guard !part.isEmpty, part.count <= 3, part.allSatisfy({ ("0"..."9").contains($0) }), let value = UInt8(part) else { return nil }
            bytes.append(value)
        }
        return bytes
    }

    static func parseIPv6(_ text: String) -> [UInt8]? {
        guard text.contains(":"), text.count <= 45 else { return nil }
        var head: [UInt16] = []
        var tail: [UInt16] = []
        var sawGap = false
        let halves = text.components(separatedBy: "::")
        guard halves.count <= 2 else { return nil }
        sawGap = halves.count == 2
        func groups(_ part: String, last: Bool) -> [UInt16]? {
            guard !part.isEmpty else { return [] }
            var out: [UInt16] = []
            let pieces = part.split(separator: ":", omittingEmptySubsequences: false)
            for (index, piece) in pieces.enumerated() {
                if last && index == pieces.count - 1 && piece.contains(".") {
                    guard let v4 = Self.parseIPv4(String(piece)) else { return nil }
                    out.append(UInt16(v4[0]) << 8 | UInt16(v4[1]))
                    out.append(UInt16(v4[2]) << 8 | UInt16(v4[3]))
                    continue
                }
                guard !piece.isEmpty, piece.count <= 4, let value = UInt16(piece, radix: 16) else { return nil }
                out.append(value)
            }
            return out
        }
        guard let first = groups(halves[0], last: !sawGap) else { return nil }
        head = first
        if sawGap {
            guard let second = groups(halves[1], last: true) else { return nil }
            tail = second
        }
        let missing = 8 - head.count - tail.count
        guard sawGap ? missing >= 1 : missing == 0 else { return nil }
        let all = head + Array(repeating: 0, count: sawGap ? missing : 0) + tail
        return all.flatMap { [UInt8($0 >> 8), UInt8($0 & 0xFF)] }
    }

    /// What kind of address this is, for the outbound guard. IPv4 addresses carried inside IPv6
    /// (mapped, NAT64, 6to4, compatible) are classified as the IPv4 address they carry.
    public enum Classification: String, Sendable {
        case `public` = "public"
        case loopback
        case `private` = "private"
        case linkLocal = "link-local"
        case metadata = "cloud metadata"
        case multicast
        case sharedCGNAT = "shared (CGNAT)"
        case unspecified
        case broadcast
        case reserved
    }

    public var classification: Classification {
        if self.isIPv4 { return Self.classifyIPv4(self.bytes) }
        let b = self.bytes
        if b.allSatisfy({ $0 == 0 }) { return .unspecified }
        if b[0 ..< 15].allSatisfy({ $0 == 0 }) && b[15] == 1 { return .loopback }
        // IPv4 inside IPv6: mapped (::ffff:a.b.c.d), compatible (::a.b.c.d), NAT64 and 6to4.
        if b[0 ..< 10].allSatisfy({ $0 == 0 }) && ((b[10] == 0xFF && b[11] == 0xFF) || (b[10] == 0 && b[11] == 0)) {
            return Self.classifyIPv4(Array(b[12 ..< 16]))
        }
        if b[0] == 0x00 && b[1] == 0x64 && b[2] == 0xFF && b[3] == 0x9B && b[4 ..< 12].allSatisfy({ $0 == 0 }) {
            return Self.classifyIPv4(Array(b[12 ..< 16]))
        }
        if b[0] == 0x20 && b[1] == 0x02 {
            let inner = Self.classifyIPv4(Array(b[2 ..< 6]))
            if inner != .public { return inner }
        }
        if b[0] == 0xFF { return .multicast }
        if b[0] == 0xFE && (b[1] & 0xC0) == 0x80 { return .linkLocal }  // fe80::/10
        if b[0] == 0xFE && (b[1] & 0xC0) == 0xC0 { return .private }  // fec0::/10, deprecated site-local
        if (b[0] & 0xFE) == 0xFC {  // fc00::/7, unique local (AWS metadata fd00:ec2::254 among them)
            return b[0] == 0xFD && b[1] == 0x00 && b[2] == 0x0E && b[3] == 0xC2 ? .metadata : .private
        }
        if b[0] == 0x20 && b[1] == 0x01 && b[2] == 0x0D && b[3] == 0xB8 { return .reserved }  // 2001:db8::/32 documentation
        if b[0] == 0x01 && b[1 ..< 8].allSatisfy({ $0 == 0 }) { return .reserved }  // 100::/64 discard
        if b[0] == 0x20 && b[1] == 0x01 && b[2] == 0x00 && b[3] < 0x02 { return .reserved }  // 2001::/23 special purpose (Teredo among them)
        return .public
    }

    static func classifyIPv4(_ b: [UInt8]) -> Classification {
        switch (b[0], b[1], b[2], b[3]) {
        case (169, 254, 169, 254), (100, 100, 100, 200): return .metadata  // AWS, GCP, Azure; Alibaba
        case (0, _, _, _): return b.allSatisfy { $0 == 0 } ? .unspecified : .reserved
        case (127, _, _, _): return .loopback
        case (10, _, _, _), (172, 16 ... 31, _, _), (192, 168, _, _): return .private
        case (169, 254, _, _): return .linkLocal
        case (100, 64 ... 127, _, _): return .sharedCGNAT
        case (224 ... 239, _, _, _): return .multicast
        case (255, 255, 255, 255): return .broadcast
        case (240 ... 255, _, _, _): return .reserved
        case (192, 0, 0, _), (192, 0, 2, _), (198, 18 ... 19, _, _), (198, 51, 100, _), (203, 0, 113, _), (192, 88, 99, _):
            return .reserved
        default: return .public
        }
    }
}

/// A CIDR range: `10.0.0.0/8`, `fd00::/8`, or one address.
public struct IPRange: Sendable, Hashable {
    public let base: IPAddress
    public let prefixLength: Int

    public init?(_ text: String) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count <= 2, let address = IPAddress(String(parts[0])) else { return nil }
        let maximum = address.bytes.count * 8
        if parts.count == 2 {
            guard let length = Int(parts[1]), (0 ... maximum).contains(length) else { return nil }
            self.prefixLength = length
        } else {
            self.prefixLength = maximum
        }
        self.base = address
    }

    public func contains(_ address: IPAddress) -> Bool {
        guard address.bytes.count == self.base.bytes.count else { return false }
        var remaining = self.prefixLength
        for (a, b) in zip(address.bytes, self.base.bytes) {
            guard remaining > 0 else { return true }
            let bits = min(8, remaining)
            let mask: UInt8 = bits == 8 ? 0xFF : ~(0xFF >> UInt8(bits))
            if a & mask != b & mask { return false }
            remaining -= bits
        }
        return true
    }
}
