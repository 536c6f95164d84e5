import ArgumentParser
import Foundation
import NIOHTTP1

/// Amounts as users write them (dollars) and as the API holds them (micro-dollars).
enum Dollars {
    /// `5`, `5.25` or `0.000001` dollars, exactly: at most six decimals.
    static func micros(_ text: String, option: String) throws -> Int64 {
        let parts = text.split(separator: ".", maxSplits: 1, omittingEmptySubsequences: false)
        let whole = parts[0]
        let fraction = parts.count > 1 ? parts[1] : ""
        guard !whole.isEmpty || !fraction.isEmpty, whole.allSatisfy(\.isASCII), whole.allSatisfy(\.isNumber),
              fraction.allSatisfy(\.isASCII), fraction.allSatisfy(\.isNumber)
        else { throw ValidationError("\(option) must be an amount in dollars, such as 5 or 12.50; not \(text.debugDescription)") }
        guard fraction.count <= 6 else { throw ValidationError("\(option) has at most six decimals (one micro-dollar); not \(text)") }
        guard whole.count <= 10, let dollars = Int64(whole.isEmpty ? "0" : whole),
              let micros = Int64(fraction.padding(toLength: 6, withPad: "0", startingAt: 0))
        else { throw ValidationError("\(option) is too large: at most 1000000000 dollars") }
        return dollars * 1_000_000 + micros
    }

    /// `12.5` from 12,500,000 micro-dollars; proto3 JSON gives int64 as strings, and leaves zeros out.
    static func text(_ value: Any?) -> String {
        let micros: Int64
        switch value {
        case let string as String: micros = Int64(string) ?? 0
        case let number as NSNumber: micros = number.int64Value
        default: micros = 0
        }
        let sign = micros < 0 ? "-" : ""
        let magnitude = micros.magnitude
        let cents = String(magnitude % 1_000_000).leftPadded(to: 6)
        let fraction = cents.replacingOccurrences(of: "0+$", with: "", options: .regularExpression)
        return "\(sign)$\(magnitude / 1_000_000)\(fraction.isEmpty ? "" : "." + fraction)"
    }
}

extension String {
    fileprivate func leftPadded(to length: Int) -> String {
        String(repeating: "0", count: max(0, length - self.count)) + self
    }
}

