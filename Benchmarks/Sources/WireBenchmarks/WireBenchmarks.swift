// make bench-wire: EchoService over SparkWire and over gRPC's HTTP/2 transport, both with mutual
// TLS 1.3 on loopback, beside a raw SwiftNIO TLS echo of the same bytes (the ceiling). Each server
// and each client runs in a process of its own, so each has its own peak RSS.
//
//   WireBenchmarks                       run everything and print the table
//   WireBenchmarks serve T CERTS         (child) serve transport T; prints PORT, then RSS at "stop"
//   WireBenchmarks run T PORT S CERTS    (child) run scenario S against T; prints RESULT <json>
//   WireBenchmarks certs DIR             write the certificates the children use
//   WireBenchmarks count T PORT N CERTS  N calls one at a time between READY and DONE (scripts/wire-counts.sh)
import Foundation
import SparkKit

@main
struct WireBenchmarks {
    static func main() async throws {
        let arguments = Array(CommandLine.arguments.dropFirst())
        switch arguments.first {
        case "serve":
            try await serveGRPC(BenchTransport(rawValue: arguments[1])!, certificates: arguments[2])
        case "certs":
            try CertificateAuthority.initialize(directory: URL(filePath: arguments[1]), services: ["echo", "gateway"], extraDNSNames: ["localhost"])
        case "count":
            try await countCalls(
                BenchTransport(rawValue: arguments[1])!,
                port: Int(arguments[2])!,
                calls: Int(arguments[3])!,
                certificates: arguments[4]
            )
        case "run":
            let result = try await runClient(
                BenchTransport(rawValue: arguments[1])!,
                port: Int(arguments[2])!,
                scenario: Scenario(rawValue: arguments[3])!,
                certificates: arguments[4]
            )
            emit("RESULT " + String(decoding: try JSONEncoder().encode(result), as: UTF8.self))
        default:
            try await Orchestrator().run()
        }
    }
}

struct Orchestrator {
    let executable = URL(filePath: CommandLine.arguments[0]).standardizedFileURL.path

    func run() async throws {
        let certificates = FileManager.default.temporaryDirectory.appending(path: "sparkops-bench-\(UUID().uuidString)")
        try CertificateAuthority.initialize(directory: certificates, services: ["echo", "gateway"], extraDNSNames: ["localhost"])
        defer { try? FileManager.default.removeItem(at: certificates) }

        print(Machine.describe())
        print("duration \(Settings.duration) per unary scenario after \(Settings.warmup) of warm-up; streaming: best of 3\n")
        var results: [BenchTransport: [Scenario: ScenarioResult]] = [:]
        var serverRSS: [BenchTransport: Int] = [:]
        for transport in BenchTransport.allCases {
            let server = try ChildProcess(self.executable, ["serve", transport.rawValue, certificates.path])
            let port = Int(try server.readLine(prefix: "PORT "))!
            for scenario in Scenario.table + (transport == .lean ? [.unary64Loop] : []) {
                let client = try ChildProcess(self.executable, ["run", transport.rawValue, "\(port)", scenario.rawValue, certificates.path], environment: scenario.environment)
                let json = try client.readLine(prefix: "RESULT ")
                results[transport, default: [:]][scenario] = try JSONDecoder().decode(ScenarioResult.self, from: Data(json.utf8))
                client.wait()
                FileHandle.standardError.write(Data("done: \(transport.title) \(scenario.title)\n".utf8))
            }
            server.write("stop\n")
            serverRSS[transport] = Int(try server.readLine(prefix: "RSS ")) ?? 0
            server.wait()
        }
        print(Report(results: results, serverRSS: serverRSS).render())
    }
}

struct Report {
    let results: [BenchTransport: [Scenario: ScenarioResult]]
    let serverRSS: [BenchTransport: Int]

    /// Columns in this order; the ratios compare the lean path with the others.
    static let columns: [BenchTransport] = [.lean, .sparkwire, .inprocess, .rawtls, .http2]

