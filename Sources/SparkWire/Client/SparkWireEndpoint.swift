public import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A `host:port` a service listens on. A host name may resolve to several addresses (replicas);
/// the client keeps a connection to each and spreads calls across them.
public struct SparkWireEndpoint: Hashable, Sendable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    public var description: String {
        self.host.contains(":") ? "[\(self.host)]:\(self.port)" : "\(self.host):\(self.port)"
    }

    /// Parses `host:port`, `[v6]:port`, or a comma-separated list of them (as in
    /// `SPARKOPS_PROJECT_ADDRESS=10.0.0.5:7001,10.0.0.6:7001`).
    public static func parseList(_ text: String) throws -> [SparkWireEndpoint] {
        let items = text.split(separator: ",").map { String($0.drop(while: \.isWhitespace).reversed().drop(while: \.isWhitespace).reversed()) }.filter { !$0.isEmpty }
        guard !items.isEmpty else { throw SparkWireConfigurationError("no address in \(text.debugDescription)") }
        return try items.map { try Self.parse($0) }
    }

    public static func parse(_ item: String) throws -> SparkWireEndpoint {
        let host: Substring
        let portText: Substring
        if item.hasPrefix("[") {
            guard let close = item.firstIndex(of: "]"), item[item.index(after: close)...].hasPrefix(":") else {
                throw SparkWireConfigurationError("address \(item.debugDescription) is not [host]:port")
            }
            host = item[item.index(after: item.startIndex) ..< close]
            portText = item[item.index(close, offsetBy: 2)...]
        } else {
            guard let colon = item.lastIndex(of: ":") else {
                throw SparkWireConfigurationError("address \(item.debugDescription) has no port")
            }
            host = item[..<colon]
            portText = item[item.index(after: colon)...]
        }
        guard !host.isEmpty, let port = Int(portText), (1 ... 65535).contains(port) else {
            throw SparkWireConfigurationError("address \(item.debugDescription) is not host:port with a port in 1...65535")
        }
        return SparkWireEndpoint(host: String(host), port: port)
    }

    /// Every address the host resolves to, IPv4 and IPv6, without duplicates. Runs getaddrinfo on
    /// NIO's thread pool, never on an event loop.
    public func resolve() async throws -> [SocketAddress] {
        let host = self.host
        let port = self.port
        return try await NIOThreadPool.singleton.runIfActive {
            var hints = addrinfo()
            hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
            hints.ai_protocol = Int32(IPPROTO_TCP)
            var result: UnsafeMutablePointer<addrinfo>?
            let status = getaddrinfo(host, String(port), &hints, &result)
            guard status == 0, let first = result else {
                let reason = String(cString: gai_strerror(status))
                throw SparkWireConfigurationError("cannot resolve \(host): \(reason)")
            }
            defer { freeaddrinfo(first) }
            var addresses: [SocketAddress] = []
            var cursor: UnsafeMutablePointer<addrinfo>? = first
            while let info = cursor {
                if let address = info.pointee.ai_addr {
                    switch Int32(info.pointee.ai_family) {
                    case AF_INET:
                        let v4 = address.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee }
                        addresses.append(SocketAddress(v4, host: host))
                    case AF_INET6:
                        let v6 = address.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { $0.pointee }
                        addresses.append(SocketAddress(v6, host: host))
                    default:
                        break
                    }
                }
                cursor = info.pointee.ai_next
            }
            var seen = Set<String>()
            return addresses.filter { seen.insert("\($0)").inserted }
        }
    }
}
