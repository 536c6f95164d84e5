import DequeModule
import GRPCCore
import Logging
import NIOCore
import NIOSSL
import Synchronization

/// The connections of one client transport: one subchannel per resolved address (times
/// `connectionsPerAddress`), each keeping a connection up and reconnecting with backoff; calls are
/// spread round robin across the subchannels that are ready.
///
/// While some subchannel is connecting, calls wait for it (bounded by their deadline); when every
/// subchannel is in backoff after failures, calls fail at once with UNAVAILABLE, as gRPC does.
final class ConnectionPool: Sendable {
    private enum Phase {
        case connecting
        case ready(ClientConnection)
        case backoff
    }

    private struct Subchannel {
        var address: SocketAddress
        var phase: Phase = .connecting
        var removed = false
    }

    private struct State {
        var subchannels: [Int: Subchannel] = [:]
        var nextSubchannelID = 0
        var ready: [Int] = []
        var nextPick = 0
        var waiters: [UInt64: (continuation: CheckedContinuation<ClientConnection, any Error>, waitForReady: Bool)] = [:]
        var nextWaiterID: UInt64 = 0
        var resolved = false
        var lastError: String?
        var shutdown = false
        /// Every connection ever made and not yet closed, ready or draining.
        var live: [ObjectIdentifier: ClientConnection] = [:]
        var liveWaiters: [CheckedContinuation<Void, Never>] = []
    }

    private let state = Mutex(State())
    private let logger: Logger

    init(logger: Logger) {
        self.logger = logger
    }

    // MARK: Picking

