import NIOCore
import NIOPosix
import Synchronization

/// A port on 127.0.0.1 that was free a moment ago, for a server a test starts next.
///
/// Ports come from 20000–32767, below Linux's ephemeral range (32768–60999): the kernel never
/// gives that range to outgoing connections, so a port handed out here cannot be taken by a
/// client socket before the server binds it. Each port is handed out once per process, and only
/// after binding it succeeded.
public enum FreePort {
    private static let handedOut = Mutex<Set<Int>>([])

    public static func allocate() async throws -> Int {
        try await Self.allocate(alongside: [])
    }

    /// A free port whose neighbours at `offsets` are free and handed out too: for a setting such
    /// as `project.port` alone, whose admin port defaults to the port plus 2000.
    public static func allocate(alongside offsets: [Int]) async throws -> Int {
        let highest = 32_767 - (offsets.max() ?? 0)
        for _ in 0..<200 {
            let candidate = Int.random(in: 20_000...highest)
            let ports = [candidate] + offsets.map { candidate + $0 }
            let fresh = Self.handedOut.withLock { handedOut in
                guard ports.allSatisfy({ !handedOut.contains($0) }) else { return false }
                handedOut.formUnion(ports)
                return true
            }
            guard fresh else { continue }
            if await Self.bindable(ports) { return candidate }
        }
        throw TestSetupError(description: "no free port on 127.0.0.1 in 20000–32767 after 200 tries")
    }

    private static func bindable(_ ports: [Int]) async -> Bool {
        for port in ports {
            do {
                let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                    .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                    .bind(host: "127.0.0.1", port: port).get()
                try await channel.close()
            } catch {
                return false  // in use by someone else
            }
        }
        return true
    }
}
