import ArgumentParser
import Foundation
import NIOCore
import NIOHTTP1
import SparkToolService

struct ToolCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tool",
        abstract: "List, show, validate and invoke tools (apply them with `sparkops apply`).",
        subcommands: [List.self, Get.self, Validate.self, Invoke.self]
    )

    static let columns: [(title: String, key: String)] = [("name", "name"), ("kind", "kind"), ("side effects", "sideEffects"), ("version", "latestVersion"), ("id", "id"), ("updated", "updateTime")]

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "A project's tools.")
        @Option(help: ProjectDefault.help) var project: String = ProjectDefault.current
        @OptionGroup var client: ClientOptions

        func run() async throws {
            try await DefinitionReads.list("tools", project: self.project, client: self.client, columns: ToolCommand.columns)
        }
    }

    struct Get: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "A tool, or one of its versions with its source.")
        @Argument(help: "The tool's name or id.") var tool: String
        @Option(help: ProjectDefault.help) var project: String = ProjectDefault.current
        @Option(help: "A version number, or latest; prints that version's source.") var version: String?
        @OptionGroup var client: ClientOptions

        func run() async throws {
            try await DefinitionReads.get("tools", self.tool, project: self.project, version: self.version, client: self.client, columns: ToolCommand.columns)
        }
    }

    struct Validate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Check tool definitions without storing anything.")
        @Option(name: .shortAndLong, help: "A YAML or JSON file, or a directory of them.") var file: String
        @Option(help: ProjectDefault.help) var project: String = ProjectDefault.current
        @OptionGroup var client: ClientOptions

        func run() async throws {
            try await DefinitionValidation.run(file: self.file, project: self.project, client: self.client)
        }
    }

    struct Invoke: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run a tool once and print its output; exits 1 when the tool failed.",
            discussion: "sparkops tool invoke greet --project prj_… --input '{\"name\": \"Ada\"}'"
        )
        @Argument(help: "The tool's name or id.") var tool: String
        @Option(help: ProjectDefault.help) var project: String = ProjectDefault.current
        @Option(help: "The input as JSON (default {}); @FILE reads it from a file, - from stdin.") var input: String = "{}"
        @Option(help: "The same key returns the stored result instead of running the tool again.") var idempotencyKey: String?
        @Option(help: "At most this many seconds (default: the tool's timeout).") var timeout: Int?
        @OptionGroup var client: ClientOptions

        func run() async throws {
            let text: String
            if self.input == "-" {
                text = String(decoding: FileHandle.standardInput.readDataToEndOfFile(), as: UTF8.self)
            } else if self.input.hasPrefix("@") {
                text = try WorkflowFiles.read(String(self.input.dropFirst()))
            } else {
                text = self.input
            }
            guard let value = try? CLIJSON.parse(text) else {
                throw ValidationError("--input is not JSON: \(text.prefix(80))")
            }
            var body: [String: Any] = ["input": value]
            if let key = self.idempotencyKey { body["idempotencyKey"] = key }
            if let timeout = self.timeout { body["timeoutMs"] = timeout * 1000 }
            let result = try await APIClient(options: self.client).call(
                .POST, "/api/v1/projects/\(self.project)/tools/\(ToolCommand.escape(self.tool))/invoke",
                body: body, timeout: .seconds(Int64(self.timeout ?? 3600) + 30)
            )
            let failure = result["error"] as? [String: Any]
            if self.client.output == .json {
                Printer.print(result, format: .json, columns: [])
            } else {
                if let output = result["output"] {
                    print(CLIJSON.text(output, pretty: true))
                }
                if let logs = result["logs"] as? String, !logs.isEmpty {
                    FileHandle.standardError.write(Data(logs.utf8))
                }
                if let approval = result["approval"] as? [String: Any] {
                    let line = "held for approval by \(Printer.text(approval["rule"])): \(Printer.text(approval["message"])) (violation \(Printer.text(approval["violationId"])), arguments \(Printer.text(approval["argumentsDigest"])))\n"
                    FileHandle.standardError.write(Data(line.utf8))
                } else if let failure {
                    FileHandle.standardError.write(Data("tool failed (\(Printer.text(failure["reason"]))): \(Printer.text(failure["message"]))\n".utf8))
                }
            }
            if failure != nil { throw ExitCode(1) }
        }
    }

    static func escape(_ name: String) -> String {
        name.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed.subtracting(CharacterSet(charactersIn: "/"))) ?? name
    }
}

