import NIOCore
import SparkKit
import Testing

/// The SSRF guard. Every test here resolves IP literals or `localhost` only (from /etc/hosts), so
/// no packet leaves the machine; refusals happen before any connection is made.
@Suite("Outbound guard")
struct OutboundGuardTests {
    @Test("addresses are classified, IPv4 carried in IPv6 as the IPv4 it carries")
    func classification() {
        let cases: [(String, IPAddress.Classification)] = [
            ("8.8.8.8", .public), ("1.1.1.1", .public), ("2606:4700::1111", .public),
            ("127.0.0.1", .loopback), ("127.255.0.9", .loopback), ("::1", .loopback),
            ("10.0.0.1", .private), ("172.16.0.1", .private), ("172.31.255.255", .private), ("192.168.1.1", .private),
            ("172.15.0.1", .public), ("172.32.0.1", .public),
            ("fd12:3456::1", .private), ("fc00::1", .private),
            ("169.254.169.254", .metadata), ("fd00:ec2::254", .metadata), ("100.100.100.200", .metadata),
            ("169.254.1.1", .linkLocal), ("fe80::1", .linkLocal), ("fe80::1%eth0", .linkLocal),
            ("100.64.0.1", .sharedCGNAT), ("100.127.255.254", .sharedCGNAT), ("100.128.0.1", .public),
            ("224.0.0.1", .multicast), ("239.255.255.250", .multicast), ("ff02::1", .multicast),
            ("0.0.0.0", .unspecified), ("::", .unspecified), ("0.1.2.3", .reserved),
            ("255.255.255.255", .broadcast), ("240.0.0.1", .reserved), ("192.0.2.5", .reserved), ("2001:db8::1", .reserved),
            ("::ffff:127.0.0.1", .loopback), ("::ffff:7f00:1", .loopback), ("::ffff:10.1.2.3", .private),
            ("::ffff:169.254.169.254", .metadata), ("::127.0.0.1", .loopback), ("64:ff9b::a00:1", .private),
            ("2002:a9fe:a9fe::1", .metadata), ("2002:0808:0808::1", .public),
        ]
        for (text, expected) in cases {
            guard let address = IPAddress(text) else {
                Issue.record("\(text) does not parse")
                continue
            }
            #expect(address.classification == expected, "\(text): \(address.classification)")
        }
        for text in ["", "1.2.3", "1.2.3.4.5", "256.1.1.1", "1.2.3.-4", "::1::2", "12345::", "g::1", "1:2:3:4:5:6:7:8:9", "localhost"] {
            #expect(IPAddress(text) == nil, "\(text)")
        }
        #expect(IPRange("10.0.0.0/8")!.contains(IPAddress("10.200.3.4")!))
        #expect(!IPRange("10.0.0.0/8")!.contains(IPAddress("11.0.0.1")!))
        #expect(IPRange("172.16.0.0/12")!.contains(IPAddress("172.31.0.1")!))
        #expect(IPRange("fd00::/8")!.contains(IPAddress("fd99::1")!))
        #expect(!IPRange("fd00::/8")!.contains(IPAddress("10.0.0.1")!))
    }

    @Test("private, loopback, metadata and other non-public targets are refused before connecting, names included")
    func refusals() async throws {
        let guarded = try OutboundGuard()
        let refused = [
            "http://127.0.0.1/", "http://127.0.0.1:8080/admin", "http://[::1]/", "http://10.0.0.1/", "http://192.168.0.10/",
            "http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/", "http://100.64.0.1/", "http://224.0.0.1/",
            "http://0.0.0.0/", "http://[::ffff:127.0.0.1]/", "http://[fe80::1]/", "http://localhost:9/", "http://LOCALHOST/",
            // Other spellings of 127.0.0.1 that resolvers accept, read without DNS.
            "http://2130706433/", "http://0x7f000001/", "http://127.1/",
        ]
        for url in refused {
            do {
                let target = try await guarded.check(url: url)
                Issue.record("\(url) was allowed: \(target.addresses)")
            } catch {
                #expect(error.code == .forbiddenAddress, "\(url): \(error)")
                #expect(error.address != nil)
            }
        }
        let metadata = await #expect(throws: OutboundRefusal.self) { _ = try await guarded.check(url: "http://169.254.169.254/") }
        #expect(metadata?.message.contains("cloud metadata") == true)

        for (url, code) in [
            ("file:///etc/passwd", OutboundRefusal.Code.scheme), ("gopher://127.0.0.1/", .scheme), ("ftp://example.com/", .scheme),
            ("http://user:secret@8.8.8.8/", .invalidURL), ("not a url", .invalidURL), ("http:///path", .invalidURL),
        ] {
            do {
                _ = try await guarded.check(url: url)
                Issue.record("\(url) was allowed")
            } catch {
                #expect(error.code == code, "\(url): \(error)")
            }
        }
        // A public address passes, without anything being sent (there is nothing to resolve).
        let target = try await guarded.check(url: "https://8.8.8.8/dns-query")
        #expect(target.port == 443)
        #expect(target.addresses.map { $0.ipAddress } == ["8.8.8.8"])
    }

    @Test("a host entry with a port allows that port of the host only, whatever the host resolves to")
    func hostWithPort() async throws {
        let guarded = try OutboundGuard(allowlist: ["localhost:38201", "[::1]:38202"])
        #expect(try await !guarded.check(url: "http://localhost:38201/x").addresses.isEmpty)
        #expect(try await !guarded.check(url: "http://LocalHost:38201/x").addresses.isEmpty)
        #expect(try await !guarded.check(url: "http://[::1]:38202/").addresses.isEmpty)
        for url in ["http://localhost:38202/", "http://localhost/", "https://localhost/", "http://localhost:8000/metrics", "http://127.0.0.1:38201/", "http://[::1]:38201/"] {
            await #expect(throws: OutboundRefusal.self, "\(url)") { _ = try await guarded.check(url: url) }
        }
        // The same rule where the browser's proxy and the HTTP client resolve a host and port.
        await #expect(throws: OutboundRefusal.self) { _ = try await guarded.resolve(host: "localhost", port: 9000) }
        #expect(try await !guarded.resolve(host: "localhost", port: 38201).isEmpty)
    }

    @Test("the allowlist lets named ranges, ports and hosts through, and nothing else")
    func allowlist() async throws {
        let guarded = try OutboundGuard(allowlist: ["127.0.0.1:18080", "10.1.0.0/16", "[::1]", "localhost"])
        #expect(try await guarded.check(url: "http://127.0.0.1:18080/x").addresses.first?.ipAddress == "127.0.0.1")
        #expect(try await guarded.check(url: "http://10.1.2.3/").port == 80)
        #expect(try await guarded.check(url: "http://[::1]:5000/").addresses.first?.ipAddress == "::1")
        #expect(try await !guarded.check(url: "http://localhost:1/").addresses.isEmpty)
        for url in ["http://127.0.0.1:18081/", "http://10.2.0.1/", "http://169.254.169.254/"] {
            await #expect(throws: OutboundRefusal.self, "\(url)") { _ = try await guarded.check(url: url) }
        }
        for entry in ["10.0.0.0/33", "1.2.3.4:99999", "[::1]:0", "a/b", "localhost:0", "localhost:x"] {
            #expect(throws: OutboundRefusal.self, "\(entry)") { _ = try OutboundGuard(allowlist: [entry]) }
        }
    }
}
