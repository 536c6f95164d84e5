// What every SparkOps benchmark prints and measures the same way: the machine, latencies and
// throughput of a call, and the table rows.
import Foundation

public enum Bench {
    /// `count` sequential calls after 10 of warm-up: their latencies in milliseconds, sorted.
    public static func latencies(_ count: Int, _ call: () async throws -> Void) async throws -> [Double] {
        for _ in 0 ..< 10 { try await call() }
        var samples: [Double] = []
        samples.reserveCapacity(count)
        for _ in 0 ..< count {
            let start = ContinuousClock.now
            try await call()
            samples.append(Self.milliseconds(ContinuousClock.now - start))
        }
        return samples.sorted()
    }

    /// Calls completed per second by `concurrency` loops for `seconds`, after `warmUp` calls.
    public static func throughput(concurrency: Int, seconds: Double, warmUp: Int = 50, _ call: @escaping @Sendable () async throws -> Void) async throws -> Double {
        for _ in 0 ..< warmUp { try await call() }
        let start = ContinuousClock.now
        let deadline = start + .milliseconds(Int(seconds * 1000))
        let total = try await withThrowingTaskGroup(of: Int.self) { group in
            for _ in 0 ..< concurrency {
                group.addTask {
                    var done = 0
                    while ContinuousClock.now < deadline {
                        try await call()
                        done += 1
                    }
                    return done
                }
            }
            return try await group.reduce(0, +)
        }
        return Double(total) / (Self.milliseconds(ContinuousClock.now - start) / 1000)
    }

    public static func milliseconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) * 1000 + Double(duration.components.attoseconds) / 1e15
    }

    /// The `quantile` of sorted milliseconds, to 0.01 ms.
    public static func ms(_ sorted: [Double], _ quantile: Double) -> String {
        guard !sorted.isEmpty else { return "-" }
        return String(format: "%.2f", sorted[min(sorted.count - 1, Int(Double(sorted.count) * quantile))])
    }

    /// The ratio of two sorted samples' medians.
    public static func ratio(_ a: [Double], _ b: [Double]) -> String {
        guard !a.isEmpty, !b.isEmpty else { return "-" }
        return String(format: "%.2f×", a[a.count / 2] / b[b.count / 2])
    }

    public static func row(_ label: String, _ first: String, _ second: String, _ third: String) -> String {
        label.padding(toLength: 60, withPad: " ", startingAt: 0) + Self.leftPadded(first, 10) + Self.leftPadded(second, 10) + Self.leftPadded(third, 12)
    }

    static func leftPadded(_ text: String, _ width: Int) -> String {
        text.count >= width ? text : String(repeating: " ", count: width - text.count) + text
    }

    public static func machine() -> String {
        let cpuinfo = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
        let model = cpuinfo.split(separator: "\n").first { $0.hasPrefix("model name") }.map { $0.split(separator: ":", maxSplits: 1)[1].trimmingCharacters(in: .whitespaces) } ?? "unknown CPU"
        return "machine: \(ProcessInfo.processInfo.activeProcessorCount) cores, \(model), \(ProcessInfo.processInfo.physicalMemory / (1 << 30)) GiB"
    }

    /// Prints a line at once (the table survives a crash later in the run).
    public static func say(_ line: String) {
        FileHandle.standardOutput.write(Data((line + "\n").utf8))
    }
}
