import Foundation
import GRPCCore
import GRPCInProcessTransport
import GRPCNIOTransportHTTP2
import NIOCore
import NIOPosix
import SparkKit
import SparkProto
import SparkWire
import SwiftProtobuf

/// The transports compared.
enum BenchTransport: String, CaseIterable {
    /// SparkWire's lean unary path on both sides (streaming calls still go through GRPCCore).
    case lean
    case sparkwire
    case http2
    case rawtls
    /// GRPCCore with its in-process transport: no network, no TLS; GRPCCore's own cost per call.
    case inprocess

    var title: String {
        switch self {
        case .lean: return "SparkWire lean"
        case .sparkwire: return "GRPCCore over SparkWire"
        case .http2: return "gRPC HTTP/2"
        case .rawtls: return "raw TLS"
        case .inprocess: return "GRPCCore in-process"
        }
    }
}

enum Scenario: String, CaseIterable {
    case unary1 = "unary-1"
    case unary64 = "unary-64"
    case stream
    /// Lean path only: the 64 callers run on the client's one event loop, as a SparkOps handler
    /// does when it calls another service (handlers run on their connection's event loop, and a
    /// distributed deployment runs one loop per process).
    case unary64Loop = "unary-64-loop"

    /// The scenarios every transport runs, in the table's order.
    static let table: [Scenario] = [.unary1, .unary64, .stream]

    var title: String {
        switch self {
        case .unary1: return "unary 1 KiB, 1 call at a time"
        case .unary64: return "unary 1 KiB, 64 concurrent calls"
        case .stream: return "server streaming 100,000 × 256 B"
        case .unary64Loop: return "unary 1 KiB, 64 concurrent calls from the event loop"
        }
    }

    /// The client's environment: one event loop when the callers run on it.
    var environment: [String: String] {
        self == .unary64Loop ? ["NIO_SINGLETON_GROUP_LOOP_COUNT": "1"] : [:]
    }
}

struct ScenarioResult: Codable {
    var callsPerSecond: Double
    var p50Micros: Double
    var p99Micros: Double
    var messagesPerSecond: Double
    var clientPeakRSSKiB: Int
    /// Calls that failed during the measurement (each is retried by the loop, not counted as done).
    var failedCalls: Int = 0
}

enum Settings {
    static let payload = Data(repeating: 1, count: 1024)
    static let streamCount = 100_000
    static var warmup: Duration { .seconds(1) }
    static var duration: Duration {
        .seconds(Int(ProcessInfo.processInfo.environment["BENCH_SECONDS"] ?? "") ?? 5)
    }
}

/// Serves the echo service over a gRPC transport until stdin closes or says "stop".
func serveGRPC(_ transport: BenchTransport, certificates: String) async throws {
    switch transport {
    case .sparkwire, .lean:
        let server = SparkWireServerTransport(config: .init(
            host: "127.0.0.1", port: 0,
            security: .mutualTLS(.directory(certificates, service: "echo")),
            keepalive: nil,
            methods: SparkProtoMethods.all,
            unaryMethods: transport == .lean ? SparkProtoMethods.unary(of: [BenchEchoService()]) : []
        ))
        try await runServer(server) { try await server.listeningAddress.port! }
    case .http2:
        let server = StandardGRPC.serverTransport(host: "127.0.0.1", port: 0, certificateDirectory: certificates, service: "echo")
        try await runServer(server) { try await server.listeningAddress.ipv4!.port }
    case .inprocess:
        emit("PORT 0")
        await waitForStop()
    case .rawtls:
        let channel = try await RawTLS.serve(certificates: certificates)
        emit("PORT \(channel.localAddress!.port!)")
        await waitForStop()
        try? await channel.close()
    }
    emit("RSS \(peakRSSKiB())")
}

private func runServer<T: ServerTransport>(_ transport: T, port: @escaping @Sendable () async throws -> Int) async throws {
    try await withGRPCServer(transport: transport, services: [BenchEchoService()]) { server in
        emit("PORT \(try await port())")
        await waitForStop()
    }
}

/// Returns when stdin says "stop" or closes.
func waitForStop() async {
    await withCheckedContinuation { continuation in
        Thread.detachNewThread {
            while let line = readLine(), line != "stop" {}
            continuation.resume()
        }
    }
}

