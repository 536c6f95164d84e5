// make bench-runs: runs of a 3-step workflow of echo tool steps, end to end, beside the original
// design's stack in the same run.
//
// - SparkOps: every service and the gateway in this process, as `sparkops dev` runs them, on
//   SQLite and on PostgreSQL (SPARKOPS_TEST_DATABASE_URL, a fresh database). BENCH_RUNS runs
//   (1000) are created over the HTTP API by 32 concurrent clients; every run, step, attempt and
//   event is stored. The figures come from the events' commit times: runs/s from the first
//   run.created to the last run.succeeded; step dispatch (a step's dependency succeeded → the step
//   running) and step handoff (its dependency succeeded → the step succeeded, so its echo call
//   included) for the second and third steps; create → first step running.
// - The peer (Benchmarks/peers/celery): Celery 5 on Redis, acks_late, one prefork worker process
//   per core, BENCH_RUNS chains of three no-op tasks, each of which records its start and end in
//   Redis (Celery keeps no other history); the same four figures.
import BenchmarkSupport
import Foundation
import SparkKit
import SparkTesting
import Synchronization

@main
struct RunBenchmarks {
    static let runs = Int(ProcessInfo.processInfo.environment["BENCH_RUNS"] ?? "") ?? 1000
    /// BENCH_LEAN_UNARY=false sends every SparkWire call through GRPCCore's executors, and
    /// BENCH_TAKE_OVER=false queues every step for a claim (to compare).
    static let overrides = [
        "log.level": "error", "gateway.rateLimit.principalPerMinute": "100000000", "gateway.rateLimit.principalBurst": "100000000",
        "gateway.rateLimit.ipPerMinute": "100000000", "gateway.rateLimit.ipBurst": "100000000", "run.workers": "32",
        "wire.leanUnary": ProcessInfo.processInfo.environment["BENCH_LEAN_UNARY"] ?? "true",
        "run.takeOver": ProcessInfo.processInfo.environment["BENCH_TAKE_OVER"] ?? "true",
    ]

    static let serial = Int(ProcessInfo.processInfo.environment["BENCH_SERIAL"] ?? "") ?? 50

    struct Figures {
        var label: String
        var runsPerSecond: Double
        var dispatch: [Double]
        /// A step's dependency succeeded → the step succeeded: its dispatch, its call and the
        /// record of its end. A worker that starts the next step in the commit of the one before
        /// (run.workers take over the steps they dispatch) records `running` at that commit, so
        /// that its dispatch is near zero by construction; the handoff still counts the time
        /// until the call went out and came back.
        var handoff: [Double] = []
        var first: [Double]
        /// The same latencies with one run at a time, each started when the one before ended.
        var loneDispatch: [Double] = []
        var loneHandoff: [Double] = []
        var loneFirst: [Double] = []
    }

    static func main() async throws {
        Bench.say(Bench.machine())
        Bench.say("\(Self.runs) runs of three echo steps (a → b → c); latencies in milliseconds\n")
        var results: [Figures] = []
        results.append(try await Self.sparkOps(backend: .sqlite, label: "SparkOps, SQLite"))
        if let url = ProcessInfo.processInfo.environment["SPARKOPS_TEST_DATABASE_URL"] {
            results.append(try await Self.sparkOps(backend: .postgres(url: url), label: "SparkOps, PostgreSQL"))
        } else {
            Bench.say("PostgreSQL: skipped, SPARKOPS_TEST_DATABASE_URL is not set (make bench-runs sets it)")
        }
        let celery = try Self.celery()
        results.append(celery)
        Bench.say("")
        Bench.say(Bench.row("", "runs/s", "× Celery", ""))
        for result in results {
            Bench.say(Bench.row(result.label, String(format: "%.1f", result.runsPerSecond), String(format: "%.2f×", result.runsPerSecond / celery.runsPerSecond), ""))
        }
        Bench.say("")
        Bench.say(Bench.row("", "p50", "p99", "p50 × Celery"))
        for result in results {
            Bench.say(Bench.row("\(result.label): step dispatch", Bench.ms(result.dispatch, 0.5), Bench.ms(result.dispatch, 0.99), Bench.ratio(result.dispatch, celery.dispatch)))
        }
        for result in results {
            Bench.say(Bench.row("\(result.label): step handoff", Bench.ms(result.handoff, 0.5), Bench.ms(result.handoff, 0.99), Bench.ratio(result.handoff, celery.handoff)))
        }
        for result in results {
            Bench.say(Bench.row("\(result.label): create → first step started", Bench.ms(result.first, 0.5), Bench.ms(result.first, 0.99), Bench.ratio(result.first, celery.first)))
        }
        Bench.say("")
        Bench.say("one run at a time (\(Self.serial) runs, each started when the one before ended):")
        for result in results {
            Bench.say(Bench.row("\(result.label): step dispatch", Bench.ms(result.loneDispatch, 0.5), Bench.ms(result.loneDispatch, 0.99), Bench.ratio(result.loneDispatch, celery.loneDispatch)))
        }
        for result in results {
            Bench.say(Bench.row("\(result.label): step handoff", Bench.ms(result.loneHandoff, 0.5), Bench.ms(result.loneHandoff, 0.99), Bench.ratio(result.loneHandoff, celery.loneHandoff)))
        }
        for result in results {
            Bench.say(Bench.row("\(result.label): create → first step started", Bench.ms(result.loneFirst, 0.5), Bench.ms(result.loneFirst, 0.99), Bench.ratio(result.loneFirst, celery.loneFirst)))
        }
    }