struct SecretCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "secret",
        abstract: "Write, list and delete a project's secrets (values can be written, never read back).",
        subcommands: [Set.self, List.self, Delete.self, NewMasterKey.self]
    )

    struct Set: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Write a secret; its value is read from stdin.", discussion: "printf %s \"$TOKEN\" | sparkops secret set api-token --project prj_…")
        @Argument(help: "The secret's name.") var name: String
        @Option(name: .customLong("host"), help: "A host the value may be sent to (api.example.com, *.example.com); repeat for more. None: any host.") var hosts: [String] = []
        @Option(help: ProjectDefault.help) var project: String = ProjectDefault.current
        @OptionGroup var client: ClientOptions

        func run() async throws {
            var value = String(decoding: FileHandle.standardInput.readDataToEndOfFile(), as: UTF8.self)
            // A value typed or echoed ends with a new line that is not part of it.
            if value.hasSuffix("\r\n") { value.removeLast(2) } else if value.hasSuffix("\n") { value.removeLast() }
            guard !value.isEmpty else { throw ValidationError("the secret's value is read from stdin, which was empty") }
            let secret = try await APIClient(options: self.client).call(.PUT, "/api/v1/projects/\(self.project)/secrets/\(ToolCommand.escape(self.name))", body: ["value": value, "hosts": self.hosts])
            var shown = secret
            if self.client.output == .table { shown["hosts"] = (secret["hosts"] as? [String]).map { $0.joined(separator: ",") } ?? "any" }
            Printer.print(shown, format: self.client.output, columns: [("name", "name"), ("hosts", "hosts"), ("updated", "updateTime"), ("by", "updatedBy")])
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "A project's secret names.")
        @Option(help: ProjectDefault.help) var project: String = ProjectDefault.current
        @OptionGroup var client: ClientOptions

        func run() async throws {
            var page = try await APIClient(options: self.client).call(.GET, "/api/v1/projects/\(self.project)/secrets?page_size=500")
            if self.client.output == .table {
                page["secrets"] = (page["secrets"] as? [[String: Any]] ?? []).map { row in
                    var shown = row
                    shown["hosts"] = (row["hosts"] as? [String]).map { $0.joined(separator: ",") } ?? "any"
                    return shown
                }
            }
            Printer.print(page, format: self.client.output, rows: "secrets", columns: [("name", "name"), ("hosts", "hosts"), ("created", "createTime"), ("updated", "updateTime"), ("by", "updatedBy")])
        }
    }

    struct Delete: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete a secret.")
        @Argument(help: "The secret's name.") var name: String
        @Option(help: ProjectDefault.help) var project: String = ProjectDefault.current
        @OptionGroup var client: ClientOptions

        func run() async throws {
            _ = try await APIClient(options: self.client).call(.DELETE, "/api/v1/projects/\(self.project)/secrets/\(ToolCommand.escape(self.name))")
            print("deleted \(self.name)")
        }
    }

    struct NewMasterKey: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "new-master-key",
            abstract: "Print a new master key entry (id:base64) for tool.masterKeys; put it first to rotate."
        )

        func run() async throws {
            print(SecretBox.newKeyEntry())
        }
    }
}

/// Definitions in files: every document of each file (YAML documents split at `---`), sent to the
/// service its top-level key names: `tool:` to the tool service, `agent:` to the agent service,
/// `policy:` to the policy service, the rest to the workflow service.
struct DefinitionDocument {
    enum Kind: String { case tool, agent, policy, workflow }

    var path: String
    /// The line the document starts at in its file (1-based).
    var line: Int
    var source: String
    var kind: Kind

    var label: String { self.line == 1 ? self.path : "\(self.path) (document at line \(self.line))" }

    /// The name a tool or agent document defines (its `tool:` or `agent:`), when it can be read.
    var definedName: String? {
        guard self.kind == .tool || self.kind == .agent else { return nil }
        let key = self.kind.rawValue
        if let object = (try? JSONSerialization.jsonObject(with: Data(self.source.utf8))) as? [String: Any] {
            return object[key] as? String
        }
        for line in self.source.split(separator: "\n") where line.hasPrefix("\(key):") {
            var value = line.dropFirst(key.count + 1).trimmingCharacters(in: .whitespaces)
            if let comment = value.range(of: " #") { value = String(value[..<comment.lowerBound]).trimmingCharacters(in: .whitespaces) }
            if value.count >= 2, let first = value.first, first == "\"" || first == "'", value.last == first { value = String(value.dropFirst().dropLast()) }
            return value.isEmpty ? nil : value
        }
        return nil
    }
    var route: String { self.kind == .policy ? "policies" : "\(self.kind.rawValue)s" }

