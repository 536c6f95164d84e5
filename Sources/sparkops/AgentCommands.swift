import ArgumentParser
import Foundation
import NIOCore
import NIOHTTP1

struct AgentCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "agent",
        abstract: "List, show, validate and run agents (apply them with `sparkops apply`).",
        subcommands: [List.self, Get.self, Validate.self, Run.self]
    )

    static let columns: [(title: String, key: String)] = [("name", "name"), ("provider", "provider"), ("model", "model"), ("version", "latestVersion"), ("id", "id"), ("updated", "updateTime")]

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "A project's agents.")
        @Option(help: ProjectDefault.help) var project: String = ProjectDefault.current
        @OptionGroup var client: ClientOptions

        func run() async throws {
            try await DefinitionReads.list("agents", project: self.project, client: self.client, columns: AgentCommand.columns)
        }
    }

    struct Get: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "An agent, or one of its versions with its source.")
        @Argument(help: "The agent's name or id.") var agent: String
        @Option(help: ProjectDefault.help) var project: String = ProjectDefault.current
        @Option(help: "A version number, or latest; prints that version's source.") var version: String?
        @OptionGroup var client: ClientOptions

        func run() async throws {
            try await DefinitionReads.get("agents", self.agent, project: self.project, version: self.version, client: self.client, columns: AgentCommand.columns)
        }
    }

    struct Validate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Check agent definitions without storing anything.")
        @Option(name: .shortAndLong, help: "A YAML or JSON file, or a directory of them.") var file: String
        @Option(help: ProjectDefault.help) var project: String = ProjectDefault.current
        @OptionGroup var client: ClientOptions

        func run() async throws {
            try await DefinitionValidation.run(file: self.file, project: self.project, client: self.client)
        }
    }

    struct Run: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run one agent step and print the answer; exits 1 when the step failed.",
            discussion: "sparkops agent run researcher --project prj_… --prompt 'What does the handbook say about leave?'"
        )
        @Argument(help: "The agent's name or id.") var agent: String
        @Option(help: ProjectDefault.help) var project: String = ProjectDefault.current
        @Option(help: "The task for the model.") var prompt: String
        @Option(help: "Data for the task as JSON; @FILE reads it from a file.") var input: String?
        @Option(help: "The same key returns the stored step instead of running it again.") var idempotencyKey: String?
        @Option(help: "At most this many seconds (default: the agent's timeout).") var timeout: Int?
        @Flag(help: "Print every LLM call and tool call.") var verbose = false
        @OptionGroup var client: ClientOptions

        func run() async throws {
            var body: [String: Any] = ["prompt": self.prompt]
            if let input = self.input {
                let text = input.hasPrefix("@") ? try WorkflowFiles.read(String(input.dropFirst())) : input
                guard let value = try? CLIJSON.parse(text) else {
                    throw ValidationError("--input is not JSON: \(text.prefix(80))")
                }
                body["input"] = value
            }
            if let key = self.idempotencyKey { body["idempotencyKey"] = key }
            if let timeout = self.timeout { body["timeoutMs"] = timeout * 1000 }
            let result = try await APIClient(options: self.client).call(
                .POST, "/api/v1/projects/\(self.project)/agents/\(ToolCommand.escape(self.agent))/execute",
                body: body, timeout: .seconds(Int64(self.timeout ?? 3600) + 30)
            )
            let failure = result["error"] as? [String: Any]
            if self.client.output == .json {
                Printer.print(result, format: .json, columns: [])
            } else {
                let llmCalls = result["llmCalls"] as? [[String: Any]] ?? []
                let toolCalls = result["toolCalls"] as? [[String: Any]] ?? []
                if self.verbose {
                    for call in llmCalls {
                        // Zero counts are left out of the JSON; a call refused before it was sent has none.
                        let tokens = "\(Printer.text(call["inputTokens"] ?? 0))+\(Printer.text(call["outputTokens"] ?? 0)) tokens"
                        let outcome = (call["error"] as? String).map { "not sent or failed: \($0)" } ?? Printer.text(call["finishReason"])
                        Self.note("llm \(Printer.text(call["iteration"])): \(Printer.text(call["model"])) \(tokens), \(Printer.text(call["durationMs"] ?? 0)) ms, \(outcome)")
                    }
                    for call in toolCalls {
                        let error = (call["error"] as? [String: Any]).map { " error \(Printer.text($0["reason"])): \(Printer.text($0["message"]))" } ?? ""
                        Self.note("tool \(Printer.text(call["iteration"])): \(Printer.text(call["tool"])) \(Printer.text(call["durationMs"])) ms\(error)")
                    }
                }
                if let output = result["output"] as? [String: Any], output.keys.sorted() != ["text"] {
                    print(CLIJSON.text(output, pretty: true))
                } else if let text = result["text"] as? String {
                    print(text)
                }
                let cost = Double(Printer.text(result["costMicros"])) ?? 0
                Self.note("\(llmCalls.count) LLM calls, \(toolCalls.count) tool calls, \(Printer.text(result["inputTokens"])) tokens in, \(Printer.text(result["outputTokens"])) out, $\(String(format: "%.6f", cost / 1_000_000)), \(Printer.text(result["durationMs"])) ms")
                if let failure {
                    Self.note("agent step failed (\(Printer.text(failure["reason"]))): \(Printer.text(failure["message"]))")
                }
            }
            if failure != nil { throw ExitCode(1) }
        }

        static func note(_ line: String) {
            FileHandle.standardError.write(Data((line + "\n").utf8))
        }
    }
}

/// What `tool`, `agent` and `workflow` share: listing a project's definitions of one kind, and
/// showing one, or one of its versions with its source.
enum DefinitionReads {
    static func list(_ resource: String, project: String, client: ClientOptions, columns: [(title: String, key: String)]) async throws {
        let page = try await APIClient(options: client).call(.GET, "/api/v1/projects/\(project)/\(resource)?page_size=500")
        Printer.print(page, format: client.output, rows: resource, columns: columns)
    }

    static func get(_ resource: String, _ reference: String, project: String, version: String?, client: ClientOptions, columns: [(title: String, key: String)]) async throws {
        let api = APIClient(options: client)
        let base = "/api/v1/projects/\(project)/\(resource)/\(ToolCommand.escape(reference))"
        guard let version else {
            Printer.print(try await api.call(.GET, base), format: client.output, columns: columns)
            return
        }
        let found = try await api.call(.GET, "\(base)/versions/\(version)")
        if client.output == .json {
            Printer.print(found, format: .json, columns: [])
        } else {
            print("# version \(Printer.text(found["version"])), \(Printer.text(found["contentHash"]))")
            print(found["source"] as? String ?? "")
        }
    }
}
