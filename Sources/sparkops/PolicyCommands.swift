import ArgumentParser
import Foundation
import NIOHTTP1

/// Where a policy command acts: a project's policies, or the global ones.
struct PolicyScope: ParsableArguments {
    @Option(help: ProjectDefault.help) var project: String?
    @Flag(help: "The global policies, which apply to every project (written by global administrators).") var global = false

    func validate() throws {
        guard !(self.project != nil && self.global) else { throw ValidationError("give --project or --global (one of them)") }
        guard self.global || self.scopeProject != nil else {
            throw ValidationError("give --project or --global (or set a default project: SPARKOPS_PROJECT, or `sparkops project use NAME`)")
        }
    }

    /// The project given, or the default one unless --global.
    var scopeProject: String? { self.global ? nil : self.project ?? ProjectDefault.saved }

    var base: String {
        if let project = self.scopeProject { return "/api/v1/projects/\(project)/policies" }
        return "/api/v1/policies"
    }
}

struct PolicyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "policy",
        abstract: "Apply, list, show and test policies: rules that allow, deny or hold runs, steps, tool calls and LLM calls.",
        subcommands: [Apply.self, Validate.self, List.self, Get.self, Delete.self, Test.self]
    )

    static let columns: [(title: String, key: String)] = [
        ("name", "name"), ("default", "defaultEffect"), ("points", "points"), ("version", "latestVersion"), ("id", "id"), ("updated", "updateTime"),
    ]

    struct Apply: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create policies, or add a version to those whose definition changed.")
        @Option(name: .shortAndLong, help: "A YAML or JSON file, or a directory of them.") var file: String
        @OptionGroup var scope: PolicyScope
        @OptionGroup var client: ClientOptions

        func run() async throws {
            let api = APIClient(options: self.client)
            var results: [[String: Any]] = []
            for document in try DefinitionDocument.load(self.file) {
                guard document.kind == .policy else { throw ValidationError("\(document.label): not a policy (a policy starts with `policy:`)") }
                do {
                    let applied = try await api.call(.POST, "\(self.scope.base)/apply", body: ["source": document.source])
                    let policy = applied["policy"] as? [String: Any] ?? [:]
                    let version = applied["version"] as? [String: Any] ?? [:]
                    let outcome = applied["created"] as? Bool == true ? "created" : (applied["changed"] as? Bool == true ? "new version" : "unchanged")
                    results.append(["file": document.label, "name": policy["name"] ?? "", "id": policy["id"] ?? "", "version": version["version"] ?? 0, "outcome": outcome])
                } catch let error as APICallError {
                    throw ValidationError("\(document.label): \(error)")
                }
            }
            Printer.print(["applied": results], format: self.client.output, rows: "applied", columns: [
                ("file", "file"), ("name", "name"), ("id", "id"), ("version", "version"), ("outcome", "outcome"),
            ])
        }
    }

    struct Validate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Check policy definitions without storing anything: every problem with its line, column and field.")
        @Option(name: .shortAndLong, help: "A YAML or JSON file, or a directory of them.") var file: String
        @Option(help: ProjectDefault.help) var project: String = ProjectDefault.current
        @OptionGroup var client: ClientOptions

        func run() async throws {
            try await DefinitionValidation.run(file: self.file, project: self.project, client: self.client)
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "A project's policies, or the global ones.")
        @OptionGroup var scope: PolicyScope
        @OptionGroup var client: ClientOptions

        func run() async throws {
            let page = try await APIClient(options: self.client).call(.GET, "\(self.scope.base)?page_size=500")
            Printer.print(Self.flattened(page), format: self.client.output, rows: "policies", columns: PolicyCommand.columns)
        }

        /// Points as one cell.
        static func flattened(_ page: [String: Any]) -> [String: Any] {
            var page = page
            page["policies"] = (page["policies"] as? [[String: Any]] ?? []).map { policy in
                var policy = policy
                let points = policy["points"] as? [String] ?? []
                policy["points"] = points.isEmpty ? "all" : points.joined(separator: ",")
                return policy
            }
            return page
        }
    }

    struct Get: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "A policy and its rules, or one of its versions with its source.")
        @Argument(help: "The policy's name or id.") var policy: String
        @OptionGroup var scope: PolicyScope
        @Option(help: "A version number, or latest; prints that version's source (project policies).") var version: String?
        @OptionGroup var client: ClientOptions

        func run() async throws {
            let api = APIClient(options: self.client)
            let base = "\(self.scope.base)/\(ToolCommand.escape(self.policy))"
            if let version = self.version {
                guard self.scope.scopeProject != nil else { throw ValidationError("--version reads a project policy's versions") }
                let found = try await api.call(.GET, "\(base)/versions/\(version)")
                if self.client.output == .json { Printer.print(found, format: .json, columns: []) } else { print(found["source"] as? String ?? "") }
                return
            }
            let found = try await api.call(.GET, base)
            guard self.client.output == .table else { return Printer.print(found, format: .json, columns: []) }
            print("\(Printer.text(found["name"])) v\(Printer.text(found["latestVersion"])) (\(Printer.text(found["id"]))), default \(Printer.text(found["defaultEffect"]))")
            Printer.print(["rules": found["rules"] ?? []], format: .table, rows: "rules", columns: [("rule", "name"), ("effect", "effect"), ("when", "when"), ("message", "message")])
        }
    }

    struct Delete: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete a policy.")
        @Argument(help: "The policy's name or id.") var policy: String
        @OptionGroup var scope: PolicyScope
        @OptionGroup var client: ClientOptions

        func run() async throws {
            _ = try await APIClient(options: self.client).call(.DELETE, "\(self.scope.base)/\(ToolCommand.escape(self.policy))")
            print("deleted \(self.policy)")
        }
    }

    struct Test: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "A dry run: the decision of the saved policies, or of a policy file not saved, on a context you give.",
            discussion: """
                sparkops policy test --project prj_… --point tool.invoke --context '{"tool": {"name": "pay", "arguments": {"amount": 250}}}' -f payments.yaml --expect require_approval
                Nothing is stored. With --expect, exits 1 when the decision is another.
                """
        )
        @Option(help: ProjectDefault.help) var project: String = ProjectDefault.current
        @Option(help: "run.create, step.start, tool.invoke or llm.call.") var point: String
        @Option(help: "The context as JSON (docs/policies.md); @FILE reads it from a file.") var context: String = "{}"
        @Option(name: .shortAndLong, help: "A policy file to test instead of the saved policies.") var file: String?
        @Flag(help: "With --file, also evaluate the saved policies beside it.") var withSaved = false
        @Option(help: "The time the rules see (RFC 3339, such as 2026-12-05T22:30:00Z); default now.") var at: String?
        @Option(help: "Exit 1 unless the decision is this: allow, deny or require_approval.") var expect: String?
        @OptionGroup var client: ClientOptions

        func run() async throws {
            let text = self.context.hasPrefix("@") ? try WorkflowFiles.read(String(self.context.dropFirst())) : self.context
            guard let context = (try? CLIJSON.parse(text)) as? [String: Any] else {
                throw ValidationError("--context is not a JSON object: \(text.prefix(80))")
            }
            var body: [String: Any] = ["point": self.point, "context": context, "withSaved": self.withSaved]
            if let file = self.file {
                let documents = try DefinitionDocument.load(file).filter { $0.kind == .policy }
                guard documents.count == 1 else { throw ValidationError("--file must hold exactly one policy; it holds \(documents.count)") }
                body["source"] = documents[0].source
            }
            if let at = self.at { body["time"] = at }
            let result = try await APIClient(options: self.client).call(.POST, "/api/v1/projects/\(self.project)/policies/test", body: body)
            let decision = result["decision"] as? [String: Any] ?? [:]
            let effect = decision["effect"] as? String ?? ""
            if self.client.output == .json {
                Printer.print(result, format: .json, columns: [])
            } else {
                print("\(effect): \(Printer.text(decision["message"]))")
                let decided = (decision["decidedBy"] as? [[String: Any]] ?? []).map { match -> [String: Any] in
                    var match = match
                    if (match["rule"] as? String ?? "").isEmpty { match["rule"] = "(default)" }
                    return match
                }
                if !decided.isEmpty {
                    Printer.print(["rules": decided], format: .table, rows: "rules", columns: [("policy", "policyName"), ("version", "policyVersion"), ("rule", "rule"), ("effect", "effect"), ("error", "error")])
                }
            }
            if let expected = self.expect, expected != effect {
                throw ExitCode(1)
            }
        }
    }
}

