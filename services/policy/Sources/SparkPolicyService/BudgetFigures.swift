import GRPCCore
import SparkKit
import SparkProto
import SparkWire
import SwiftProtobuf

/// The `budget.*` names of a decision, from the budget service: the hard budget covering the call
/// with the least room left in its current period (docs/policies.md). Read only when a rule that
/// applies reads them.
struct BudgetFigures: Sendable {
    private let budgets: Sparkops_Budget_V1_BudgetService.SparkWireClient

    init(client: SparkWireChannel) {
        self.budgets = .init(wrapping: client)
    }

    /// The budget's figures; all zero when no hard budget covers the call. The caller's principal
    /// reads the budgets, so a budget is never seen by someone who may not read it.
    func tightest(projectID: String, context: Sparkops_Policy_V1_PolicyContext, principal: Sparkops_Common_V1_Principal) async throws -> Sparkops_Policy_V1_PolicyContext.Budget {
        var budgets: [Sparkops_Budget_V1_Budget] = []
        var token = ""
        repeat {
            let page = try await self.budgets.listBudgets(
                .with {
                    $0.projectID = projectID
                    $0.pageSize = 500
                    $0.pageToken = token
                },
                metadata: principal.metadata
            )
            budgets += page.budgets
            token = page.nextPageToken
        } while !token.isEmpty && budgets.count < 10_000
        let apiKey = principal.kind == .apiKey ? principal.id : ""
        let covering = budgets.filter { budget in
            budget.kind == "hard"
                && (budget.workflow.isEmpty || budget.workflow == context.workflow.name)
                && (budget.agent.isEmpty || budget.agent == context.agent)
                && (budget.apiKeyID.isEmpty || budget.apiKeyID == apiKey)
        }
        guard let tightest = covering.min(by: { Self.room($0) < Self.room($1) }) else { return .init() }
        let usage = tightest.usage
        return .with {
            $0.id = tightest.id
            $0.limitMicros = usage.limitMicros == 0 ? tightest.limitMicros : usage.limitMicros
            $0.spentMicros = usage.spentMicros
            $0.reservedMicros = usage.reservedMicros
            $0.percentUsed = $0.limitMicros == 0 ? 0 : Double($0.spentMicros + $0.reservedMicros) / Double($0.limitMicros) * 100
        }
    }

    private static func room(_ budget: Sparkops_Budget_V1_Budget) -> Int64 {
        let limit = budget.usage.limitMicros == 0 ? budget.limitMicros : budget.usage.limitMicros
        return limit - budget.usage.spentMicros - budget.usage.reservedMicros
    }
}
