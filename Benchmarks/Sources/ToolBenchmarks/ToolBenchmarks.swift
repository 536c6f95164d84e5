// make bench-tools: the tool service's executors beside what they wrap, in one run.
//
// - python: a no-op tool invoked through the gateway (HTTP → gateway → SparkWire → tool service →
//   prlimit, setpriv and bubblewrap → python3), one call at a time, beside python3 started directly
//   (posix_spawn, stdin → stdout) and the same sandbox command started directly, so that the table
//   says where the time goes.
// - http: a GET tool against a loopback HTTP server, 16 calls at a time, beside async-http-client
//   calling the same server directly with the same concurrency.
//
// SparkOps runs in this process as `sparkops dev` does (every service and the gateway, SQLite);
// the loopback server too.
import AsyncHTTPClient
import BenchmarkSupport
import Foundation
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import SparkKit
import SparkTesting
import Synchronization

@main
struct ToolBenchmarks {
    static let pythonCalls = Int(ProcessInfo.processInfo.environment["BENCH_PYTHON_CALLS"] ?? "") ?? 200
    static let httpSeconds = Double(ProcessInfo.processInfo.environment["BENCH_HTTP_SECONDS"] ?? "") ?? 10
    static let concurrency = 16

    static func main() async throws {
        Bench.say(Bench.machine())

        let server = try await HTTPEchoServer.start()
        let python = CommandLine.arguments.count > 1 ? CommandLine.arguments[1] : "/usr/bin/python3"
        try await TestCluster.run(backend: .sqlite, overrides: [
            "tool.outboundAllow": "127.0.0.1:\(server.port)", "log.level": "error", "gateway.callTimeoutSeconds": "60",
            "gateway.rateLimit.principalPerMinute": "100000000", "gateway.rateLimit.principalBurst": "100000000",
            "gateway.rateLimit.ipPerMinute": "100000000", "gateway.rateLimit.ipBurst": "100000000",
        ]) { cluster in
            let token = try await cluster.adminToken()
            let project = try await cluster.createProject("bench", token: token)
            for source in [
                "tool: noop\nkind: python\nside_effects: none\npython:\n  code: |\n    import sys\n    sys.stdout.write(sys.stdin.read())\n",
                "tool: get\nkind: http\nside_effects: none\nhttp: { url: \"\(server.baseURL)/item\" }\n",
            ] {
                let applied = try await cluster.http.send(.POST, "/api/v1/projects/\(project)/tools/apply", token: token, json: ["source": source])
                guard applied.status == 200 else { fatalError("apply failed: \(applied.text)") }
            }
            let invoke: @Sendable (String) async throws -> Void = { tool in
                let reply = try await cluster.http.send(.POST, "/api/v1/projects/\(project)/tools/\(tool)/invoke", token: token, json: ["input": ["n": 1]])
                guard reply.status == 200, reply.json["error"] == nil else { fatalError("invoke \(tool) failed: \(reply.text)") }
            }

            Bench.say("\npython no-op, one call at a time, \(Self.pythonCalls) calls each (after 10 of warm-up)")
            let sandboxed = try await Bench.latencies(Self.pythonCalls) { try await invoke("noop") }
            let direct = try await Bench.latencies(Self.pythonCalls) { try Self.spawn([python, "-I", "-B", "-c", "import sys; sys.stdout.write(sys.stdin.read())"]) }
            let bwrap = ["/usr/bin/prlimit", "--cpu=10:11", "--data=268435456", "--nproc=64", "--fsize=16777216", "--core=0", "--",
                         "/usr/bin/bwrap", "--unshare-all", "--unshare-user", "--uid", "65534", "--gid", "65534", "--die-with-parent", "--new-session",
                         "--ro-bind", "/usr", "/usr", "--ro-bind", "/etc", "/etc", "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
                         "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--", python, "-I", "-B", "-c", "import sys; sys.stdout.write(sys.stdin.read())"]
            let hasBwrap = FileManager.default.isExecutableFile(atPath: "/usr/bin/bwrap")
            let sandboxOnly = hasBwrap ? try await Bench.latencies(Self.pythonCalls) { try Self.spawn(bwrap) } : []
            Bench.say(Bench.row("", "p50 ms", "p99 ms", "vs python3"))
            Bench.say(Bench.row("SparkOps invoke (gateway → tool service → sandbox)", Bench.ms(sandboxed, 0.5), Bench.ms(sandboxed, 0.99), Bench.ratio(sandboxed, direct)))
            if hasBwrap {
                Bench.say(Bench.row("prlimit + bubblewrap + python3, spawned directly", Bench.ms(sandboxOnly, 0.5), Bench.ms(sandboxOnly, 0.99), Bench.ratio(sandboxOnly, direct)))
            }
            Bench.say(Bench.row("python3, spawned directly", Bench.ms(direct, 0.5), Bench.ms(direct, 0.99), "1.00×"))

            Bench.say("\nhttp GET against a loopback server, \(Self.concurrency) calls at a time, \(Int(Self.httpSeconds)) s each")
            let viaTool = try await Bench.throughput(concurrency: Self.concurrency, seconds: Self.httpSeconds) { try await invoke("get") }
            let client = HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: .init())
            let viaClient = try await Bench.throughput(concurrency: Self.concurrency, seconds: Self.httpSeconds) {
                let response = try await client.execute(HTTPClientRequest(url: "\(server.baseURL)/item"), timeout: .seconds(10))
                _ = try await response.body.collect(upTo: 1 << 20)
                guard response.status == .ok else { fatalError("direct GET failed") }
            }
            try await client.shutdown()
            Bench.say(Bench.row("", "calls/s", "", "vs direct"))
            Bench.say(Bench.row("SparkOps invoke (gateway → tool service → guarded client)", String(format: "%.0f", viaTool), "", String(format: "%.2f×", viaTool / viaClient)))
            Bench.say(Bench.row("async-http-client, direct", String(format: "%.0f", viaClient), "", "1.00×"))
        }
        try await server.stop()
    }

    /// Runs a command with `{"n": 1}` on stdin and waits for it, as the sandbox would.
    static func spawn(_ arguments: [String]) throws {
        let process = Process()
        process.executableURL = URL(filePath: arguments[0])
        process.arguments = Array(arguments.dropFirst())
        let input = Pipe()
        let output = Pipe()
        process.standardInput = input
        process.standardOutput = output
        try process.run()
        input.fileHandleForWriting.write(Data(#"{"n": 1}"#.utf8))
        try input.fileHandleForWriting.close()
        _ = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { fatalError("\(arguments[0]) exited \(process.terminationStatus)") }
    }
}