    static let workflow = """
        name: three
        steps:
          - id: a
            tool: echo
            with: { n: 1 }
          - id: b
            tool: echo
            needs: [a]
            with: { n: "${{ steps.a.output.n }}" }
          - id: c
            tool: echo
            needs: [b]
            with: { n: "${{ steps.b.output.n }}" }
        """

    static func sparkOps(backend: TestBackend, label: String) async throws -> Figures {
        try await TestCluster.run(backend: backend, overrides: Self.overrides) { cluster in
            let token = try await cluster.adminToken()
            let project = try await cluster.createProject("bench", token: token)
            let base = "/api/v1/projects/\(project)"
            for (path, source) in [("tools", "tool: echo\nkind: echo\n"), ("workflows", Self.workflow)] {
                let applied = try await cluster.http.send(.POST, "\(base)/\(path)/apply", token: token, json: ["source": source])
                guard applied.status == 200 else { fatalError("apply failed: \(applied.text)") }
            }
            // Warm-up: one run end to end.
            let warm = try await cluster.http.send(.POST, "\(base)/runs", token: token, json: ["workflow": "three"])
            guard warm.status == 201 else { fatalError("create failed: \(warm.text)") }
            var after: Int64 = 0
            var warmDone = false
            while !warmDone {
                let page = try await cluster.http.send(.GET, "\(base)/events?afterSequence=\(after)&pageSize=1000", token: token).json
                for event in page["events"] as? [[String: Any]] ?? [] {
                    after = Int64(event["sequence"] as? String ?? "") ?? after
                    warmDone = warmDone || event["kind"] as? String == "run.succeeded"
                }
                if !warmDone { try await Task.sleep(for: .milliseconds(50)) }
            }

            let started = ContinuousClock.now
            let next = Counter()
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0 ..< 32 {
                    group.addTask {
                        while next.take() < Self.runs {
                            let created = try await cluster.http.send(.POST, "\(base)/runs", token: token, json: ["workflow": "three"])
                            guard created.status == 201 else { fatalError("create failed: \(created.text)") }
                        }
                    }
                }
                try await group.waitForAll()
            }
            let createSeconds = Bench.milliseconds(ContinuousClock.now - started) / 1000
            // Every event of the measured runs, read as it commits.
            var events: [[String: Any]] = []
            var finished = 0
            let deadline = ContinuousClock.now + .seconds(900)
            while finished < Self.runs, ContinuousClock.now < deadline {
                let page = try await cluster.http.send(.GET, "\(base)/events?afterSequence=\(after)&pageSize=1000", token: token).json
                let batch = page["events"] as? [[String: Any]] ?? []
                for event in batch {
                    after = Int64(event["sequence"] as? String ?? "") ?? after
                    let kind = event["kind"] as? String ?? ""
                    if kind == "run.succeeded" || kind == "run.failed" { finished += 1 }
                    events.append(event)
                }
                if batch.count < 1000 { try await Task.sleep(for: .milliseconds(100)) }
            }
            guard finished == Self.runs else { fatalError("\(finished) of \(Self.runs) runs finished") }
            var figures = Self.figures(events, label: label)

            // One run at a time: created when the one before ended.
            var lone: [[String: Any]] = []
            for _ in 0 ..< Self.serial {
                let created = try await cluster.http.send(.POST, "\(base)/runs", token: token, json: ["workflow": "three"])
                guard created.status == 201 else { fatalError("create failed: \(created.text)") }
                var ended = false
                while !ended {
                    let page = try await cluster.http.send(.GET, "\(base)/events?afterSequence=\(after)&pageSize=1000", token: token).json
                    for event in page["events"] as? [[String: Any]] ?? [] {
                        after = Int64(event["sequence"] as? String ?? "") ?? after
                        lone.append(event)
                        ended = ended || event["kind"] as? String == "run.succeeded" || event["kind"] as? String == "run.failed"
                    }
                    if !ended { try await Task.sleep(for: .milliseconds(2)) }
                }
            }
            let loneFigures = Self.figures(lone, label: label)
            figures.loneDispatch = loneFigures.dispatch
            figures.loneHandoff = loneFigures.handoff
            figures.loneFirst = loneFigures.first
            Bench.say(String(format: "%@: %.1f runs/s (creating took %.1f s)", label, figures.runsPerSecond, createSeconds))
            return figures
        }
    }

    /// The figures from the events' commit times.
    static func figures(_ events: [[String: Any]], label: String) -> Figures {
        var times: [String: Double] = [:]
        var firstCreated = Double.infinity
        var lastEnded = 0.0
        for event in events {
            guard let text = event["time"] as? String, let time = Self.milliseconds(text) else { continue }
            let run = event["runId"] as? String ?? ""
            let kind = event["kind"] as? String ?? ""
            let step = event["stepId"] as? String ?? ""
            times["\(run) \(kind) \(step)"] = time
            if kind == "run.created" { firstCreated = min(firstCreated, time) }
            if kind == "run.succeeded" { lastEnded = max(lastEnded, time) }
        }
        var dispatch: [Double] = []
        var handoff: [Double] = []
        var first: [Double] = []
        let runIDs = Set(events.compactMap { $0["runId"] as? String })
        for run in runIDs {
            if let created = times["\(run) run.created "], let running = times["\(run) step.running a"] { first.append(running - created) }
            for (need, step) in [("a", "b"), ("b", "c")] {
                if let done = times["\(run) step.succeeded \(need)"], let running = times["\(run) step.running \(step)"] { dispatch.append(running - done) }
                if let done = times["\(run) step.succeeded \(need)"], let succeeded = times["\(run) step.succeeded \(step)"] { handoff.append(succeeded - done) }
            }
        }
        let seconds = (lastEnded - firstCreated) / 1000
        return Figures(label: label, runsPerSecond: Double(runIDs.count) / seconds, dispatch: dispatch.sorted(), handoff: handoff.sorted(), first: first.sorted())
    }

    /// An RFC 3339 time (`2026-12-04T02:23:33.771242Z`) in milliseconds since 1970, to the
    /// microsecond the store gives (ISO8601DateFormatter stops at milliseconds).
    static func milliseconds(_ text: String) -> Double? {
        let parts = text.dropLast().split(separator: ".", maxSplits: 1)
        guard text.hasSuffix("Z"), let whole = ISO8601DateFormatter().date(from: "\(parts[0])Z") else { return nil }
        let fraction = parts.count > 1 ? Double("0.\(parts[1])") ?? 0 : 0
        return (whole.timeIntervalSince1970 + fraction) * 1000
    }

    /// The Celery peer, started and measured by its script, which prints one JSON line.
    static func celery() throws -> Figures {
        let script = URL(filePath: #filePath).deletingLastPathComponent().appending(path: "../../peers/celery/run.sh").standardized.path
        let process = Process()
        process.executableURL = URL(filePath: "/bin/bash")
        process.arguments = [script, "\(Self.runs)", "\(Self.serial)"]
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        let output = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0,
            let line = String(decoding: output, as: UTF8.self).split(separator: "\n").last,
            let json = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
        else {
            fatalError("the Celery peer failed (\(process.terminationStatus)): \(String(decoding: output, as: UTF8.self))")
        }
        let figures = Figures(
            label: "Celery 5, Redis, \(ProcessInfo.processInfo.activeProcessorCount) prefork processes",
            runsPerSecond: json["runs_per_second"] as? Double ?? 0,
            dispatch: json["dispatch_ms"] as? [Double] ?? [], handoff: json["handoff_ms"] as? [Double] ?? [], first: json["first_ms"] as? [Double] ?? [],
            loneDispatch: json["lone_dispatch_ms"] as? [Double] ?? [], loneHandoff: json["lone_handoff_ms"] as? [Double] ?? [],
            loneFirst: json["lone_first_ms"] as? [Double] ?? []
        )
        Bench.say(String(format: "%@: %.1f runs/s", figures.label, figures.runsPerSecond))
        return figures
    }
}

/// Hands out 0, 1, 2, … to concurrent creators.
final class Counter: Sendable {
    private let value = Mutex(0)

    func take() -> Int {
        self.value.withLock { value in
            defer { value += 1 }
            return value
        }
    }
}