    static func load(_ path: String) throws -> [DefinitionDocument] {
        var documents: [DefinitionDocument] = []
        for file in try WorkflowFiles.list(path) {
            let text = try WorkflowFiles.read(file)
            for (line, source) in Self.split(text) where !source.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty {
                documents.append(DefinitionDocument(path: file, line: line, source: source, kind: Self.kind(of: source)))
            }
        }
        return documents
    }

    /// The documents of a YAML stream with the line each starts at; a JSON file is one document.
    static func split(_ text: String) -> [(Int, String)] {
        let trimmed = text.drop { $0.isWhitespace }
        if trimmed.hasPrefix("{") { return [(1, text)] }
        var documents: [(Int, String)] = []
        var current: [Substring] = []
        var start = 1
        for (index, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let bare = line.hasSuffix("\r") ? line.dropLast() : line
            if bare == "---" || bare.hasPrefix("--- ") || bare.hasPrefix("---\t") {
                if !current.isEmpty { documents.append((start, current.joined(separator: "\n"))) }
                current = []
                start = index + 2
                continue
            }
            if bare == "..." { continue }
            current.append(line)
        }
        if !current.isEmpty { documents.append((start, current.joined(separator: "\n"))) }
        return documents
    }

    static func kind(of source: String) -> Kind {
        if source.drop(while: { $0.isWhitespace }).hasPrefix("{") {
            let object = (try? JSONSerialization.jsonObject(with: Data(source.utf8))) as? [String: Any]
            return object?["tool"] != nil ? .tool : object?["agent"] != nil ? .agent : object?["policy"] != nil ? .policy : .workflow
        }
        let topKeys = source.split(separator: "\n").filter { !$0.hasPrefix(" ") && !$0.hasPrefix("\t") && !$0.hasPrefix("#") }
        if topKeys.contains(where: { $0.hasPrefix("tool:") }) { return .tool }
        if topKeys.contains(where: { $0.hasPrefix("policy:") }) { return .policy }
        return topKeys.contains { $0.hasPrefix("agent:") } ? .agent : .workflow
    }
}

enum DefinitionValidation {
    /// Validates every document, printing each problem as `file:line:column: field: message` with
    /// lines counted in the file; exits 1 when any is invalid.
    static func run(file: String, project: String, client: ClientOptions) async throws {
        let api = APIClient(options: client)
        var invalid = 0
        var reports: [[String: Any]] = []
        // The documents are one set, as `apply` sends them: a workflow may use the tools and
        // agents the same file (or folder) defines.
        let documents = try DefinitionDocument.load(file)
        let tools = documents.filter { $0.kind == .tool }.compactMap(\.definedName)
        let agents = documents.filter { $0.kind == .agent }.compactMap(\.definedName)
        for document in documents {
            var body: [String: Any] = ["source": document.source]
            if document.kind == .workflow {
                if !tools.isEmpty { body["definedTools"] = tools }
                if !agents.isEmpty { body["definedAgents"] = agents }
            }
            let report = try await api.call(.POST, "/api/v1/projects/\(project)/\(document.route)/validate", body: body)
            reports.append(["file": document.path, "line": document.line, "kind": document.kind.rawValue, "report": report])
            let problems = report["problems"] as? [[String: Any]] ?? []
            if report["valid"] as? Bool != true { invalid += 1 }
            if client.output == .table {
                if problems.isEmpty { print("\(document.label): valid \(document.kind.rawValue) (\(report["contentHash"] as? String ?? ""))") }
                for problem in problems {
                    let line = ((problem["line"] as? NSNumber)?.intValue ?? 1) + document.line - 1
                    print("\(document.path):\(line):\(Printer.text(problem["column"])): \(Printer.text(problem["field"])): \(Printer.text(problem["message"]))")
                }
            }
        }
        if client.output == .json { Printer.print(["files": reports], format: .json, columns: []) }
        if invalid > 0 { throw ExitCode(1) }
    }
}