    /// A ready connection, round robin. With `waitForReady`, waits while every subchannel is in
    /// backoff instead of failing at once (gRPC's wait-for-ready semantics); the call's deadline
    /// still bounds the wait.
    func pick(waitForReady: Bool = false) async throws -> ClientConnection {
        enum Immediate {
            case connection(ClientConnection)
            case failure(RPCError)
            case wait(UInt64)
        }
        let immediate = self.state.withLock { state -> Immediate in
            if let connection = Self.nextReady(&state) { return .connection(connection) }
            if let error = Self.failure(state, waitForReady: waitForReady) { return .failure(error) }
            defer { state.nextWaiterID += 1 }
            return .wait(state.nextWaiterID)
        }
        let waiterID: UInt64
        switch immediate {
        case .connection(let connection): return connection
        case .failure(let error): throw error
        case .wait(let id): waiterID = id
        }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<ClientConnection, any Error>) in
                let outcome: Result<ClientConnection, any Error>? = self.state.withLock { state in
                    if Task.isCancelled { return .failure(CancellationError()) }
                    if let connection = Self.nextReady(&state) { return .success(connection) }
                    if let error = Self.failure(state, waitForReady: waitForReady) { return .failure(error) }
                    state.waiters[waiterID] = (continuation, waitForReady)
                    return nil
                }
                if let outcome { continuation.resume(with: outcome) }
            }
        } onCancel: {
            let waiter = self.state.withLock { $0.waiters.removeValue(forKey: waiterID) }
            waiter?.continuation.resume(throwing: CancellationError())
        }
    }

    private static func nextReady(_ state: inout State) -> ClientConnection? {
        var attempts = state.ready.count
        while attempts > 0 {
            attempts -= 1
            let index = state.nextPick % state.ready.count
            state.nextPick &+= 1
            if case .ready(let connection) = state.subchannels[state.ready[index]]?.phase, connection.isAcceptingStreams {
                return connection
            }
        }
        return nil
    }

    /// Why a call cannot wait, or nil if some subchannel may still become ready.
    private static func failure(_ state: State, waitForReady: Bool = false) -> RPCError? {
        if state.shutdown {
            return RPCError(code: .failedPrecondition, message: "the client transport is shut down")
        }
        guard state.resolved, !waitForReady else { return nil }
        let connecting = state.subchannels.values.contains { subchannel in
            if case .connecting = subchannel.phase, !subchannel.removed { return true }
            return false
        }
        if connecting { return nil }
        let reason = state.lastError.map { ": \($0)" } ?? ""
        return RPCError(code: .unavailable, message: "no connection to the service is available\(reason)")
    }

    private func wakeWaiters() {
        let resumptions: [(CheckedContinuation<ClientConnection, any Error>, Result<ClientConnection, any Error>)] =
            self.state.withLock { state in
                var out: [(CheckedContinuation<ClientConnection, any Error>, Result<ClientConnection, any Error>)] = []
                for (id, waiter) in state.waiters {
                    if let connection = Self.nextReady(&state) {
                        out.append((waiter.continuation, .success(connection)))
                    } else if let error = Self.failure(state, waitForReady: waiter.waitForReady) {
                        out.append((waiter.continuation, .failure(error)))
                    } else {
                        continue
                    }
                    state.waiters.removeValue(forKey: id)
                }
                return out
            }
        for (waiter, result) in resumptions { waiter.resume(with: result) }
    }

    // MARK: Resolution

    /// Records the addresses of the latest resolution. Returns the new subchannels to run.
    func update(addresses: [SocketAddress], connectionsPerAddress: Int) -> [(Int, SocketAddress)] {
        let (added, removedConnections) = self.state.withLock { state in
            state.resolved = true
            var wanted: [String: (SocketAddress, Int)] = [:]
            for address in addresses { wanted["\(address)"] = (address, connectionsPerAddress) }
            var removed: [ClientConnection] = []
            for (id, subchannel) in state.subchannels where !subchannel.removed {
                let key = "\(subchannel.address)"
                if let (address, count) = wanted[key], count > 0 {
                    wanted[key] = (address, count - 1)
                } else {
                    state.subchannels[id]?.removed = true
                    if case .ready(let connection) = subchannel.phase { removed.append(connection) }
                    state.ready.removeAll { $0 == id }
                }
            }
            var added: [(Int, SocketAddress)] = []
            for (_, (address, count)) in wanted.sorted(by: { $0.key < $1.key }) where count > 0 {
                for _ in 0 ..< count {
                    let id = state.nextSubchannelID
                    state.nextSubchannelID += 1
                    state.subchannels[id] = Subchannel(address: address)
                    added.append((id, address))
                }
            }
            return (added, removed)
        }
        for connection in removedConnections { connection.beginGracefulShutdown() }
        self.wakeWaiters()
        return added
    }

    func resolutionFailed(_ reason: String) {
        self.state.withLock { state in
            state.lastError = reason
            state.resolved = true
        }
        self.wakeWaiters()
    }

    // MARK: Subchannels

    func isActive(_ id: Int) -> Bool {
        self.state.withLock { !$0.shutdown && $0.subchannels[id].map { !$0.removed } ?? false }
    }

    func connecting(_ id: Int) {
        self.state.withLock { $0.subchannels[id]?.phase = .connecting }
    }

    func ready(_ id: Int, _ connection: ClientConnection) {
        let keep = self.state.withLock { state -> Bool in
            state.live[ObjectIdentifier(connection)] = connection
            guard !state.shutdown, state.subchannels[id].map({ !$0.removed }) ?? false else { return false }
            state.subchannels[id]?.phase = .ready(connection)
            state.ready.append(id)
            return true
        }
        if !keep { connection.beginGracefulShutdown() }
        self.wakeWaiters()
    }

    /// The subchannel's connection stopped taking new streams; it keeps serving the ones it has.
    func notReady(_ id: Int, failure: String?) {
        self.state.withLock { state in
            state.ready.removeAll { $0 == id }
            state.subchannels[id]?.phase = .connecting
            if let failure { state.lastError = failure }
        }
    }

    func failed(_ id: Int, reason: String) {
        self.state.withLock { state in
            state.subchannels[id]?.phase = .backoff
            state.lastError = reason
        }
        self.wakeWaiters()
    }

    func removeSubchannel(_ id: Int) {
        self.state.withLock { state in
            state.subchannels.removeValue(forKey: id)
            state.ready.removeAll { $0 == id }
        }
        self.wakeWaiters()
    }

    func connectionClosed(_ connection: ClientConnection) {
        let waiters = self.state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.live.removeValue(forKey: ObjectIdentifier(connection))
            guard state.live.isEmpty else { return [] }
            defer { state.liveWaiters.removeAll() }
            return state.liveWaiters
        }
        for waiter in waiters { waiter.resume() }
    }

    // MARK: Shutdown

    /// Stops new calls; every connection drains its calls and closes.
    func beginShutdown() {
        let (connections, waiters) = self.state.withLock { state in
            state.shutdown = true
            state.ready.removeAll()
            defer { state.waiters.removeAll() }
            return (Array(state.live.values), Array(state.waiters.values))
        }
        for waiter in waiters {
            waiter.continuation.resume(throwing: RPCError(code: .failedPrecondition, message: "the client transport is shut down"))
        }
        for connection in connections { connection.beginGracefulShutdown() }
    }

    var isShutdown: Bool { self.state.withLock { $0.shutdown } }

    /// Returns when every connection has closed.
    func waitForConnectionsToClose() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let done = self.state.withLock { state in
                if state.live.isEmpty { return true }
                state.liveWaiters.append(continuation)
                return false
            }
            if done { continuation.resume() }
        }
    }

    func closeAll() {
        let connections = self.state.withLock { Array($0.live.values) }
        for connection in connections { connection.close() }
    }

    /// The most unread bytes any live connection has held; for tests.
    var peakBufferedBytes: Int {
        self.state.withLock { state in state.live.values.map(\.outbox.peakBufferedBytes).max() ?? 0 }
    }

    var immediateDrainCount: Int {
        self.state.withLock { state in state.live.values.map(\.outbox.immediateDrainCount).reduce(0, +) }
    }

    /// Subchannels ready now; for tests.
    var readyCount: Int { self.state.withLock { $0.ready.count } }
}
