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
        for _ in 0..<200 {
            let candidate = Int.random(in: 20_000...32_767)
            let fresh = Self.handedOut.withLock { $0.insert(candidate).inserted }
            guard fresh else { continue }
            do {
                let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                    .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                    .bind(host: "127.0.0.1", port: candidate).get()
                try await channel.close()
                return candidate
            } catch {
                continue  // in use by someone else
            }
        }
        throw TestSetupError(description: "no free port on 127.0.0.1 in 20000–32767 after 200 tries")
    }
}