struct ViolationCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "violation",
        abstract: "The denials and holds the project's policies decided, newest first.",
        subcommands: [List.self, Get.self]
    )

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "A project's violations, newest first.")
        @Option(help: ProjectDefault.help) var project: String = ProjectDefault.current
        @Option(help: "Only this point's: run.create, step.start, tool.invoke or llm.call.") var point: String?
        @Option(help: "Only deny or require_approval.") var effect: String?
        @Option(help: "At most this many.") var limit: Int = 50
        @OptionGroup var client: ClientOptions

        func run() async throws {
            var path = "/api/v1/projects/\(self.project)/violations?page_size=\(self.limit)"
            if let point = self.point { path += "&point=\(point)" }
            if let effect = self.effect { path += "&effect=\(effect)" }
            var page = try await APIClient(options: self.client).call(.GET, path)
            page["violations"] = (page["violations"] as? [[String: Any]] ?? []).map { violation in
                var violation = violation
                let decision = violation["decision"] as? [String: Any] ?? [:]
                violation["message"] = decision["message"] ?? ""
                return violation
            }
            Printer.print(page, format: self.client.output, rows: "violations", columns: [
                ("time", "createTime"), ("point", "point"), ("effect", "effect"), ("message", "message"), ("by", "principalId"), ("id", "id"),
            ])
        }
    }

    struct Get: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "A violation with the context it was decided on, as JSON.")
        @Argument(help: "The violation's id (viol_…).") var id: String
        @Option(help: ProjectDefault.help) var project: String = ProjectDefault.current
        @OptionGroup var client: ClientOptions

        func run() async throws {
            Printer.print(try await APIClient(options: self.client).call(.GET, "/api/v1/projects/\(self.project)/violations/\(self.id)"), format: .json, columns: [])
        }
    }
}
