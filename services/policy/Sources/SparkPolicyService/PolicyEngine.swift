import Foundation
import SparkExpr
import SparkKit
import SparkProto
import SparkWorkflow
import SwiftProtobuf

/// A stored policy, read and ready to evaluate.
struct CompiledPolicy: Sendable {
    var id: String
    var version: Int
    var global: Bool
    var definition: PolicyDefinition
    /// The context names its rules read (`principal.role`, `budget`, …).
    var reads: Set<String>

    init(id: String, version: Int, global: Bool, definition: PolicyDefinition) {
        self.id = id
        self.version = version
        self.global = global
        self.definition = definition
        self.reads = definition.rules.reduce(into: Set<String>()) { reads, rule in
            if let condition = rule.condition { reads.formUnion(PolicyContextSchema.roots(of: condition)) }
        }
    }
}

/// How a decision is made, as a pure function of the policies and the environment:
///
/// - A policy applies at the points it names (all when it names none); a rule at the points it
///   names (all of its policy's when it names none).
/// - Within a policy, every applicable rule whose condition is true matches; the policy decides
///   the strongest effect among its matches, or its default when none matches.
/// - Across policies, the strongest decision wins: deny over require_approval over allow. With no
///   policy at the point, `fallback` decides (allow unless configured).
/// - A condition that cannot be evaluated counts as matching when its rule denies or holds, and
///   as not matching when it allows: an error never lets more through.
enum PolicyEngine {
    /// Evaluation steps one condition may take.
    static let limits = ExprLimits(maxSourceLength: 4096, maxDepth: 32, maxSteps: 2_000, maxValueSize: 256 * 1024, maxRegexWork: 200_000)

    static func decide(
        point: PolicyDefinition.Point, policies: [CompiledPolicy], environment: [String: ExprValue], fallback: PolicyDefinition.Effect
    ) -> Sparkops_Policy_V1_Decision {
        var decision = Sparkops_Policy_V1_Decision()
        decision.point = point.rawValue
        var outcomes: [(PolicyDefinition.Effect, [Sparkops_Policy_V1_RuleMatch])] = []
        for policy in policies where policy.definition.applies(at: point) {
            decision.policies.append(.with {
                $0.id = policy.id
                $0.name = policy.definition.name
                $0.version = Int32(clamping: policy.version)
                $0.global = policy.global
            })
            var counted: [(PolicyDefinition.Effect, Sparkops_Policy_V1_RuleMatch)] = []
            for rule in policy.definition.rules where rule.points.isEmpty || rule.points.contains(point) {
                var match = Self.match(policy, rule: rule.name, effect: rule.effect, message: rule.message)
                match.excludeStarter = rule.excludeStarter
                if let condition = rule.condition {
                    do {
                        let value = try condition.evaluate(in: environment, limits: Self.limits)
                        switch value {
                        case .bool(true): break
                        case .bool(false): continue
                        default: match.error = "the condition gave a \(value.typeName), not a bool"
                        }
                    } catch {
                        match.error = error.description
                    }
                }
                decision.matches.append(match)
                if match.error.isEmpty || rule.effect != .allow {
                    counted.append((rule.effect, match))
                }
            }
            if let strongest = counted.map(\.0).max() {
                outcomes.append((strongest, counted.filter { $0.0 == strongest }.map(\.1)))
            } else {
                let message = "no rule of \(policy.definition.name) matched; its default is \(policy.definition.defaultEffect.rawValue)"
                outcomes.append((policy.definition.defaultEffect, [Self.match(policy, rule: "", effect: policy.definition.defaultEffect, message: message)]))
            }
        }
        let effect = outcomes.isEmpty ? fallback : outcomes.map(\.0).max()!
        decision.effect = effect.rawValue
        decision.decidedBy = outcomes.filter { $0.0 == effect }.flatMap(\.1)
        decision.excludeStarter = effect == .requireApproval && decision.decidedBy.contains(where: \.excludeStarter)
        if let first = decision.decidedBy.first {
            let source = first.rule.isEmpty ? first.policyName : "\(first.policyName)/\(first.rule)"
            decision.message = first.message.isEmpty ? "\(source): \(effect.rawValue)" : "\(source): \(first.message)"
        } else {
            decision.message = "no policy applies at \(point.rawValue); the default is \(fallback.rawValue)"
        }
        return decision
    }

