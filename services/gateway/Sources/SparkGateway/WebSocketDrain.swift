import ServiceLifecycle
import Synchronization

/// The WebSockets open now, so that a shutdown can close them.
///
/// Each socket registers when it opens and is told, through its `closing` stream, when the gateway
/// shuts down; a socket that opens after that is refused.
final class OpenWebSockets: Sendable {
    private struct State {
        var nextID: UInt64 = 0
        var sockets: [UInt64: AsyncStream<Void>.Continuation] = [:]
        var closing = false
    }

    private let state = Mutex(State())

    /// A new socket's id and the stream that yields once when it must close; nil once the
    /// gateway is shutting down.
    func open() -> (id: UInt64, closing: AsyncStream<Void>)? {
        let (stream, continuation) = AsyncStream<Void>.makeStream()
        let id: UInt64? = self.state.withLock { state in
            guard !state.closing else { return nil }
            state.nextID += 1
            state.sockets[state.nextID] = continuation
            return state.nextID
        }
        guard let id else { return nil }
        return (id, stream)
    }

    func remove(_ id: UInt64) {
        self.state.withLock { $0.sockets.removeValue(forKey: id) }?.finish()
    }

    /// Tells every open socket to close, and refuses new ones.
    func closeAll() {
        let sockets = self.state.withLock { state in
            state.closing = true
            return Array(state.sockets.values)
        }
        for socket in sockets { socket.yield() }
    }

    var count: Int { self.state.withLock { $0.sockets.count } }
}

/// Part of the gateway's service group that closes its WebSockets at a graceful shutdown.
///
/// A service group shuts its services down in reverse order; this one comes after the HTTP
/// server, so it runs first: every socket gets a going-away close (1001), and the gateway waits up
/// to `gateway.drainSeconds` for them to end before the server itself stops. Without it, a client
/// that keeps its socket open would hold the process for ever.
struct WebSocketDrain: Service {
    let sockets: OpenWebSockets
    let drain: Duration

    func run() async throws {
        do {
            try await gracefulShutdown()
        } catch {
            return  // cancelled: the group is stopping without a graceful shutdown
        }
        self.sockets.closeAll()
        // Each socket ends itself within the drain time; a little more for the last writes.
        let deadline = ContinuousClock.now + self.drain + .seconds(2)
        while self.sockets.count > 0 && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(20))
        }
    }
}
