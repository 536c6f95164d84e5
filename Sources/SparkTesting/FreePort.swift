import NIOCore
import NIOPosix

/// A port on 127.0.0.1 that was free a moment ago: bound, read, released.
public enum FreePort {
    public static func allocate() async throws -> Int {
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton).bind(host: "127.0.0.1", port: 0).get()
        let port = channel.localAddress!.port!
        try await channel.close()
        return port
    }
}