    static func match(_ policy: CompiledPolicy, rule: String, effect: PolicyDefinition.Effect, message: String) -> Sparkops_Policy_V1_RuleMatch {
        .with {
            $0.policyID = policy.id
            $0.policyName = policy.definition.name
            $0.policyVersion = Int32(clamping: policy.version)
            $0.rule = rule
            $0.effect = effect.rawValue
            $0.message = message
            $0.global = policy.global
        }
    }
}

/// The names a rule reads, made from a context (docs/policies.md): every name is always there,
/// empty or zero when the caller did not say.
enum PolicyEnvironment {
    static let weekdays = ["sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday"]

    static func make(
        point: PolicyDefinition.Point, projectID: String, context: Sparkops_Policy_V1_PolicyContext, time: Date, zone: TimeZone
    ) -> [String: ExprValue] {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = zone
        let parts = calendar.dateComponents([.year, .month, .day, .hour, .minute, .weekday], from: time)
        let weekday = (parts.weekday ?? 1) - 1
        let budget = context.budget
        let percent = budget.percentUsed
        return [
            "point": .string(point.rawValue),
            "principal": .map([
                "id": .string(context.principal.id), "kind": .string(context.principal.kind),
                "role": .string(context.principal.role), "user_id": .string(context.principal.userID),
            ]),
            "project": .map(["id": .string(projectID)]),
            "workflow": .map([
                "id": .string(context.workflow.id), "name": .string(context.workflow.name), "version": .int(Int64(context.workflow.version)),
            ]),
            "run": .map(["id": .string(context.runID)]),
            "step": .map(["id": .string(context.step.id), "kind": .string(context.step.kind), "attempt": .int(Int64(context.step.attempt))]),
            "agent": .map(["name": .string(context.agent)]),
            "tool": .map([
                "name": .string(context.tool.name), "kind": .string(context.tool.kind), "host": .string(context.tool.host),
                "side_effects": .string(context.tool.sideEffects), "cost_micros": .int(context.tool.costMicros),
                // Checked to be JSON when the request was (PolicyService.validate).
                "arguments": (try? context.tool.arguments.value(field: "context.tool.arguments")) ?? .null,
            ]),
            "model": .map([
                "provider": .string(context.model.provider), "name": .string(context.model.name),
                "input_tokens": .int(context.model.inputTokens), "max_tokens": .int(context.model.maxTokens),
            ]),
            "cost": .map(["estimated_micros": .int(context.estimatedCostMicros)]),
            "budget": .map([
                "id": .string(budget.id), "limit_micros": .int(budget.limitMicros), "spent_micros": .int(budget.spentMicros),
                "reserved_micros": .int(budget.reservedMicros),
                "remaining_micros": .int(budget.limitMicros == 0 ? 0 : budget.limitMicros - budget.spentMicros - budget.reservedMicros),
                "percent_used": .double(percent.isFinite ? percent : 0),
            ]),
            "time": .map([
                "hour": .int(Int64(parts.hour ?? 0)), "minute": .int(Int64(parts.minute ?? 0)),
                "weekday": .string(Self.weekdays[max(0, min(6, weekday))]), "weekday_number": .int(Int64(weekday == 0 ? 7 : weekday)),
                "date": .string(String(format: "%04d-%02d-%02d", parts.year ?? 1970, parts.month ?? 1, parts.day ?? 1)),
                "zone": .string(zone.identifier),
            ]),
            "labels": .map(context.labels.mapValues(ExprValue.string)),
        ]
    }
}