/// Runs one scenario as a client in this process.
func runClient(_ transport: BenchTransport, port: Int, scenario: Scenario, certificates: String) async throws -> ScenarioResult {
    if transport == .rawtls {
        return try await runRawScenario(scenario, port: port, certificates: certificates)
    }
    return try await withEchoClient(transport, port: port, certificates: certificates) { echo in
        try await runGRPCScenario(scenario, echo: echo)
    }
}

/// Makes `calls` calls one at a time and exits: the run `scripts/wire-counts.sh` counts task
/// switches, allocations and system calls of, under `perf stat`.
func countCalls(_ transport: BenchTransport, port: Int, calls: Int, certificates: String) async throws {
    try await withEchoClient(transport, port: port, certificates: certificates) { echo in
        let request = Sparkops_Testing_V1_EchoRequest.with { $0.payload = Settings.payload }
        _ = try await echo.get(request)
        emit("READY")
        _ = readLine()
        for _ in 0 ..< calls {
            _ = try await echo.get(request)
        }
        emit("DONE")
        _ = readLine()
    }
}

/// Runs `body` with an echo client over a GRPCCore-shaped transport (not raw TLS).
private func withEchoClient<T: Sendable>(
    _ transport: BenchTransport,
    port: Int,
    certificates: String,
    _ body: (any Sparkops_Testing_V1_EchoService.ClientProtocol) async throws -> T
) async throws -> T {
    switch transport {
    case .sparkwire, .lean:
        let client = try SparkWireClientTransport(config: .init(
            endpoints: [.init(host: "127.0.0.1", port: port)],
            serverIdentity: "echo",
            security: .mutualTLS(.directory(certificates, service: "gateway")),
            limits: SparkWireConnectionLimits(initialWindow: Int(ProcessInfo.processInfo.environment["BENCH_WINDOW"] ?? "") ?? SparkWireConnectionLimits.defaults.initialWindow),
            keepalive: nil,
            methods: SparkProtoMethods.all,
            // Every transport runs GRPCCore's one-shot executor: the HTTP/2 client has no retry
            // policy, so neither does SparkWire here (GRPCCore's retry executor costs ~20 %).
            retryPolicy: nil,
            // BENCH_CALLS_ON_LOOP=0: GRPCCore over SparkWire runs calls on the callers' threads (to
            // compare); the lean path always does.
            runsCallsOnEventLoop: ProcessInfo.processInfo.environment["BENCH_CALLS_ON_LOOP"] != "0"
        ))
        if transport == .lean {
            let channel = SparkWireChannel(transport: client)
            return try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await channel.runConnections() }
                defer { channel.beginGracefulShutdown() }
                return try await body(Sparkops_Testing_V1_EchoService.SparkWireClient(wrapping: channel))
            }
        }
        return try await withGRPCClient(transport: client) { try await body(Sparkops_Testing_V1_EchoService.Client(wrapping: $0)) }
    case .http2:
        let client = try StandardGRPC.clientTransport(
            host: "127.0.0.1", port: port, certificateDirectory: certificates, identity: "gateway", serverIdentity: "echo"
        )
        return try await withGRPCClient(transport: client) { try await body(Sparkops_Testing_V1_EchoService.Client(wrapping: $0)) }
    case .inprocess:
        let pair = InProcessTransport()
        return try await withGRPCServer(transport: pair.server, services: [BenchEchoService()]) { _ in
            try await withGRPCClient(transport: pair.client) { try await body(Sparkops_Testing_V1_EchoService.Client(wrapping: $0)) }
        }
    case .rawtls:
        throw BenchmarkError(description: "raw TLS has no GRPCCore client")
    }
}