    func render() -> String {
        func value(_ t: BenchTransport, _ s: Scenario) -> ScenarioResult { self.results[t]![s]! }
        func rate(_ r: ScenarioResult, _ s: Scenario) -> Double { s == .stream ? r.messagesPerSecond : r.callsPerSecond }
        func number(_ x: Double) -> String {
            let formatter = NumberFormatter()
            formatter.numberStyle = .decimal
            formatter.maximumFractionDigits = 0
            return formatter.string(from: NSNumber(value: x)) ?? "\(x)"
        }
        func ratio(_ a: Double, _ b: Double) -> String { b == 0 ? "-" : String(format: "%.2f×", a / b) }
        func row(_ label: String, _ metric: String, _ cell: (BenchTransport) -> Double, ratios: [String]) -> String {
            "| \(label) | \(metric) | " + Self.columns.map { number(cell($0)) }.joined(separator: " | ") + " | " + ratios.joined(separator: " | ") + " |"
        }

        var lines: [String] = []
        lines.append("| scenario | metric | " + Self.columns.map(\.title).joined(separator: " | ") + " | lean / GRPCCore over SparkWire | lean / raw TLS | lean / in-process | lean / HTTP/2 |")
        lines.append("|---|---|" + String(repeating: "---:|", count: Self.columns.count + 4))
        for scenario in Scenario.table {
            let unit = scenario == .stream ? "messages/s" : "calls/s"
            let lean = rate(value(.lean, scenario), scenario)
            lines.append(row(scenario.title, unit, { rate(value($0, scenario), scenario) }, ratios: [
                ratio(lean, rate(value(.sparkwire, scenario), scenario)),
                ratio(lean, rate(value(.rawtls, scenario), scenario)),
                ratio(lean, rate(value(.inprocess, scenario), scenario)),
                ratio(lean, rate(value(.http2, scenario), scenario)),
            ]))
            if scenario != .stream {
                for (metric, path) in [("p50 µs", \ScenarioResult.p50Micros), ("p99 µs", \ScenarioResult.p99Micros)] {
                    let leanValue = value(.lean, scenario)[keyPath: path]
                    lines.append(row("", metric, { value($0, scenario)[keyPath: path] }, ratios: [
                        ratio(leanValue, value(.sparkwire, scenario)[keyPath: path]),
                        ratio(leanValue, value(.rawtls, scenario)[keyPath: path]),
                        ratio(leanValue, value(.inprocess, scenario)[keyPath: path]),
                        ratio(leanValue, value(.http2, scenario)[keyPath: path]),
                    ]))
                }
            }
        }
        lines.append(row("failed calls", "count", { t in Double(Scenario.table.reduce(0) { $0 + value(t, $1).failedCalls }) }, ratios: ["", "", "", ""]))
        lines.append("| peak RSS, server | MiB | " + Self.columns.map { $0 == .inprocess ? "(in client)" : "\(self.serverRSS[$0]! / 1024)" }.joined(separator: " | ") + " | | | | |")
        let clientPeak = { (t: BenchTransport) in Double(Scenario.table.map { value(t, $0).clientPeakRSSKiB }.max() ?? 0) / 1024 }
        lines.append(row("peak RSS, client (largest scenario)", "MiB", clientPeak, ratios: ["", "", "", ""]))

        // The targets of the lean path.
        let unary64 = rate(value(.lean, .unary64), .unary64) / max(1, rate(value(.rawtls, .unary64), .unary64))
        let loneP99 = value(.lean, .unary1).p99Micros / max(1, value(.inprocess, .unary1).p99Micros)
        let streaming = rate(value(.lean, .stream), .stream) / max(1, rate(value(.http2, .stream), .stream))
        func verdict(_ met: Bool) -> String { met ? "met" : "NOT met" }
        let onLoop = value(.lean, .unary64Loop)
        lines.append("")
        lines.append("SparkWire lean, \(Scenario.unary64Loop.title) (one event loop in the client, as a SparkOps service calls): "
            + "\(number(onLoop.callsPerSecond)) calls/s, p50 \(number(onLoop.p50Micros)) µs, p99 \(number(onLoop.p99Micros)) µs, "
            + "\(String(format: "%.0f %%", onLoop.callsPerSecond / max(1, rate(value(.rawtls, .unary64), .unary64)) * 100)) of raw TLS ×64, "
            + "failed calls \(onLoop.failedCalls)")
        lines.append("")
        lines.append("targets: unary ×64 at least 40 % of raw TLS: \(String(format: "%.1f %%", unary64 * 100)) (\(verdict(unary64 >= 0.4))); "
            + "lone call p99 at most 2× in-process GRPCCore: \(String(format: "%.2f×", loneP99)) (\(verdict(loneP99 <= 2))); "
            + "streaming at least 2× HTTP/2: \(String(format: "%.2f×", streaming)) (\(verdict(streaming >= 2)))")
        return lines.joined(separator: "\n")
    }
}

/// A child process with its stdin and stdout piped.
final class ChildProcess {
    private let process = Process()
    private let input = Pipe()
    private let output = Pipe()
    private var buffer = Data()

    init(_ executable: String, _ arguments: [String], environment: [String: String] = [:]) throws {
        self.process.executableURL = URL(filePath: executable)
        self.process.arguments = arguments
        if !environment.isEmpty {
            self.process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        }
        self.process.standardInput = self.input
        self.process.standardOutput = self.output
        try self.process.run()
    }

    func readLine(prefix: String) throws -> String {
        while true {
            if let newline = self.buffer.firstIndex(of: UInt8(ascii: "\n")) {
                let line = String(decoding: self.buffer[..<newline], as: UTF8.self)
                self.buffer.removeSubrange(...newline)
                if line.hasPrefix(prefix) { return String(line.dropFirst(prefix.count)) }
                continue
            }
            let chunk = self.output.fileHandleForReading.availableData
            if chunk.isEmpty { throw BenchmarkError(description: "child exited before printing \(prefix)") }
            self.buffer.append(chunk)
        }
    }

    func write(_ text: String) {
        self.input.fileHandleForWriting.write(Data(text.utf8))
    }

    func wait() {
        self.process.waitUntilExit()
    }
}

struct BenchmarkError: Error, CustomStringConvertible {
    var description: String
}

enum Machine {
    static func describe() -> String {
        let cpuinfo = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
        let model = cpuinfo.split(separator: "\n").first { $0.hasPrefix("model name") }.map { $0.split(separator: ":", maxSplits: 1)[1].trimmingCharacters(in: .whitespaces) } ?? "unknown CPU"
        let memory = ProcessInfo.processInfo.physicalMemory / (1 << 30)
        return "machine: \(ProcessInfo.processInfo.activeProcessorCount) cores, \(model), \(memory) GiB; \(ProcessInfo.processInfo.operatingSystemVersionString)"
    }
}
