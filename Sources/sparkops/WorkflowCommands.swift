import ArgumentParser
import Foundation
import NIOHTTP1

/// `sparkops apply -f FILE|DIR`: every tool, agent and workflow definition in a file, or in the
/// `.yaml`, `.yml` and `.json` files of a directory, applied to a project (created, or a new
/// version when changed).
struct ApplyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "apply",
        abstract: "Apply tool, agent, policy and workflow definitions from a file or a directory (a new version only when one changed).",
        discussion: "A file may hold several YAML documents separated by ---; a document with a top-level `tool:` is a tool, one with `agent:` an agent, one with `policy:` a policy, the others workflows. Documents are applied in file order, so put tools before the agents that call them and both before the workflows that use them."
    )

    @Option(name: .shortAndLong, help: "A YAML or JSON file, or a directory of them.") var file: String
    @Option(help: ProjectDefault.help) var project: String = ProjectDefault.current
    @OptionGroup var client: ClientOptions

    func run() async throws {
        let api = APIClient(options: self.client)
        var results: [[String: Any]] = []
        for document in try DefinitionDocument.load(self.file) {
            do {
                let applied = try await api.call(.POST, "/api/v1/projects/\(self.project)/\(document.route)/apply", body: ["source": document.source])
                let resource = applied[document.kind.rawValue] as? [String: Any] ?? [:]
                let version = applied["version"] as? [String: Any] ?? [:]
                let outcome = applied["created"] as? Bool == true ? "created" : (applied["changed"] as? Bool == true ? "new version" : "unchanged")
                results.append([
                    "file": document.label, "kind": document.kind.rawValue, "name": resource["name"] ?? "", "id": resource["id"] ?? "",
                    "version": version["version"] ?? 0, "outcome": outcome,
                ])
            } catch let error as APICallError {
                throw ValidationError("\(document.label): \(error)")
            }
        }
        Printer.print(["applied": results], format: self.client.output, rows: "applied", columns: [
            ("file", "file"), ("kind", "kind"), ("name", "name"), ("id", "id"), ("version", "version"), ("outcome", "outcome"),
        ])
    }
}

struct WorkflowCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "workflow",
        abstract: "Validate, list and show workflows (apply them with `sparkops apply`).",
        subcommands: [Validate.self, List.self, Get.self]
    )

    static let columns: [(title: String, key: String)] = [("id", "id"), ("name", "name"), ("version", "latestVersion"), ("hash", "contentHash"), ("updated", "updateTime")]

    struct Validate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check definitions without storing anything: every problem with its line, column and field."
        )
        @Option(name: .shortAndLong, help: "A YAML or JSON file, or a directory of them.") var file: String
        @Option(help: ProjectDefault.help) var project: String = ProjectDefault.current
        @OptionGroup var client: ClientOptions

        func run() async throws {
            try await DefinitionValidation.run(file: self.file, project: self.project, client: self.client)
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "A project's workflows.")
        @Option(help: ProjectDefault.help) var project: String = ProjectDefault.current
        @OptionGroup var client: ClientOptions

        func run() async throws {
            try await DefinitionReads.list("workflows", project: self.project, client: self.client, columns: WorkflowCommand.columns)
        }
    }

    struct Get: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "A workflow, or one of its versions with its source.")
        @Argument(help: "The workflow id (wf_…).") var workflow: String
        @Option(help: ProjectDefault.help) var project: String = ProjectDefault.current
        @Option(help: "A version number, or latest; prints that version's source.") var version: String?
        @OptionGroup var client: ClientOptions

        func run() async throws {
            try await DefinitionReads.get("workflows", self.workflow, project: self.project, version: self.version, client: self.client, columns: WorkflowCommand.columns)
        }
    }
}

enum WorkflowFiles {
    /// The file itself, or the definition files of a directory, sorted.
    static func list(_ path: String) throws -> [String] {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw ValidationError("\(path) does not exist")
        }
        guard isDirectory.boolValue else { return [path] }
        let names = try FileManager.default.contentsOfDirectory(atPath: path)
            .filter { $0.hasSuffix(".yaml") || $0.hasSuffix(".yml") || $0.hasSuffix(".json") }
            .sorted()
        guard !names.isEmpty else { throw ValidationError("\(path) holds no .yaml, .yml or .json file") }
        return names.map { "\(path)/\($0)" }
    }

    static func read(_ path: String) throws -> String {
        do {
            return try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw ValidationError("cannot read \(path): \(error.localizedDescription)")
        }
    }
}
