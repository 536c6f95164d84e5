import ArgumentParser
import Foundation
import NIOHTTP1

struct RunCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Start, watch, list, read, cancel and rerun workflow runs; resolve steps that need attention.",
        subcommands: [Start.self, Watch.self, List.self, Get.self, Cancel.self, Rerun.self, Resolve.self]
    )

    static func base(_ project: String) -> String { "/api/v1/projects/\(project)/runs" }

    static let finalStatuses: Set<String> = ["succeeded", "failed", "cancelled", "rejected", "timed_out"]

    static let columns: [(title: String, key: String)] = [
        ("id", "id"), ("workflow", "workflowName"), ("version", "workflowVersion"), ("status", "status"), ("created", "createTime"), ("cost", "cost"),
    ]

    static func row(_ run: [String: Any]) -> [String: Any] {
        var row = run
        row["cost"] = Dollars.text(run["costMicros"])
        return row
    }

    /// `k=v` pairs as run inputs: a value that reads as JSON (`3`, `true`, `[1,2]`, `"x"`) is that
    /// value, anything else a string.
    static func inputs(_ pairs: [String], json: String?) throws -> [String: Any] {
        var inputs: [String: Any] = [:]
        if let json {
            guard let object = (try? CLIJSON.parse(json)) as? [String: Any] else {
                throw ValidationError("--inputs must be a JSON object, such as '{\"topic\": \"tides\"}'")
            }
            inputs = object
        }
        for pair in pairs {
            guard let equals = pair.firstIndex(of: "="), equals != pair.startIndex else {
                throw ValidationError("--input takes name=value, not \(pair.debugDescription)")
            }
            let name = String(pair[..<equals])
            let text = String(pair[pair.index(after: equals)...])
            inputs[name] = (try? CLIJSON.parse(text)) ?? text
        }
        return inputs
    }

    /// Prints the run's events after `after` as they come, until the run ends; returns its final
    /// state. Events are read from `/events`, so a watch that loses its connection resumes where
    /// it stopped and misses nothing.
    static func watch(_ client: APIClient, project: String, run: String, after: Int64 = 0, quiet: Bool) async throws -> [String: Any] {
        var last = after
        var failures = 0
        while true {
            let page: [String: Any]
            do {
                page = try await client.call(.GET, "/api/v1/projects/\(project)/events?runId=\(run)&afterSequence=\(last)&pageSize=1000")
                failures = 0
            } catch let error as APICallError where error.status >= 500 && failures < 20 {
                failures += 1
                try await Task.sleep(for: .seconds(1))
                continue
            }
            var ended = false
            for event in page["events"] as? [[String: Any]] ?? [] {
                last = Int64(Printer.text(event["sequence"])) ?? last
                let kind = Printer.text(event["kind"])
                if !quiet { print(Self.line(event)) }
                if kind.hasPrefix("run."), Self.finalStatuses.contains(String(kind.dropFirst(4))) { ended = true }
            }
            if ended { return try await client.call(.GET, "\(Self.base(project))/\(run)") }
            try await Task.sleep(for: .milliseconds(250))
        }
    }

    /// One event as a line: the time, the step and attempt, what happened, and why.
    static func line(_ event: [String: Any]) -> String {
        let time = Printer.text(event["time"]).split(separator: "T").last.map { String($0.prefix(12)) } ?? ""
        let step = Printer.text(event["stepId"])
        let attempt = Printer.text(event["attempt"])
        let message = Printer.text(event["message"])
        let subject = step.isEmpty ? "run" : "\(step)\(attempt.isEmpty || attempt == "0" ? "" : " #\(attempt)")"
        let what = Printer.text(event["kind"]).split(separator: ".").last.map(String.init) ?? ""
        return "\(time)  \(subject.padding(toLength: max(subject.count, 16), withPad: " ", startingAt: 0))  \(what)\(message.isEmpty ? "" : "  \(message)")"
    }

    /// The end of a watched run: its outputs or error, and a non-zero exit unless it succeeded.
    static func finish(_ run: [String: Any], output: OutputFormat) throws {
        if output == .json {
            Printer.print(run, format: .json, columns: [])
        } else {
            let status = Printer.text(run["status"])
            print("run \(Printer.text(run["id"])) \(status)\((run["costMicros"] != nil) ? " (cost \(Dollars.text(run["costMicros"])))" : "")")
            if let outputs = run["outputs"] as? [String: Any], !outputs.isEmpty {
                print("outputs: \(CLIJSON.text(outputs, pretty: true))")
            }
            if let error = run["error"] as? [String: Any] { print("error: \(Printer.text(error["reason"])): \(Printer.text(error["message"]))") }
        }
        guard Printer.text(run["status"]) == "succeeded" else { throw ExitCode(1) }
    }

    struct Start: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Start a run of a workflow; with --watch, show its steps live until it ends.",
            discussion: """
                sparkops run start research-brief --project prj_… --input topic=tides --input words=300 --watch
                With --watch the command exits 0 when the run succeeds and 1 when it fails, is cancelled,
                rejected or timed out.
                """
        )
        @Argument(help: "The workflow's name or id.") var workflow: String
        @Option(help: ProjectDefault.help) var project: String = ProjectDefault.current
        @Option(name: .customLong("input"), help: "An input as name=value (repeatable); a value that reads as JSON is that JSON.") var input: [String] = []
        @Option(name: .customLong("inputs"), help: "Every input as one JSON object.") var inputsJSON: String?
        @Option(help: "A version number (default the latest).") var version: String?
        @Option(name: .customLong("idempotency-key"), help: "The same key returns the same run, however often it is sent.") var idempotencyKey: String?
        @Flag(help: "Show the steps' progress live until the run ends; exit non-zero unless it succeeds.") var watch = false
        @OptionGroup var client: ClientOptions

        func run() async throws {
            var body: [String: Any] = ["workflow": self.workflow, "inputs": try RunCommand.inputs(self.input, json: self.inputsJSON)]
            if let version = self.version { body["version"] = version }
            if let key = self.idempotencyKey { body["idempotencyKey"] = key }
            let api = APIClient(options: self.client)
            let created = try await api.call(.POST, RunCommand.base(self.project), body: body)
            let run = created["run"] as? [String: Any] ?? [:]
            guard self.watch else {
                guard self.client.output == .table else { return Printer.print(created, format: .json, columns: []) }
                print("\(created["replayed"] as? Bool == true ? "found" : "started") run \(Printer.text(run["id"])) of \(Printer.text(run["workflowName"])) v\(Printer.text(run["workflowVersion"])): \(Printer.text(run["status"]))")
                return
            }
            if self.client.output == .table {
                print("run \(Printer.text(run["id"])) of \(Printer.text(run["workflowName"])) v\(Printer.text(run["workflowVersion"]))")
            }
            let final = try await RunCommand.watch(api, project: self.project, run: Printer.text(run["id"]), quiet: self.client.output == .json)
            try RunCommand.finish(final, output: self.client.output)
        }
    }

    struct Watch: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show a run's events from the start (or after a sequence number) until it ends.")
        @Argument(help: "The run's id.") var run: String
        @Option(help: ProjectDefault.help) var project: String = ProjectDefault.current
        @Option(help: "Only the events after this sequence number.") var after: Int64 = 0
        @OptionGroup var client: ClientOptions

        func run() async throws {
            let final = try await RunCommand.watch(APIClient(options: self.client), project: self.project, run: self.run, after: self.after, quiet: self.client.output == .json)
            try RunCommand.finish(final, output: self.client.output)
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "A project's runs, newest first.")
        @Option(help: ProjectDefault.help) var project: String = ProjectDefault.current
        @Option(help: "Only runs in this status (queued, running, succeeded, failed, …).") var status: String?
        @Option(help: "Only runs of this workflow (name or id).") var workflow: String?
        @Option(help: "Only runs created at or after this RFC 3339 time.") var since: String?
        @Option(help: "At most this many.") var limit: Int = 50
        @OptionGroup var client: ClientOptions

        func run() async throws {
            var path = "\(RunCommand.base(self.project))?pageSize=\(self.limit)"
            if let status = self.status { path += "&status=\(ToolCommand.escape(status))" }
            if let workflow = self.workflow { path += "&workflow=\(ToolCommand.escape(workflow))" }
            if let since = self.since { path += "&createdAfter=\(ToolCommand.escape(since))" }
            var page = try await APIClient(options: self.client).call(.GET, path)
            if self.client.output == .table { page["runs"] = (page["runs"] as? [[String: Any]] ?? []).map(RunCommand.row) }
            Printer.print(page, format: self.client.output, rows: "runs", columns: RunCommand.columns)
        }
    }

    struct Get: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "A run with its steps, attempts, inputs, outputs and cost.")
        @Argument(help: "The run's id.") var run: String
        @Option(help: ProjectDefault.help) var project: String = ProjectDefault.current
        @Flag(help: "Also every LLM call and tool call of its agent steps: tokens, cost, duration, outcome.") var steps = false
        @OptionGroup var client: ClientOptions

        func run() async throws {
            let api = APIClient(options: self.client)
            let run = try await api.call(.GET, "\(RunCommand.base(self.project))/\(ToolCommand.escape(self.run))")
            guard self.client.output == .table else { return Printer.print(run, format: .json, columns: []) }
            var row = RunCommand.row(run)
            var columns = RunCommand.columns
            if run["estimatedCostMicros"] != nil {
                // The workflow's estimated_cost, held in the budget while the run is unfinished.
                row["estimate"] = Dollars.text(run["estimatedCostMicros"])
                columns.append(("estimate", "estimate"))
            }
            Printer.print(row, format: .table, columns: columns)
            let steps = (run["steps"] as? [[String: Any]] ?? []).map { step -> [String: Any] in
                var row = step
                row["attempts"] = "\((step["attempts"] as? [[String: Any]])?.count ?? 0)"
                row["error"] = (step["error"] as? [String: Any]).map { "\(Printer.text($0["reason"])): \(Printer.text($0["message"]))" } ?? ""
                return row
            }
            Printer.print(["steps": steps], format: .table, rows: "steps", columns: [
                ("step", "id"), ("kind", "kind"), ("target", "target"), ("status", "status"), ("attempts", "attempts"), ("error", "error"),
            ])
            if self.steps { try await self.printCalls(run, api: api) }
        }

        /// Every call of the run's agent steps, from their executions' records, oldest first.
        func printCalls(_ run: [String: Any], api: APIClient) async throws {
            var calls: [[String: Any]] = []
            for step in run["steps"] as? [[String: Any]] ?? [] where step["kind"] as? String == "agent" {
                var seen: Set<String> = []
                for attempt in step["attempts"] as? [[String: Any]] ?? [] {
                    guard let id = attempt["callId"] as? String, id.hasPrefix("exec_"), seen.insert(id).inserted else { continue }
                    // A held execution that was resumed is gone: the one that resumed it lists its calls.
                    guard let execution = try? await api.call(.GET, "/api/v1/projects/\(self.project)/agent-executions/\(ToolCommand.escape(id))") else { continue }
                    var events: [(Int, Int, [String: Any])] = []
                    for call in execution["llmCalls"] as? [[String: Any]] ?? [] {
                        let outcome = (call["error"] as? String).map { "failed: \($0)" } ?? Printer.text(call["finishReason"])
                        events.append((Int(Printer.text(call["iteration"])) ?? 0, 0, [
                            "call": "llm", "name": "\(Printer.text(call["provider"]))/\(Printer.text(call["model"]))",
                            "tokens": "\(Printer.text(call["inputTokens"] ?? 0))+\(Printer.text(call["outputTokens"] ?? 0))",
                            "cost": Dollars.text(call["costMicros"] ?? "0"), "duration": "\(Printer.text(call["durationMs"] ?? 0)) ms", "outcome": outcome,
                        ]))
                    }
                    for call in execution["toolCalls"] as? [[String: Any]] ?? [] {
                        let error = call["error"] as? [String: Any]
                        events.append((Int(Printer.text(call["iteration"])) ?? 0, 1, [
                            "call": "tool", "name": Printer.text(call["tool"]), "tokens": "",
                            "cost": Dollars.text(call["costMicros"] ?? "0"), "duration": "\(Printer.text(call["durationMs"] ?? 0)) ms",
                            "outcome": error.map { "\(Printer.text($0["reason"])): \(Printer.text($0["message"]))" } ?? (call["replayed"] as? Bool == true ? "replayed" : "succeeded"),
                        ]))
                    }
                    for (iteration, _, var row) in events.sorted(by: { ($0.0, $0.1) < ($1.0, $1.1) }) {
                        row["step"] = Printer.text(step["id"])
                        row["attempt"] = Printer.text(attempt["attempt"])
                        row["iteration"] = "\(iteration)"
                        calls.append(row)
                    }
                }
            }
            print("")
            Printer.print(["calls": calls], format: .table, rows: "calls", columns: [
                ("step", "step"), ("attempt", "attempt"), ("iteration", "iteration"), ("call", "call"), ("name", "name"),
                ("tokens", "tokens"), ("cost", "cost"), ("duration", "duration"), ("outcome", "outcome"),
            ])
        }
    }

    struct Cancel: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Cancel an unfinished run; the calls it has running are cancelled.")
        @Argument(help: "The run's id.") var run: String
        @Option(help: ProjectDefault.help) var project: String = ProjectDefault.current
        @Option(help: "Why, for the run's history.") var reason: String?
        @OptionGroup var client: ClientOptions

        func run() async throws {
            let run = try await APIClient(options: self.client).call(.POST, "\(RunCommand.base(self.project))/\(ToolCommand.escape(self.run))/cancel", body: ["reason": self.reason ?? ""])
            guard self.client.output == .table else { return Printer.print(run, format: .json, columns: []) }
            print("run \(Printer.text(run["id"])) \(Printer.text(run["status"]))")
        }
    }

    struct Rerun: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "A new run from a step: the steps upstream keep their outputs; it and what follows run again.")
        @Argument(help: "The run's id.") var run: String
        @Option(help: ProjectDefault.help) var project: String = ProjectDefault.current
        @Option(help: "The step to run again.") var from: String
        @Flag(help: "Show the new run live until it ends.") var watch = false
        @OptionGroup var client: ClientOptions

        func run() async throws {
            let api = APIClient(options: self.client)
            let created = try await api.call(.POST, "\(RunCommand.base(self.project))/\(ToolCommand.escape(self.run))/rerun", body: ["stepId": self.from])
            let run = created["run"] as? [String: Any] ?? [:]
            guard self.watch else {
                guard self.client.output == .table else { return Printer.print(created, format: .json, columns: []) }
                return print("started run \(Printer.text(run["id"])) from step \(self.from) of \(self.run)")
            }
            let final = try await RunCommand.watch(api, project: self.project, run: Printer.text(run["id"]), quiet: self.client.output == .json)
            try RunCommand.finish(final, output: self.client.output)
        }
    }

    struct Resolve: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Retry or skip a step that needs attention (it may have had effects before its worker stopped).")
        @Argument(help: "The run's id.") var run: String
        @Option(help: ProjectDefault.help) var project: String = ProjectDefault.current
        @Option(help: "The step.") var step: String
        @Option(help: "retry or skip.") var action: String
        @OptionGroup var client: ClientOptions

        func run() async throws {
            guard self.action == "retry" || self.action == "skip" else { throw ValidationError("--action must be retry or skip") }
            let path = "\(RunCommand.base(self.project))/\(ToolCommand.escape(self.run))/steps/\(ToolCommand.escape(self.step))/resolve"
            let run = try await APIClient(options: self.client).call(.POST, path, body: ["action": self.action])
            guard self.client.output == .table else { return Printer.print(run, format: .json, columns: []) }
            print("run \(Printer.text(run["id"])): step \(self.step) \(self.action == "retry" ? "retried" : "skipped"); the run is \(Printer.text(run["status"]))")
        }
    }
}

