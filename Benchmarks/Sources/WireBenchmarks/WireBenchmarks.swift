// make bench-wire: EchoService over SparkWire and over gRPC's HTTP/2 transport, both with mutual
// TLS 1.3 on loopback, beside a raw SwiftNIO TLS echo of the same bytes (the ceiling). Each server
// and each client runs in a process of its own, so each has its own peak RSS.
//
//   WireBenchmarks                       run everything and print the table
//   WireBenchmarks serve T CERTS         (child) serve transport T; prints PORT, then RSS at "stop"
//   WireBenchmarks run T PORT S CERTS    (child) run scenario S against T; prints RESULT <json>
import Foundation
import SparkKit

@main
struct WireBenchmarks {
    static func main() async throws {
        let arguments = Array(CommandLine.arguments.dropFirst())
        switch arguments.first {
        case "serve":
            try await serveGRPC(BenchTransport(rawValue: arguments[1])!, certificates: arguments[2])
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
            for scenario in Scenario.allCases {
                let client = try ChildProcess(self.executable, ["run", transport.rawValue, "\(port)", scenario.rawValue, certificates.path])
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

        var lines: [String] = []
        lines.append("| scenario | metric | SparkWire | gRPC HTTP/2 | raw TLS | GRPCCore in-process | SparkWire / HTTP/2 | SparkWire / raw TLS | SparkWire / in-process |")
        lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for scenario in Scenario.allCases {
            let wire = value(.sparkwire, scenario), h2 = value(.http2, scenario), raw = value(.rawtls, scenario), local = value(.inprocess, scenario)
            let unit = scenario == .stream ? "messages/s" : "calls/s"
            lines.append("| \(scenario.title) | \(unit) | \(number(rate(wire, scenario))) | \(number(rate(h2, scenario))) | \(number(rate(raw, scenario))) | \(number(rate(local, scenario))) | \(ratio(rate(wire, scenario), rate(h2, scenario))) | \(ratio(rate(wire, scenario), rate(raw, scenario))) | \(ratio(rate(wire, scenario), rate(local, scenario))) |")
            if scenario != .stream {
                lines.append("| | p50 µs | \(number(wire.p50Micros)) | \(number(h2.p50Micros)) | \(number(raw.p50Micros)) | \(number(local.p50Micros)) | \(ratio(wire.p50Micros, h2.p50Micros)) | | |")
                lines.append("| | p99 µs | \(number(wire.p99Micros)) | \(number(h2.p99Micros)) | \(number(raw.p99Micros)) | \(number(local.p99Micros)) | \(ratio(wire.p99Micros, h2.p99Micros)) | | |")
            }
        }
        let failures = BenchTransport.allCases.map { t in (t, Scenario.allCases.reduce(0) { $0 + value(t, $1).failedCalls }) }
        lines.append("| failed calls | count | \(failures[0].1) | \(failures[1].1) | \(failures[2].1) | \(failures[3].1) | | | |")
        let clientPeak = { (t: BenchTransport) in Scenario.allCases.map { value(t, $0).clientPeakRSSKiB }.max() ?? 0 }
        lines.append("| peak RSS, server | MiB | \(self.serverRSS[.sparkwire]! / 1024) | \(self.serverRSS[.http2]! / 1024) | \(self.serverRSS[.rawtls]! / 1024) | (in client) | \(ratio(Double(self.serverRSS[.sparkwire]!), Double(self.serverRSS[.http2]!))) | | |")
        lines.append("| peak RSS, client (largest scenario) | MiB | \(clientPeak(.sparkwire) / 1024) | \(clientPeak(.http2) / 1024) | \(clientPeak(.rawtls) / 1024) | \(clientPeak(.inprocess) / 1024) | \(ratio(Double(clientPeak(.sparkwire)), Double(clientPeak(.http2)))) | | |")
        return lines.joined(separator: "\n")
    }
}

/// A child process with its stdin and stdout piped.
final class ChildProcess {
    private let process = Process()
    private let input = Pipe()
    private let output = Pipe()
    private var buffer = Data()

    init(_ executable: String, _ arguments: [String]) throws {
        self.process.executableURL = URL(filePath: executable)
        self.process.arguments = arguments
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
