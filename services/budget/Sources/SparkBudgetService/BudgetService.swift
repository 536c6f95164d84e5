import Foundation
public import GRPCCore
import Logging
import Metrics
import SQLKit
import SparkKit
public import SparkProto
import SwiftProtobuf

/// `sparkops.budget.v1.BudgetService`: a project's budgets, the reservations that hold spend on
/// them until it is settled, the ledger of every movement, alerts and usage reports.
///
/// Budgets need `budget.read` / `budget.write`; reservations need `budget.spend` (runner and
/// above). The agent, tool and run services reserve on behalf of the principal that started the
/// work, which travels in the call's metadata.
public final class BudgetService: Sparkops_Budget_V1_BudgetService.ServiceProtocol {
    let store: BudgetStore
    let access: ProjectAccess
    let settings: BudgetServiceConfig
    let logger: Logger

    init(store: SparkStore, access: ProjectAccess, settings: BudgetServiceConfig, logger: Logger) {
        self.store = BudgetStore(store: store)
        self.access = access
        self.settings = settings
        self.logger = logger
    }

    // MARK: Budgets

    public func setBudget(
        request: ServerRequest<Sparkops_Budget_V1_SetBudgetRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Budget_V1_SetBudgetResponse> {
        let message = request.message
        let principal = try await self.access.require(request.metadata, projectID: message.projectID, permission: "budget.write")
        let name = try Validate.name(message.budget, field: "budget")
        // An empty period keeps an existing budget's period and gives a new one a monthly period.
        let requested = try Validate.period(message.period)
        guard message.limitMicros > 0 else { throw SparkError.invalid("limit_micros", "must be more than 0 (micro-dollars: 1000000 is 1 USD)") }
        guard message.limitMicros <= BudgetStore.maxLimit else {
            throw SparkError.invalid("limit_micros", "must be at most \(BudgetStore.maxLimit) (1 billion USD)")
        }
        let hard: Bool
        switch message.kind {
        case "", "hard": hard = true
        case "soft": hard = false
        default: throw SparkError.invalid("kind", "must be hard or soft, not \(message.kind.debugDescription)")
        }
        let workflow = try Validate.scope(message.workflow, field: "workflow")
        let agent = try Validate.scope(message.agent, field: "agent")
        let apiKeyID = message.apiKeyID
        guard apiKeyID.isEmpty || SparkID.isValid(apiKeyID, prefix: "key") else { throw SparkError.invalid("api_key_id", "is not a key_… id") }
        guard message.description_p.count <= 1000 else { throw SparkError.invalid("description", "must be at most 1000 characters") }

        let now = BudgetStore.now()
        let (row, created) = try await self.store.store.transaction { db -> (BudgetRow, Bool) in
            if var existing = try await self.store.budget(name, projectID: message.projectID, on: db), existing.name == name {
                guard requested == nil || existing.period == requested else {
                    throw SparkError(
                        .failedPrecondition,
                        "budget \(name) counts per \(existing.period.rawValue); its period cannot change (delete it and set it again)",
                        field: "period"
                    )
                }
                existing.workflow = workflow
                existing.agent = agent
                existing.apiKeyID = apiKeyID
                existing.limitMicros = message.limitMicros
                existing.hard = hard
                existing.description = message.description_p
                existing.updatedAt = now
                try await self.store.update(existing, currentPeriod: existing.period.key(at: Date(), in: self.settings.timeZone), on: db)
                return (existing, false)
            }
            guard try await self.store.count(projectID: message.projectID, on: db) < BudgetStore.maxBudgets else {
                throw SparkError(.resourceExhausted, "the project has \(BudgetStore.maxBudgets) budgets already, the most allowed")
            }
            let row = BudgetRow(
                id: SparkID.make("bud"), projectID: message.projectID, name: name, workflow: workflow, agent: agent, apiKeyID: apiKeyID,
                period: requested ?? .month, limitMicros: message.limitMicros, hard: hard, description: message.description_p,
                createdAt: now, updatedAt: now, createdBy: principal.id
            )
            try await self.store.insert(row, on: db)
            return (row, true)
        }
        await self.access.record(
            principal, projectID: message.projectID, action: created ? "budget.create" : "budget.update", target: row.id,
            detail: "\(name): \(row.limitMicros) micro-USD per \(row.period.rawValue), \(hard ? "hard" : "soft")", metadata: request.metadata, logger: self.logger
        )
        let budget = try await self.message(row)
        return ServerResponse(message: .with {
            $0.budget = budget
            $0.created = created
        })
    }

    public func getBudget(
        request: ServerRequest<Sparkops_Budget_V1_GetBudgetRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Budget_V1_Budget> {
        try await self.access.require(request.metadata, projectID: request.message.projectID, permission: "budget.read")
        let row = try await self.budget(request.message.budget, projectID: request.message.projectID)
        return ServerResponse(message: try await self.message(row))
    }

    public func listBudgets(
        request: ServerRequest<Sparkops_Budget_V1_ListBudgetsRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Budget_V1_ListBudgetsResponse> {
        let message = request.message
        try await self.access.require(request.metadata, projectID: message.projectID, permission: "budget.read")
        let (limit, after) = try Paging.parse(size: message.pageSize, token: message.pageToken)
        let rows = try await self.store.store.sql { try await self.store.budgets(projectID: message.projectID, after: after, limit: limit, on: $0) }
        var budgets: [Sparkops_Budget_V1_Budget] = []
        for row in rows { budgets.append(try await self.message(row)) }
        return ServerResponse(message: .with {
            $0.budgets = budgets
            $0.nextPageToken = Paging.token(lastID: rows.last?.id, count: rows.count, limit: limit)
        })
    }

    public func deleteBudget(
        request: ServerRequest<Sparkops_Budget_V1_DeleteBudgetRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Budget_V1_DeleteBudgetResponse> {
        let message = request.message
        let principal = try await self.access.require(request.metadata, projectID: message.projectID, permission: "budget.write")
        try Validate.reference(message.budget)
        let row = try await self.store.store.transaction { db -> BudgetRow? in
            guard let row = try await self.store.budget(message.budget, projectID: message.projectID, on: db) else { return nil }
            try await self.store.delete(row.id, on: db)
            return row
        }
        guard let row else { throw SparkError.notFound("budget") }
        await self.access.record(principal, projectID: message.projectID, action: "budget.delete", target: row.id, detail: row.name, metadata: request.metadata, logger: self.logger)
        return ServerResponse(message: .init())
    }

    // MARK: Reports

    public func getUsage(
        request: ServerRequest<Sparkops_Budget_V1_GetUsageRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Budget_V1_GetUsageResponse> {
        let message = request.message
        try await self.access.require(request.metadata, projectID: message.projectID, permission: "budget.read")
        let column: String?
        switch message.groupBy {
        case "": column = nil
        case "workflow", "agent", "model", "tool": column = message.groupBy
        case "run": column = "run_id"
        case "api_key": column = "api_key_id"
        default: throw SparkError.invalid("group_by", "must be workflow, agent, model, tool, run or api_key, not \(message.groupBy.debugDescription)")
        }
        let row = try await self.budget(message.budget, projectID: message.projectID)
        let period = message.period.isEmpty ? row.period.key(at: Date(), in: self.settings.timeZone) : message.period
        guard row.period.isKey(period) else {
            throw SparkError.invalid("period", "budget \(row.name) counts per \(row.period.rawValue): a period is \(row.period.example)")
        }
        let (usage, groups, alerts) = try await self.store.store.sql { db in
            let usage = try await self.store.usage(budgetID: row.id, period: period, on: db)
            var groups: [(key: String, spent: Int64, calls: Int64)] = []
            if let column { groups = try await self.store.spend(budgetID: row.id, period: period, by: column, on: db) }
            return (usage, groups, try await self.store.alerts(budgetID: row.id, period: period, on: db))
        }
        let budget = try await self.message(row)
        return ServerResponse(message: .with {
            $0.budget = budget
            $0.usage = Self.message(usage ?? UsageRow(budgetID: row.id, period: period, limitMicros: row.limitMicros, spentMicros: 0, reservedMicros: 0), alerts: alerts)
            $0.groups = groups.map { group in
                .with {
                    $0.key = group.key
                    $0.spentMicros = group.spent
                    $0.calls = group.calls
                }
            }
            $0.alerts = alerts.map(Self.message)
        })
    }

    public func listLedger(
        request: ServerRequest<Sparkops_Budget_V1_ListLedgerRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Budget_V1_ListLedgerResponse> {
        let message = request.message
        try await self.access.require(request.metadata, projectID: message.projectID, permission: "budget.read")
        let (limit, after) = try Paging.parse(size: message.pageSize, token: message.pageToken)
        guard after.isEmpty || Int64(after) != nil else { throw SparkError.invalid("page_token", "is not a token this list returned") }
        let row = try await self.budget(message.budget, projectID: message.projectID)
        guard message.period.isEmpty || row.period.isKey(message.period) else {
            throw SparkError.invalid("period", "budget \(row.name) counts per \(row.period.rawValue): a period is \(row.period.example)")
        }
        let entries = try await self.store.store.sql {
            try await self.store.ledger(budgetID: row.id, period: message.period, before: Int64(after) ?? 0, limit: limit, on: $0)
        }
        return ServerResponse(message: .with {
            $0.entries = entries.map(Self.message)
            $0.nextPageToken = Paging.token(lastID: entries.last.map { String($0.seq) }, count: entries.count, limit: limit)
        })
    }

    public func listAlerts(
        request: ServerRequest<Sparkops_Budget_V1_ListAlertsRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Budget_V1_ListAlertsResponse> {
        let message = request.message
        try await self.access.require(request.metadata, projectID: message.projectID, permission: "budget.read")
        let (limit, after) = try Paging.parse(size: message.pageSize, token: message.pageToken)
        guard after.isEmpty || Int64(after) != nil else { throw SparkError.invalid("page_token", "is not a token this list returned") }
        let alerts = try await self.store.store.sql {
            try await self.store.alerts(projectID: message.projectID, before: Int64(after) ?? 0, limit: limit, on: $0)
        }
        return ServerResponse(message: .with {
            $0.alerts = alerts.map(Self.message)
            $0.nextPageToken = Paging.token(lastID: alerts.last.map { String($0.createdAt) }, count: alerts.count, limit: limit)
        })
    }

    // MARK: Helpers

    func budget(_ reference: String, projectID: String) async throws -> BudgetRow {
        try Validate.reference(reference)
        guard let row = try await self.store.store.sql({ try await self.store.budget(reference, projectID: projectID, on: $0) }) else {
            throw SparkError.notFound("budget")
        }
        return row
    }

    /// A budget with its current period's figures.
    func message(_ row: BudgetRow) async throws -> Sparkops_Budget_V1_Budget {
        let period = row.period.key(at: Date(), in: self.settings.timeZone)
        let (usage, alerts) = try await self.store.store.sql { db in
            (try await self.store.usage(budgetID: row.id, period: period, on: db), try await self.store.alerts(budgetID: row.id, period: period, on: db))
        }
        return .with {
            $0.id = row.id
            $0.projectID = row.projectID
            $0.name = row.name
            $0.workflow = row.workflow
            $0.agent = row.agent
            $0.apiKeyID = row.apiKeyID
            $0.period = row.period.rawValue
            $0.limitMicros = row.limitMicros
            $0.kind = row.hard ? "hard" : "soft"
            $0.description_p = row.description
            $0.createTime = .init(microseconds: row.createdAt)
            $0.updateTime = .init(microseconds: row.updatedAt)
            $0.createdBy = row.createdBy
            $0.usage = Self.message(usage ?? UsageRow(budgetID: row.id, period: period, limitMicros: row.limitMicros, spentMicros: 0, reservedMicros: 0), alerts: alerts)
        }
    }

    static func message(_ usage: UsageRow, alerts: [AlertRow] = []) -> Sparkops_Budget_V1_Usage {
        .with {
            $0.period = usage.period
            $0.limitMicros = usage.limitMicros
            $0.spentMicros = usage.spentMicros
            $0.reservedMicros = usage.reservedMicros
            $0.remainingMicros = usage.limitMicros - usage.spentMicros - usage.reservedMicros
            $0.percentUsed = usage.limitMicros > 0 ? (Double(usage.spentMicros + usage.reservedMicros) * 100 / Double(usage.limitMicros)) : 0
            $0.alertedPercent = Int32(alerts.map(\.threshold).max() ?? 0)
        }
    }

    static func message(_ attribution: AttributionRow) -> Sparkops_Budget_V1_Attribution {
        .with {
            $0.workflow = attribution.workflow
            $0.agent = attribution.agent
            $0.apiKeyID = attribution.apiKeyID
            $0.model = attribution.model
            $0.tool = attribution.tool
            $0.runID = attribution.runID
            $0.stepID = attribution.stepID
        }
    }

    static func message(_ row: ReservationRow, holds: [HoldRow]) -> Sparkops_Budget_V1_Reservation {
        .with {
            $0.id = row.id
            $0.projectID = row.projectID
            $0.amountMicros = row.amountMicros
            $0.status = row.status.rawValue
            $0.actualMicros = row.actualMicros
            $0.late = row.late
            $0.budgetIds = holds.map(\.budgetID)
            $0.attribution = Self.message(row.attribution)
            $0.createTime = .init(microseconds: row.createdAt)
            $0.expireTime = .init(microseconds: row.expiresAt)
            if row.finishedAt > 0 { $0.finishTime = .init(microseconds: row.finishedAt) }
            $0.runEnvelope = row.envelope
            $0.drawnMicros = row.drawnMicros
            $0.envelopeID = row.envelopeID
        }
    }

    static func message(_ row: LedgerRow) -> Sparkops_Budget_V1_LedgerEntry {
        .with {
            $0.id = String(row.seq)
            $0.budgetID = row.budgetID
            $0.period = row.period
            $0.kind = row.kind
            $0.reservationID = row.reservationID
            $0.amountMicros = row.amountMicros
            $0.spentAfterMicros = row.spentAfter
            $0.reservedAfterMicros = row.reservedAfter
            $0.attribution = Self.message(row.attribution)
            $0.createTime = .init(microseconds: row.createdAt)
        }
    }

    static func message(_ row: AlertRow) -> Sparkops_Budget_V1_Alert {
        .with {
            $0.budgetID = row.budgetID
            $0.budgetName = row.budgetName
            $0.period = row.period
            $0.threshold = Int32(row.threshold)
            $0.spentMicros = row.spentMicros
            $0.reservedMicros = row.reservedMicros
            $0.limitMicros = row.limitMicros
            $0.createTime = .init(microseconds: row.createdAt)
        }
    }
}

/// Checks of request fields; each failure names the field.
enum Validate {
    static func name(_ value: String, field: String) throws -> String {
        guard !value.isEmpty else { throw SparkError.invalid(field, "is required") }
        guard value.utf8.count <= 64, value.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_") }) else {
            throw SparkError.invalid(field, "must be 1 to 64 letters, digits, '-' or '_'")
        }
        // A budget is named or given by id in the same place: a name like an id would be both.
        guard !value.lowercased().hasPrefix("bud_") else {
            throw SparkError.invalid(field, "must not start with bud_ (budget ids do)")
        }
        return value
    }

    /// A workflow or agent name a budget is narrowed to; empty for any.
    static func scope(_ value: String, field: String) throws -> String {
        guard !value.isEmpty else { return "" }
        guard value.utf8.count <= 100, !value.unicodeScalars.contains(where: { $0.properties.generalCategory == .control || $0 == " " }) else {
            throw SparkError.invalid(field, "must be a name of at most 100 characters without spaces")
        }
        return value
    }

    static func period(_ value: String) throws -> BudgetPeriod? {
        if value.isEmpty { return nil }
        guard let period = BudgetPeriod(rawValue: value) else { throw SparkError.invalid("period", "must be day, month or total, not \(value.debugDescription)") }
        return period
    }

    static func reference(_ reference: String) throws {
        guard !reference.isEmpty else { throw SparkError.invalid("budget", "is required") }
        guard reference.utf8.count <= 64, !reference.contains("/") else { throw SparkError.invalid("budget", "is neither a budget id nor a budget name") }
    }

    static func reservationID(_ id: String) throws {
        guard !id.isEmpty else { throw SparkError.invalid("reservation_id", "is required") }
        guard SparkID.isValid(id, prefix: "res") else { throw SparkError.invalid("reservation_id", "is not a res_… id") }
    }

    /// An amount of one reservation or settle, in micro-dollars.
    static func amount(_ value: Int64, field: String, allowZero: Bool) throws {
        guard allowZero ? value >= 0 : value > 0 else {
            throw SparkError.invalid(field, allowZero ? "must not be negative" : "must be more than 0 (micro-dollars: 1000000 is 1 USD)")
        }
        guard value <= BudgetStore.maxAmount else { throw SparkError.invalid(field, "must be at most \(BudgetStore.maxAmount) (1 million USD)") }
    }
}