private func runGRPCScenario(_ scenario: Scenario, echo: any Sparkops_Testing_V1_EchoService.ClientProtocol) async throws -> ScenarioResult {
    let request = Sparkops_Testing_V1_EchoRequest.with { $0.payload = Settings.payload }
    // Connect before measuring.
    _ = try await echo.get(request)
    switch scenario {
    case .unary1, .unary64, .unary64Loop:
        let concurrency = scenario == .unary1 ? 1 : 64
        // The process's one event loop (Scenario.environment), which the connection is also on.
        let callerExecutor = scenario == .unary64Loop ? EventLoopTaskExecutor(MultiThreadedEventLoopGroup.singleton.next()) : nil
        let warmupEnd = ContinuousClock.now + Settings.warmup
        let end = warmupEnd + Settings.duration
        let (latencies, failures) = try await withThrowingTaskGroup(of: ([Int64], Int).self) { group in
            for _ in 0 ..< concurrency {
                group.addTask(executorPreference: callerExecutor) {
                    var latencies: [Int64] = []
                    var failures = 0
                    latencies.reserveCapacity(200_000)
                    while true {
                        let started = ContinuousClock.now
                        if started >= end { break }
                        do {
                            _ = try await echo.get(request)
                        } catch {
                            failures += 1
                            if failures == 1 { FileHandle.standardError.write(Data("call failed: \(error)\n".utf8)) }
                            continue
                        }
                        let finished = ContinuousClock.now
                        if started >= warmupEnd && finished <= end {
                            latencies.append((finished - started).nanoseconds)
                        }
                    }
                    return (latencies, failures)
                }
            }
            var all: [Int64] = []
            var failures = 0
            for try await part in group {
                all += part.0
                failures += part.1
            }
            return (all, failures)
        }
        var result = ScenarioResult(latencies: latencies, over: Settings.duration)
        result.failedCalls = failures
        return result
    case .stream:
        let streamRequest = Sparkops_Testing_V1_EchoRequest.with {
            $0.payload = Data(repeating: 7, count: 256)
            $0.count = UInt32(Settings.streamCount)
        }
        var best = Duration.seconds(1_000)
        for _ in 0 ..< 3 {
            let started = ContinuousClock.now
            let received = try await echo.expand(streamRequest) { response in
                var count = 0
                for try await _ in response.messages { count += 1 }
                return count
            }
            precondition(received == Settings.streamCount)
            best = min(best, ContinuousClock.now - started)
        }
        return ScenarioResult(streamed: Settings.streamCount, in: best)
    }
}

private func runRawScenario(_ scenario: Scenario, port: Int, certificates: String) async throws -> ScenarioResult {
    switch scenario {
    case .unary1, .unary64, .unary64Loop:
        let handler = RawUnaryClientHandler(
            concurrency: scenario == .unary1 ? 1 : 64,
            payloadSize: 1024 + 8,
            warmup: Settings.warmup.timeAmount,
            duration: Settings.duration.timeAmount,
            eventLoop: MultiThreadedEventLoopGroup.singleton.next()
        )
        let channel = try await RawTLS.connect(port: port, certificates: certificates, handler: handler)
        let (_, latencies) = try await handler.done.futureResult.get()
        try? await channel.close()
        return ScenarioResult(latencies: latencies, over: Settings.duration)
    case .stream:
        var best = Duration.seconds(1_000)
        for _ in 0 ..< 3 {
            let handler = RawStreamClientHandler(count: Settings.streamCount, eventLoop: MultiThreadedEventLoopGroup.singleton.next())
            let channel = try await RawTLS.connect(port: port, certificates: certificates, handler: handler)
            let elapsed = try await handler.done.futureResult.get()
            try? await channel.close()
            best = min(best, .nanoseconds(elapsed.nanoseconds))
        }
        return ScenarioResult(streamed: Settings.streamCount, in: best)
    }
}

extension ScenarioResult {
    init(latencies: [Int64], over duration: Duration) {
        let sorted = latencies.sorted()
        func percentile(_ p: Double) -> Double {
            guard !sorted.isEmpty else { return 0 }
            return Double(sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))]) / 1000
        }
        self.init(
            callsPerSecond: Double(sorted.count) / duration.seconds,
            p50Micros: percentile(0.50),
            p99Micros: percentile(0.99),
            messagesPerSecond: 0,
            clientPeakRSSKiB: peakRSSKiB()
        )
    }

    init(streamed count: Int, in duration: Duration) {
        self.init(callsPerSecond: 0, p50Micros: 0, p99Micros: 0, messagesPerSecond: Double(count) / duration.seconds, clientPeakRSSKiB: peakRSSKiB())
    }
}

extension Duration {
    var seconds: Double { Double(self.components.seconds) + Double(self.components.attoseconds) / 1e18 }
    var nanoseconds: Int64 { self.components.seconds * 1_000_000_000 + self.components.attoseconds / 1_000_000_000 }
    var timeAmount: TimeAmount { .nanoseconds(self.nanoseconds) }
}

/// The process's peak resident set size (VmHWM), in KiB.
func peakRSSKiB() -> Int {
    guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return 0 }
    for line in status.split(separator: "\n") where line.hasPrefix("VmHWM:") {
        return Int(line.split(separator: " ", omittingEmptySubsequences: true)[1]) ?? 0
    }
    return 0
}

/// Writes a line to stdout at once (print buffers when stdout is a pipe).
func emit(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}
