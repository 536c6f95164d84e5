import Foundation
public import NIOCore
public import SparkWire

#if canImport(Glibc)
import Glibc
#endif

/// The SSRF guard for every request SparkOps makes to an address a user gave it (HTTP tools, the
/// browser tool, search APIs, LLM base URLs, outbound webhooks).
///
/// It resolves the name itself and refuses unless **every** address is public, or allowed by the
/// allowlist: loopback, private, link-local (cloud metadata at 169.254.169.254 among them),
/// multicast, CGNAT, unspecified, broadcast, documentation and other reserved ranges, in IPv4 and
/// IPv6, including IPv4 addresses inside IPv6 (`::ffff:127.0.0.1`, NAT64, 6to4). The caller then
/// connects to one of the addresses it was given, never resolving again (no DNS rebinding), and
/// checks each redirect's URL the same way. Refusals happen before any packet is sent.
///
/// ```swift
/// let guard = try OutboundGuard(allowlist: ["10.0.5.0/24", "search.internal"])
/// let target = try await guard.check(url: "https://api.example.com/v1/items")
/// // connect to target.addresses[0], with target.host for TLS and the Host header
/// ```
public struct OutboundGuard: Sendable {
    /// Ranges and names an operator allows although they are not public.
    public let allowlist: [Allowed]

    public enum Allowed: Sendable, Hashable {
        /// An address range, and optionally one port.
        case range(IPRange, port: Int?)
        /// A host name as written in URLs, and optionally one port (`name:port` allows that port
        /// only; `name` every port): its addresses are not checked.
        case host(String, port: Int?)
    }

    /// Parses allowlist entries: `127.0.0.1`, `10.0.0.0/8`, `[::1]:8080`, `127.0.0.1:9000`,
    /// `fd00::/8`, `search.internal`, `localhost:38201`. An entry allows exactly what it names: with
    /// a port, that port only.
    public init(allowlist entries: [String] = []) throws {
        var allowed: [Allowed] = []
        for entry in entries.map({ $0.trimmingCharacters(in: .whitespaces) }) where !entry.isEmpty {
            var text = entry
            var port: Int?
            if text.hasPrefix("["), let close = text.firstIndex(of: "]") {
                let rest = text[text.index(after: close)...]
                if rest.hasPrefix(":") {
                    guard let value = Int(rest.dropFirst()), (1 ... 65535).contains(value) else {
                        throw OutboundRefusal(.invalidAllowlist, "allowlist entry \(entry.debugDescription) has a bad port")
                    }
                    port = value
                }
                text = String(text[text.index(after: text.startIndex) ..< close])
            } else if text.filter({ $0 == ":" }).count == 1, let colon = text.firstIndex(of: ":") {
                guard let value = Int(text[text.index(after: colon)...]), (1 ... 65535).contains(value) else {
                    throw OutboundRefusal(.invalidAllowlist, "allowlist entry \(entry.debugDescription) has a bad port")
                }
                port = value
                text = String(text[..<colon])
            }
            if let range = IPRange(text) {
                allowed.append(.range(range, port: port))
            } else if !text.contains("/"), !text.contains(":"), !text.isEmpty {
                allowed.append(.host(text.lowercased(), port: port))
            } else {
                throw OutboundRefusal(.invalidAllowlist, "allowlist entry \(entry.debugDescription) is neither an address range nor a host name")
            }
        }
        self.allowlist = allowed
    }

    /// Where a checked request may go.
    public struct Target: Sendable {
        public var scheme: String
        /// The host as the URL names it (for TLS and the Host header).
        public var host: String
        public var port: Int
        /// The addresses checked; connect to these only.
        public var addresses: [SocketAddress]
    }

    /// Checks a URL: `http` or `https` only, no credentials in it, a host, and every address the
    /// host resolves to allowed.
    public func check(url text: String) async throws(OutboundRefusal) -> Target {
        guard let components = URLComponents(string: text), let scheme = components.scheme?.lowercased() else {
            throw OutboundRefusal(.invalidURL, "\(text.debugDescription) is not a URL")
        }
        guard scheme == "http" || scheme == "https" else {
            throw OutboundRefusal(.scheme, "the scheme \(scheme.debugDescription) is not allowed; use http or https")
        }
        guard components.user == nil && components.password == nil else {
            throw OutboundRefusal(.invalidURL, "credentials do not go in the URL; use a secret")
        }
        guard var host = components.host, !host.isEmpty else {
            throw OutboundRefusal(.invalidURL, "\(text.debugDescription) names no host")
        }
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        let port = components.port ?? (scheme == "https" ? 443 : 80)
        guard (1 ... 65535).contains(port) else { throw OutboundRefusal(.invalidURL, "port \(port) is out of range") }
        return Target(scheme: scheme, host: host, port: port, addresses: try await self.resolve(host: host, port: port))
    }

    /// Resolves `host` and returns its addresses if every one is allowed.
    public func resolve(host: String, port: Int) async throws(OutboundRefusal) -> [SocketAddress] {
        let name = host.lowercased()
        let addresses: [SocketAddress]
        do {
            addresses = try await SparkWireEndpoint(host: name, port: port).resolve()
        } catch {
            throw OutboundRefusal(.unresolvable, "\(host) does not resolve")
        }
        guard !addresses.isEmpty else { throw OutboundRefusal(.unresolvable, "\(host) has no addresses") }
        if self.allows(host: name, port: port) { return addresses }
        for address in addresses {
            try self.check(address: address, port: port, host: host)
        }
        return addresses
    }

    /// Whether an allowlist entry names `host` (lowercased) with `port`, or with every port.
    func allows(host: String, port: Int) -> Bool {
        self.allowlist.contains { entry in
            if case .host(let name, let allowedPort) = entry { return name == host && (allowedPort == nil || allowedPort == port) }
            return false
        }
    }

    /// Refuses `address` unless it is public or allowed.
    public func check(address: SocketAddress, port: Int, host: String) throws(OutboundRefusal) {
        guard let text = address.ipAddress, let ip = IPAddress(text) else {
            throw OutboundRefusal(.unresolvable, "\(host) resolved to an address that is not IP")
        }
        let kind = ip.classification
        guard kind != .public else { return }
        for entry in self.allowlist {
            if case .range(let range, let allowedPort) = entry, range.contains(ip), allowedPort == nil || allowedPort == port { return }
        }
        throw OutboundRefusal(.forbiddenAddress, "\(host) is \(text), a \(kind.rawValue) address; only public addresses, or those the allowlist names, may be reached", address: text)
    }
}

/// Why an outbound request was refused. Nothing was sent.
public struct OutboundRefusal: Error, Sendable, Hashable, CustomStringConvertible {
    public struct Code: Sendable, Hashable {
        public let name: String
        public static let invalidURL = Code(name: "invalid_url")
        public static let scheme = Code(name: "scheme")
        public static let unresolvable = Code(name: "unresolvable")
        public static let forbiddenAddress = Code(name: "forbidden_address")
        public static let invalidAllowlist = Code(name: "invalid_allowlist")
    }

    public var code: Code
    public var message: String
    /// The address refused, when one was.
    public var address: String?

    public init(_ code: Code, _ message: String, address: String? = nil) {
        self.code = code
        self.message = message
        self.address = address
    }

    public var description: String { self.message }
}