struct ApprovalCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "approval",
        abstract: "List the approvals a project's runs wait for, and approve or reject them.",
        subcommands: [List.self, Approve.self, Reject.self]
    )

    static func base(_ project: String) -> String { "/api/v1/projects/\(project)/approvals" }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "A project's approvals: pending ones unless --status says otherwise.")
        @Option(help: ProjectDefault.help) var project: String = ProjectDefault.current
        @Option(help: "pending (the default), approved, rejected, expired, cancelled or all.") var status: String?
        @Option(help: "Only this run's.") var run: String?
        @OptionGroup var client: ClientOptions

        func run() async throws {
            var path = "\(ApprovalCommand.base(self.project))?pageSize=500"
            if let status = self.status { path += "&status=\(ToolCommand.escape(status))" }
            if let run = self.run { path += "&runId=\(ToolCommand.escape(run))" }
            var page = try await APIClient(options: self.client).call(.GET, path)
            if self.client.output == .table {
                // The call a policy held, as the approver decides on it: the tool (or model) and
                // the arguments it would be sent.
                page["approvals"] = (page["approvals"] as? [[String: Any]] ?? []).map { approval in
                    var row = approval
                    if let call = approval["heldCall"] as? [String: Any] {
                        let arguments = call["arguments"].map { CLIJSON.text($0) } ?? ""
                        row["call"] = "\(Printer.text(call["kind"])) \(Printer.text(call["target"])) \(arguments.count > 200 ? String(arguments.prefix(200)) + "…" : arguments)"
                    }
                    return row
                }
            }
            Printer.print(page, format: self.client.output, rows: "approvals", columns: [
                ("id", "id"), ("run", "runId"), ("step", "stepId"), ("status", "status"), ("message", "message"), ("call", "call"), ("decided by", "decidedBy"),
            ])
        }
    }

    struct Approve: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Approve: the run or step goes on.")
        @Argument(help: "The approval's id (apr_…).") var approval: String
        @Option(help: ProjectDefault.help) var project: String = ProjectDefault.current
        @Option(help: "Why, for the record.") var comment: String?
        @OptionGroup var client: ClientOptions

        func run() async throws {
            try await ApprovalCommand.decide(self.approval, "approve", project: self.project, comment: self.comment, client: self.client)
        }
    }

    struct Reject: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Reject: the step (or run) fails.")
        @Argument(help: "The approval's id (apr_…).") var approval: String
        @Option(help: ProjectDefault.help) var project: String = ProjectDefault.current
        @Option(help: "Why, for the record.") var comment: String?
        @OptionGroup var client: ClientOptions

        func run() async throws {
            try await ApprovalCommand.decide(self.approval, "reject", project: self.project, comment: self.comment, client: self.client)
        }
    }

    static func decide(_ approval: String, _ decision: String, project: String, comment: String?, client: ClientOptions) async throws {
        let path = "\(Self.base(project))/\(ToolCommand.escape(approval))/decide"
        let decided = try await APIClient(options: client).call(.POST, path, body: ["decision": decision, "comment": comment ?? ""])
        guard client.output == .table else { return Printer.print(decided, format: .json, columns: []) }
        print("\(Printer.text(decided["status"])) \(Printer.text(decided["id"])) (run \(Printer.text(decided["runId"]))\(Printer.text(decided["stepId"]).isEmpty ? "" : ", step \(Printer.text(decided["stepId"]))"))")
    }
}