struct BudgetCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "budget",
        abstract: "Set, list and read budgets: limits on what a project's LLM and tool calls spend, with their usage, ledger and alerts.",
        subcommands: [Set.self, List.self, Get.self, Delete.self, Usage.self, Ledger.self, Alerts.self]
    )

    static func base(_ project: String) -> String { "/api/v1/projects/\(project)/budgets" }

    /// A budget as one table row: its scope in one cell, and amounts in dollars.
    static func row(_ budget: [String: Any]) -> [String: Any] {
        var row = budget
        let usage = budget["usage"] as? [String: Any] ?? [:]
        let scopes = [("workflow", "workflow"), ("agent", "agent"), ("apiKeyId", "key")].compactMap { key, label -> String? in
            guard let value = budget[key] as? String, !value.isEmpty else { return nil }
            return "\(label)=\(value)"
        }
        row["scope"] = scopes.isEmpty ? "project" : scopes.joined(separator: ",")
        row["limit"] = Dollars.text(budget["limitMicros"])
        row["spent"] = Dollars.text(usage["spentMicros"])
        row["reserved"] = Dollars.text(usage["reservedMicros"])
        row["remaining"] = Dollars.text(usage["remainingMicros"])
        row["used"] = String(format: "%.1f%%", (usage["percentUsed"] as? NSNumber)?.doubleValue ?? 0)
        row["current"] = usage["period"] ?? ""
        return row
    }

    static let columns: [(title: String, key: String)] = [
        ("name", "name"), ("scope", "scope"), ("period", "current"), ("kind", "kind"), ("limit", "limit"),
        ("spent", "spent"), ("reserved", "reserved"), ("remaining", "remaining"), ("used", "used"), ("id", "id"),
    ]

    struct Set: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create the budget of this name, or change its limit, scope or kind.",
            discussion: """
                sparkops budget set llm-daily --project prj_… --limit 5 --period day
                sparkops budget set nightly --project prj_… --limit 20 --workflow nightly-report --soft
                Amounts are in dollars, to the micro-dollar. A budget's period cannot change once set.
                """
        )
        @Argument(help: "The budget's name: letters, digits, - and _, up to 64.") var budget: String
        @Option(help: ProjectDefault.help) var project: String = ProjectDefault.current
        @Option(help: "The limit in dollars, such as 5 or 12.50.") var limit: String
        @Option(help: "day, month (the default for a new budget) or total.") var period: String?
        @Option(help: "Count only this workflow's spend.") var workflow: String?
        @Option(help: "Count only this agent's spend.") var agent: String?
        @Option(name: .customLong("key-id"), help: "Count only this API key's spend (key_…).") var keyID: String?
        @Flag(help: "A soft budget: nothing is refused; alerts say how far over it is.") var soft = false
        @Option(help: "A description.") var description: String?
        @OptionGroup var client: ClientOptions

        func run() async throws {
            var body: [String: Any] = ["limitMicros": String(try Dollars.micros(self.limit, option: "--limit")), "kind": self.soft ? "soft" : "hard"]
            if let period = self.period { body["period"] = period }
            if let workflow = self.workflow { body["workflow"] = workflow }
            if let agent = self.agent { body["agent"] = agent }
            if let keyID = self.keyID { body["apiKeyId"] = keyID }
            if let description = self.description { body["description"] = description }
            let result = try await APIClient(options: self.client).call(.PUT, "\(BudgetCommand.base(self.project))/\(ToolCommand.escape(self.budget))", body: body)
            guard self.client.output == .table else { return Printer.print(result, format: .json, columns: []) }
            let budget = result["budget"] as? [String: Any] ?? [:]
            print("\(result["created"] as? Bool == true ? "created" : "updated") budget \(Printer.text(budget["name"])) (\(Printer.text(budget["id"])))")
            Printer.print(BudgetCommand.row(budget), format: .table, columns: BudgetCommand.columns)
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "A project's budgets, with their current period's usage.")
        @Option(help: ProjectDefault.help) var project: String = ProjectDefault.current
        @OptionGroup var client: ClientOptions

        func run() async throws {
            var page = try await APIClient(options: self.client).call(.GET, "\(BudgetCommand.base(self.project))?page_size=500")
            if self.client.output == .table {
                page["budgets"] = (page["budgets"] as? [[String: Any]] ?? []).map(BudgetCommand.row)
            }
            Printer.print(page, format: self.client.output, rows: "budgets", columns: BudgetCommand.columns)
        }
    }

    struct Get: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "A budget, by name or id, with its current period's usage.")
        @Argument(help: "The budget's name or id.") var budget: String
        @Option(help: ProjectDefault.help) var project: String = ProjectDefault.current
        @OptionGroup var client: ClientOptions

        func run() async throws {
            let found = try await APIClient(options: self.client).call(.GET, "\(BudgetCommand.base(self.project))/\(ToolCommand.escape(self.budget))")
            guard self.client.output == .table else { return Printer.print(found, format: .json, columns: []) }
            Printer.print(BudgetCommand.row(found), format: .table, columns: BudgetCommand.columns)
        }
    }

    struct Delete: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete a budget, its usage and its ledger.")
        @Argument(help: "The budget's name or id.") var budget: String
        @Option(help: ProjectDefault.help) var project: String = ProjectDefault.current
        @OptionGroup var client: ClientOptions

        func run() async throws {
            _ = try await APIClient(options: self.client).call(.DELETE, "\(BudgetCommand.base(self.project))/\(ToolCommand.escape(self.budget))")
            print("deleted budget \(self.budget)")
        }
    }

    struct Usage: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "A budget's usage in a period, and its spend by workflow, agent, model, tool, run or API key.",
            discussion: "sparkops budget usage llm-daily --project prj_… --by model --period 2026-12-02"
        )
        @Argument(help: "The budget's name or id.") var budget: String
        @Option(help: ProjectDefault.help) var project: String = ProjectDefault.current
        @Option(help: "A period (2026-12-02, 2026-12 or total); default the current one.") var period: String?
        @Option(help: "Group spend by workflow, agent, model, tool, run or api_key.") var by: String?
        @OptionGroup var client: ClientOptions

        func run() async throws {
            var path = "\(BudgetCommand.base(self.project))/\(ToolCommand.escape(self.budget))/usage?"
            if let period = self.period { path += "period=\(ToolCommand.escape(period))&" }
            if let by = self.by { path += "groupBy=\(ToolCommand.escape(by))" }
            let result = try await APIClient(options: self.client).call(.GET, path)
            guard self.client.output == .table else { return Printer.print(result, format: .json, columns: []) }
            let usage = result["usage"] as? [String: Any] ?? [:]
            let budget = result["budget"] as? [String: Any] ?? [:]
            print("""
                \(Printer.text(budget["name"])) \(Printer.text(usage["period"])): spent \(Dollars.text(usage["spentMicros"])) \
                + reserved \(Dollars.text(usage["reservedMicros"])) of \(Dollars.text(usage["limitMicros"])) \
                (\(String(format: "%.1f", (usage["percentUsed"] as? NSNumber)?.doubleValue ?? 0)) %), \
                \(Dollars.text(usage["remainingMicros"])) left
                """)
            guard self.by != nil else { return }
            let groups = (result["groups"] as? [[String: Any]] ?? []).map { group -> [String: Any] in
                var group = group
                if (group["key"] as? String ?? "").isEmpty { group["key"] = "(none)" }
                group["spent"] = Dollars.text(group["spentMicros"])
                group["calls"] = Printer.text(group["calls"] ?? "0")
                return group
            }
            Printer.print(["groups": groups], format: .table, rows: "groups", columns: [(self.by ?? "key", "key"), ("spent", "spent"), ("calls", "calls")])
        }
    }

    struct Ledger: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "A budget's ledger, newest first: every reserve, settle, release, expire and charge.")
        @Argument(help: "The budget's name or id.") var budget: String
        @Option(help: ProjectDefault.help) var project: String = ProjectDefault.current
        @Option(help: "Only this period's entries.") var period: String?
        @Option(help: "At most this many.") var limit: Int = 50
        @OptionGroup var client: ClientOptions

        func run() async throws {
            var path = "\(BudgetCommand.base(self.project))/\(ToolCommand.escape(self.budget))/ledger?page_size=\(self.limit)"
            if let period = self.period { path += "&period=\(ToolCommand.escape(period))" }
            var page = try await APIClient(options: self.client).call(.GET, path)
            if self.client.output == .table {
                page["entries"] = (page["entries"] as? [[String: Any]] ?? []).map { entry in
                    var entry = entry
                    let attribution = entry["attribution"] as? [String: Any] ?? [:]
                    entry["amount"] = Dollars.text(entry["amountMicros"])
                    entry["spentAfter"] = Dollars.text(entry["spentAfterMicros"])
                    entry["reservedAfter"] = Dollars.text(entry["reservedAfterMicros"])
                    entry["for"] = ["workflow", "agent", "model", "tool", "runId"].compactMap { key -> String? in
                        guard let value = attribution[key] as? String, !value.isEmpty else { return nil }
                        return "\(key == "runId" ? "run" : key)=\(value)"
                    }.joined(separator: ",")
                    return entry
                }
            }
            Printer.print(page, format: self.client.output, rows: "entries", columns: [
                ("time", "createTime"), ("period", "period"), ("kind", "kind"), ("amount", "amount"), ("spent after", "spentAfter"),
                ("reserved after", "reservedAfter"), ("reservation", "reservationId"), ("for", "for"),
            ])
        }
    }

    struct Alerts: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "The project's budget alerts (50, 80 and 100 % of a period's limit spent), newest first.")
        @Option(help: ProjectDefault.help) var project: String = ProjectDefault.current
        @Option(help: "At most this many.") var limit: Int = 50
        @OptionGroup var client: ClientOptions

        func run() async throws {
            var page = try await APIClient(options: self.client).call(.GET, "/api/v1/projects/\(self.project)/budget-alerts?page_size=\(self.limit)")
            if self.client.output == .table {
                page["alerts"] = (page["alerts"] as? [[String: Any]] ?? []).map { alert in
                    var alert = alert
                    alert["spent"] = Dollars.text(alert["spentMicros"])
                    alert["limit"] = Dollars.text(alert["limitMicros"])
                    return alert
                }
            }
            Printer.print(page, format: self.client.output, rows: "alerts", columns: [
                ("time", "createTime"), ("budget", "budgetName"), ("period", "period"), ("threshold %", "threshold"), ("spent", "spent"), ("limit", "limit"),
            ])
        }
    }
}
