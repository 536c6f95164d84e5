import Foundation
import GRPCCore
import NIOHTTP1
import SparkExpr
import SparkKit
import SparkProto
import SparkTesting
import SparkWire
import SwiftProtobuf
import Testing

/// The policy service through the gateway and over SparkWire as the enforcing services call it,
/// on every backend: definitions checked at write time with line and column, versions and audit,
/// decisions (deny over require_approval over allow, defaults, global policies, errors that fail
/// closed), violations, the dry run, and bad input.
@Suite("Policy API")
struct PolicyAPITests {
    static let payments = """
        policy: payments
        description: Money leaves only with a human's approval above 100.
        points: [tool.invoke]
        rules:
          - name: large-payment
            effect: require_approval
            when: tool.name == "pay" && tool.arguments.amount > 100
            message: Payments above 100 need an approver.
          - name: blocked-host
            effect: deny
            when: tool.host.endsWith(".evil.example")
            message: That host is blocked.
          - name: known-tools
            effect: allow
            when: tool.name in ["pay", "search"]
        """

    struct Project {
        let token: String
        let id: String
        var base: String { "/api/v1/projects/\(self.id)" }
    }

    static func project(_ cluster: TestCluster, _ name: String = "policies") async throws -> Project {
        let token = try await cluster.adminToken()
        return Project(token: token, id: try await cluster.createProject(name, token: token))
    }

    static func apply(_ cluster: TestCluster, _ project: Project, _ source: String) async throws -> HTTPTestClient.Reply {
        try await cluster.http.send(.POST, "\(project.base)/policies/apply", token: project.token, json: ["source": source])
    }

    /// Asks for a decision the way the agent service does, as the project's administrator.
    static func evaluate(
        _ cluster: TestCluster, _ project: Project, point: String, _ context: Sparkops_Policy_V1_PolicyContext
    ) async throws -> Sparkops_Policy_V1_Decision {
        let principal = try await Self.principal(cluster, project)
        return try await cluster.withPeer(.policy, as: .agent) { client in
            try await Sparkops_Policy_V1_PolicyService.Client(wrapping: client).evaluate(
                .with {
                    $0.projectID = project.id
                    $0.point = point
                    $0.context = context
                },
                metadata: principal.metadata
            ).decision
        }
    }

    static func principal(_ cluster: TestCluster, _ project: Project) async throws -> Sparkops_Common_V1_Principal {
        let me = try await cluster.http.send(.GET, "/api/v1/users/me", token: project.token)
        let userID = try #require(me.json["id"] as? String)
        return .with {
            $0.kind = .user
            $0.id = userID
            $0.userID = userID
            $0.isAdmin = true
        }
    }

    static func payment(_ amount: Double, host: String = "pay.example.com") -> Sparkops_Policy_V1_PolicyContext {
        .with {
            $0.tool.name = "pay"
            $0.tool.kind = "http"
            $0.tool.host = host
            $0.tool.sideEffects = "non_idempotent"
            $0.tool.arguments = .with { $0.text = "{\"amount\": \(amount)}" }
        }
    }

    @Test("apply makes versions, get shows the rules, list, versions, delete, and each change is audited", arguments: TestBackend.all)
    func definitions(backend: TestBackend) async throws {
        try await TestCluster.run(backend: backend) { cluster in
            let project = try await Self.project(cluster)
            let first = try await Self.apply(cluster, project, Self.payments)
            try #require(first.status == 200, "\(first.text)")
            #expect(first.json["created"] as? Bool == true)
            let policy = try #require(first.json["policy"] as? [String: Any])
            let id = try #require(policy["id"] as? String)
            #expect(id.hasPrefix("pol_"))
            #expect(policy["defaultEffect"] as? String == "allow")
            #expect(policy["points"] as? [String] == ["tool.invoke"])
            let rules = try #require(policy["rules"] as? [[String: Any]])
            #expect(rules.map { $0["name"] as? String } == ["large-payment", "blocked-host", "known-tools"])
            #expect(rules.map { $0["effect"] as? String } == ["require_approval", "deny", "allow"])

            let same = try await Self.apply(cluster, project, Self.payments)
            #expect(same.json["changed"] as? Bool != true)
            let changed = try await Self.apply(cluster, project, Self.payments.replacingOccurrences(of: "> 100", with: "> 500"))
            #expect((changed.json["policy"] as? [String: Any])?["latestVersion"] as? Int == 2)

            let got = try await cluster.http.send(.GET, "\(project.base)/policies/payments", token: project.token)
            #expect(((got.json["rules"] as? [[String: Any]])?.first?["when"] as? String)?.contains("> 500") == true)
            let listed = try await cluster.http.send(.GET, "\(project.base)/policies", token: project.token)
            #expect((listed.json["policies"] as? [[String: Any]])?.compactMap { $0["name"] as? String } == ["payments"])
            let versions = try await cluster.http.send(.GET, "\(project.base)/policies/payments/versions", token: project.token)
            #expect((versions.json["versions"] as? [[String: Any]])?.compactMap { $0["version"] as? Int } == [2, 1])
            let v1 = try await cluster.http.send(.GET, "\(project.base)/policies/\(id)/versions/1", token: project.token)
            #expect((v1.json["source"] as? String)?.contains("> 100") == true)

            #expect(try await cluster.http.send(.DELETE, "\(project.base)/policies/payments", token: project.token).status == 200)
            #expect(try await cluster.http.send(.GET, "\(project.base)/policies/\(id)", token: project.token).status == 404)
            #expect(try await cluster.http.send(.DELETE, "\(project.base)/policies/payments", token: project.token).status == 404)
            let audited = try await cluster.http.send(.GET, "\(project.base)/audit-events", token: project.token)
            let actions = (audited.json["events"] as? [[String: Any]] ?? []).compactMap { $0["action"] as? String }.filter { $0.hasPrefix("policy.") }
            #expect(actions == ["policy.delete", "policy.update", "policy.create"])
        }
    }

    @Test("rules are checked when written: syntax, unknown names, wrong types, non-bool conditions, effects and points, each with line and column", arguments: TestBackend.all)
    func writeTimeChecks(backend: TestBackend) async throws {
        try await TestCluster.run(backend: backend) { cluster in
            let project = try await Self.project(cluster)
            func problems(_ source: String) async throws -> [[String: Any]] {
                let reply = try await cluster.http.send(.POST, "\(project.base)/policies/validate", token: project.token, json: ["source": source])
                try #require(reply.status == 200, "\(reply.text)")
                #expect(reply.json["valid"] as? Bool != true)
                let refused = try await Self.apply(cluster, project, source)
                #expect(refused.status == 400)
                #expect(refused.errorField == "source")
                return reply.json["problems"] as? [[String: Any]] ?? []
            }
            func rule(_ when: String, effect: String = "deny") -> String {
                "policy: p\nrules:\n  - name: r\n    effect: \(effect)\n    when: \(when)\n"
            }
            let syntax = try await problems(rule("tool.name == "))
            #expect(syntax.first?["field"] as? String == "rules[0].when")
            #expect(syntax.first?["line"] as? Int == 5)
            let unknown = try await problems(rule("tool.nme == \"pay\""))
            #expect(unknown.first?["line"] as? Int == 5)
            #expect(unknown.first?["column"] as? Int == 16)
            #expect((unknown.first?["message"] as? String)?.contains("did you mean \"name\"") == true)
            let root = try await problems(rule("tols.name == \"pay\""))
            #expect((root.first?["message"] as? String)?.contains("unknown name \"tols\"") == true)
            let compared = try await problems(rule("tool.cost_micros == \"100\""))
            #expect((compared.first?["message"] as? String)?.contains("compares a int and a string") == true)
            let ordered = try await problems(rule("tool.name > 3"))
            #expect((ordered.first?["message"] as? String)?.contains("does not compare") == true)
            let notBool = try await problems(rule("tool.cost_micros + 1"))
            #expect((notBool.first?["message"] as? String)?.contains("must be a bool, not a int") == true)
            let effect = try await problems(rule("true", effect: "block"))
            #expect(effect.first?["field"] as? String == "rules[0].effect")
            #expect(effect.first?["line"] as? Int == 4)
            let point = try await problems("policy: p\npoints: [tool.invok]\nrules:\n  - { name: r, effect: deny }\n")
            #expect((point.first?["message"] as? String)?.contains("did you mean \"tool.invoke\"") == true)
            let duplicate = try await problems("policy: p\nrules:\n  - { name: r, effect: deny }\n  - { name: r, effect: allow }\n")
            #expect(duplicate.first?["field"] as? String == "rules[1].name")
            let narrower = try await problems("policy: p\npoints: [llm.call]\nrules:\n  - { name: r, effect: deny, points: [tool.invoke] }\n")
            #expect(narrower.first?["field"] as? String == "rules[0].points")
            let empty = try await problems("policy: p\nrules: []\n")
            #expect(empty.first?["field"] as? String == "rules")

            // 10,000 rules: over the documented limit of 1,000, refused with the limit named.
            let many = "policy: huge\nrules:\n" + (0 ..< 10_000).map { "  - { name: r\($0), effect: deny, when: 'tool.name == \"t\($0)\"' }" }.joined(separator: "\n")
            let huge = try await Self.apply(cluster, project, many)
            #expect(huge.status == 400)
            #expect(huge.errorMessage?.contains("at most 1000") == true)
            // Nothing was stored by any refusal.
            let listed = try await cluster.http.send(.GET, "\(project.base)/policies", token: project.token)
            #expect((listed.json["policies"] as? [[String: Any]])?.isEmpty != false)
        }
    }

    @Test("deny wins over require_approval over allow; each non-allow is a violation with its context and the policy version", arguments: TestBackend.all)
    func decisions(backend: TestBackend) async throws {
        try await TestCluster.run(backend: backend) { cluster in
            let project = try await Self.project(cluster)
            try #require(try await Self.apply(cluster, project, Self.payments).status == 200)

            let small = try await Self.evaluate(cluster, project, point: "tool.invoke", Self.payment(20))
            #expect(small.effect == "allow")
            #expect(small.decidedBy.map(\.rule) == ["known-tools"])
            #expect(small.violationID.isEmpty)

            let large = try await Self.evaluate(cluster, project, point: "tool.invoke", Self.payment(250))
            #expect(large.effect == "require_approval")
            #expect(large.decidedBy.map(\.rule) == ["large-payment"])
            #expect(large.message == "payments/large-payment: Payments above 100 need an approver.")
            #expect(large.matches.map(\.rule) == ["large-payment", "known-tools"])
            #expect(large.policies.map(\.version) == [1])
            #expect(large.violationID.hasPrefix("viol_"))

            let both = try await Self.evaluate(cluster, project, point: "tool.invoke", Self.payment(250, host: "pay.evil.example"))
            #expect(both.effect == "deny")
            #expect(both.decidedBy.map(\.rule) == ["blocked-host"])
            #expect(both.matches.map(\.effect) == ["require_approval", "deny", "allow"])

            // The policy applies at tool.invoke only: at llm.call nothing applies, and the service's default allows.
            let elsewhere = try await Self.evaluate(cluster, project, point: "llm.call", Self.payment(250))
            #expect(elsewhere.effect == "allow")
            #expect(elsewhere.policies.isEmpty)

            // A new version decides from then on, and the decision names it.
            try #require(try await Self.apply(cluster, project, Self.payments.replacingOccurrences(of: "> 100", with: "> 1000")).status == 200)
            let after = try await Self.evaluate(cluster, project, point: "tool.invoke", Self.payment(250))
            #expect(after.effect == "allow")
            #expect(after.policies.map(\.version) == [2])

            let violations = try await cluster.http.send(.GET, "\(project.base)/violations", token: project.token)
            let listed = try #require(violations.json["violations"] as? [[String: Any]])
            #expect(listed.compactMap { $0["effect"] as? String } == ["deny", "require_approval"])
            #expect(listed.compactMap { $0["id"] as? String } == [both.violationID, large.violationID])
            let denied = try await cluster.http.send(.GET, "\(project.base)/violations?effect=deny", token: project.token)
            #expect((denied.json["violations"] as? [[String: Any]])?.count == 1)
            let one = try await cluster.http.send(.GET, "\(project.base)/violations/\(large.violationID)", token: project.token)
            try #require(one.status == 200, "\(one.text)")
            let context = try #require(one.json["context"] as? [String: Any])
            #expect(((context["tool"] as? [String: Any])?["arguments"] as? [String: Any])?["amount"] as? Int == 250)
            #expect((context["principal"] as? [String: Any])?["kind"] as? String == "user")
            let decision = try #require(one.json["decision"] as? [String: Any])
            #expect(((decision["policies"] as? [[String: Any]])?.first)?["version"] as? Int == 1)
        }
    }

    @Test("defaults, global policies, the principal's role filled in, time rules, and conditions that fail closed", arguments: TestBackend.all)
    func globalDefaultsAndErrors(backend: TestBackend) async throws {
        try await TestCluster.run(backend: backend, overrides: ["policy.timeZone": "Europe/Paris"]) { cluster in
            let project = try await Self.project(cluster)
            // A global policy, written by the global administrator, applies to every project.
            let global = try await cluster.http.send(.POST, "/api/v1/policies/apply", token: project.token, json: ["source": """
                policy: owners-only-for-gpt
                points: [llm.call]
                default: allow
                rules:
                  - name: big-model
                    effect: deny
                    when: model.name.startsWith("gpt-5") && principal.role != "owner"
                    message: Only owners may call gpt-5 models.
                """])
            try #require(global.status == 200, "\(global.text)")
            #expect((global.json["policy"] as? [String: Any])?["projectId"] as? String == nil)
            let owner = try await Self.evaluate(cluster, project, point: "llm.call", .with { $0.model.name = "gpt-5-large" })
            #expect(owner.effect == "allow")
            #expect(owner.policies.first?.global == true)

            // A default-deny policy: only what a rule allows passes; an allow rule that fails to
            // evaluate does not allow, and a deny rule that fails to evaluate denies.
            try #require(try await Self.apply(cluster, project, """
                policy: strict
                default: deny
                points: [tool.invoke]
                rules:
                  - name: search-only
                    effect: allow
                    when: tool.name == "search" && int(tool.arguments.limit) < 50
                  - name: no-nights
                    effect: deny
                    when: time.hour < 6
                """).status == 200)
            let allowed = try await Self.evaluate(cluster, project, point: "tool.invoke", .with {
                $0.tool.name = "search"
                $0.tool.arguments = .with { $0.text = #"{"limit": 10}"# }
            })
            let hour = Calendar.current.dateComponents(in: TimeZone(identifier: "Europe/Paris")!, from: Date()).hour ?? 12
            #expect(allowed.effect == (hour < 6 ? "deny" : "allow"))
            let broken = try await Self.evaluate(cluster, project, point: "tool.invoke", .with {
                $0.tool.name = "search"
                $0.tool.arguments = .with { $0.text = #"{"limit": "lots"}"# }
            })
            #expect(broken.effect == "deny")
            #expect(broken.matches.first?.error.isEmpty == false)
            #expect(broken.decidedBy.contains { $0.rule.isEmpty && $0.policyName == "strict" } || hour < 6)

            // Non-admins may read the global policies, never change them.
            let userToken = try await Self.memberToken(cluster, project, role: "ROLE_ADMIN", email: "project-admin@example.com")
            #expect(try await cluster.http.send(.GET, "/api/v1/policies", token: userToken).status == 200)
            let refused = try await cluster.http.send(.POST, "/api/v1/policies/apply", token: userToken, json: ["source": "policy: x\nrules:\n  - { name: r, effect: deny }\n"])
            #expect(refused.status == 403)
            #expect(try await cluster.http.send(.DELETE, "/api/v1/policies/owners-only-for-gpt", token: userToken).status == 403)
            // A project administrator is not an owner: the global rule, reading the role the
            // policy service looked up, denies them the big model.
            let me = try await cluster.http.send(.GET, "/api/v1/users/me", token: userToken)
            let userID = try #require(me.json["id"] as? String)
            let admin = try await cluster.withPeer(.policy, as: .agent) { client in
                try await Sparkops_Policy_V1_PolicyService.Client(wrapping: client).evaluate(
                    .with {
                        $0.projectID = project.id
                        $0.point = "llm.call"
                        $0.context = .with { $0.model.name = "gpt-5-large" }
                    },
                    metadata: Sparkops_Common_V1_Principal.with {
                        $0.kind = .user
                        $0.id = userID
                        $0.userID = userID
                    }.metadata
                ).decision
            }
            #expect(admin.effect == "deny")
            #expect(admin.message == "owners-only-for-gpt/big-model: Only owners may call gpt-5 models.")
        }
    }

    static func memberToken(_ cluster: TestCluster, _ project: Project, role: String, email: String) async throws -> String {
        let userID = try await cluster.createUser(email, adminToken: project.token)
        let added = try await cluster.http.send(.POST, "\(project.base)/members", token: project.token, json: ["userId": userID, "role": role])
        try #require(added.status == 200 || added.status == 201, "\(added.text)")
        return try #require(try await cluster.login(email: email, password: "user-password-123")["accessToken"] as? String)
    }

    @Test("the dry run decides on a policy that is not saved, beside the saved ones or alone, at a given time, and stores nothing", arguments: TestBackend.all)
    func dryRun(backend: TestBackend) async throws {
        try await TestCluster.run(backend: backend) { cluster in
            let project = try await Self.project(cluster)
            try #require(try await Self.apply(cluster, project, Self.payments).status == 200)
            let weekend = """
                policy: weekends
                points: [tool.invoke, run.create]
                rules:
                  - name: no-weekend-payments
                    effect: deny
                    when: time.weekday in ["saturday", "sunday"] && tool.name == "pay"
                    message: No payments at weekends.
                """
            let context: [String: Any] = ["tool": ["name": "pay", "arguments": ["amount": 20]]]
            func test(_ body: [String: Any]) async throws -> [String: Any] {
                let reply = try await cluster.http.send(.POST, "\(project.base)/policies/test", token: project.token, json: body)
                try #require(reply.status == 200, "\(reply.text)")
                return reply.json
            }
            let saturday = try await test(["point": "tool.invoke", "context": context, "source": weekend, "time": "2026-12-05T10:00:00Z"])
            let decision = try #require(saturday["decision"] as? [String: Any])
            #expect(decision["effect"] as? String == "deny")
            #expect(decision["message"] as? String == "weekends/no-weekend-payments: No payments at weekends.")
            #expect(((saturday["environment"] as? [String: Any])?["time"] as? [String: Any])?["weekday"] as? String == "saturday")
            let monday = try await test(["point": "tool.invoke", "context": context, "source": weekend, "time": "2026-12-07T10:00:00Z"])
            #expect((monday["decision"] as? [String: Any])?["effect"] as? String == "allow")
            // Beside the saved payments policy, a large payment on a Monday is held.
            let held = try await test([
                "point": "tool.invoke", "context": ["tool": ["name": "pay", "arguments": ["amount": 500]]], "source": weekend, "withSaved": true,
                "time": "2026-12-07T10:00:00Z",
            ])
            let heldDecision = try #require(held["decision"] as? [String: Any])
            #expect(heldDecision["effect"] as? String == "require_approval")
            #expect((heldDecision["policies"] as? [[String: Any]])?.compactMap { $0["name"] as? String } == ["payments", "weekends"])
            #expect((heldDecision["violationId"] as? String ?? "").isEmpty)
            // Saved policies alone.
            let saved = try await test(["point": "tool.invoke", "context": ["tool": ["name": "pay", "arguments": ["amount": 500]]]])
            #expect((saved["decision"] as? [String: Any])?["effect"] as? String == "require_approval")
            // A dry run stores no violation and no policy.
            let violations = try await cluster.http.send(.GET, "\(project.base)/violations", token: project.token)
            #expect((violations.json["violations"] as? [[String: Any]])?.isEmpty != false)
            let listed = try await cluster.http.send(.GET, "\(project.base)/policies", token: project.token)
            #expect((listed.json["policies"] as? [[String: Any]])?.count == 1)
            // A broken policy in a dry run: the same checks as a write.
            let bad = try await cluster.http.send(.POST, "\(project.base)/policies/test", token: project.token, json: ["point": "tool.invoke", "source": "policy: x\nrules:\n  - { name: r, effect: deny, when: 'tool.nope' }\n"])
            #expect(bad.status == 400)
            #expect(bad.errorField == "source")
            #expect(bad.errorMessage?.contains("3:") == true)
        }
    }

    @Test("bad input: points, oversized context fields, roles, other projects, and a policy of 1,000 rules evaluates within its bounds", arguments: TestBackend.all)
    func badInput(backend: TestBackend) async throws {
        try await TestCluster.run(backend: backend) { cluster in
            let project = try await Self.project(cluster)
            try #require(try await Self.apply(cluster, project, Self.payments).status == 200)
            func dry(_ body: [String: Any], token: String? = nil, project other: String? = nil) async throws -> HTTPTestClient.Reply {
                try await cluster.http.send(.POST, "/api/v1/projects/\(other ?? project.id)/policies/test", token: token ?? project.token, json: body)
            }
            let noPoint = try await dry(["context": [:] as [String: Any]])
            #expect(noPoint.status == 400)
            #expect(noPoint.errorField == "point")
            #expect(try await dry(["point": "tool.call"]).errorMessage?.contains("known: run.create") == true)
            let big = String(repeating: "x", count: 70_000)
            let tooLarge = try await dry(["point": "tool.invoke", "context": ["tool": ["name": "pay", "arguments": ["blob": big]]]])
            #expect(tooLarge.status == 400)
            #expect(tooLarge.errorField == "context.tool.arguments")
            let longName = try await dry(["point": "tool.invoke", "context": ["tool": ["name": String(repeating: "n", count: 2000)]]])
            #expect(longName.errorField == "context.tool.name")
            let negative = try await dry(["point": "llm.call", "context": ["estimatedCostMicros": -5]])
            #expect(negative.errorField == "context.estimatedCostMicros")
            let labels = try await dry(["point": "llm.call", "context": ["labels": Dictionary(uniqueKeysWithValues: (0 ..< 40).map { ("k\($0)", "v") })]])
            #expect(labels.errorField == "context.labels")
            // The same limits over SparkWire, as the enforcing services call it.
            await #expect(throws: RPCError.self) {
                _ = try await Self.evaluate(cluster, project, point: "tool.invoke", .with {
                    $0.tool.arguments = Sparkops_Common_V1_Json(.string(big))
                })
            }
            // Text that is not JSON is refused over SparkWire, naming the field.
            do {
                _ = try await Self.evaluate(cluster, project, point: "tool.invoke", .with {
                    $0.tool.arguments = .with { $0.text = "{\"amount\": 12" }
                })
                Issue.record("arguments that are not JSON were taken")
            } catch let error as RPCError {
                #expect(error.code == .invalidArgument)
                #expect(error.message.hasPrefix("context.tool.arguments: is not JSON"))
            }
            await #expect(throws: RPCError.self) {
                _ = try await Self.evaluate(cluster, project, point: "step.begin", .init())
            }

            // Roles: a viewer reads and tests, never writes.
            let viewer = try await Self.memberToken(cluster, project, role: "ROLE_VIEWER", email: "viewer@example.com")
            #expect(try await cluster.http.send(.GET, "\(project.base)/policies", token: viewer).status == 200)
            #expect(try await dry(["point": "tool.invoke"], token: viewer).status == 200)
            #expect(try await cluster.http.send(.POST, "\(project.base)/policies/apply", token: viewer, json: ["source": Self.payments]).status == 403)
            #expect(try await cluster.http.send(.DELETE, "\(project.base)/policies/payments", token: viewer).status == 403)

            // Another project's policies and violations are not found, whoever asks.
            let outsiderID = try await cluster.createUser("outsider@example.com", adminToken: project.token)
            _ = outsiderID
            let outsider = try #require(try await cluster.login(email: "outsider@example.com", password: "user-password-123")["accessToken"] as? String)
            let theirs = try await cluster.createProject("theirs", token: outsider)
            #expect(try await cluster.http.send(.GET, "\(project.base)/policies/payments", token: outsider).status == 404)
            #expect(try await cluster.http.send(.GET, "\(project.base)/violations", token: outsider).status == 404)
            #expect(try await cluster.http.send(.GET, "/api/v1/projects/\(theirs)/policies/payments", token: outsider).status == 404)
            let held = try await Self.evaluate(cluster, project, point: "tool.invoke", Self.payment(500))
            #expect(try await cluster.http.send(.GET, "/api/v1/projects/\(theirs)/violations/\(held.violationID)", token: outsider).status == 404)
            #expect(try await cluster.http.send(.GET, "\(project.base)/violations/viol_nope", token: project.token).errorField == "violationId")

            // A policy at the limit: 1,000 rules, the last one matching; the decision is exact.
            let thousand = "policy: long\npoints: [tool.invoke]\nrules:\n" + (0 ..< 1000).map { "  - { name: r\($0), effect: deny, when: 'tool.name == \"t\($0)\" && tool.cost_micros > \($0)' }" }.joined(separator: "\n")
            try #require(try await Self.apply(cluster, project, thousand).status == 200)
            let started = ContinuousClock.now
            let last = try await Self.evaluate(cluster, project, point: "tool.invoke", .with {
                $0.tool.name = "t999"
                $0.tool.costMicros = 5000
            })
            print("policy: a decision over 1,003 rules took \(ContinuousClock.now - started) (first call, policies compiled)")
            #expect(last.effect == "deny")
            #expect(last.decidedBy.map(\.rule) == ["r999"])
        }
    }

    @Test("the tool service asks before every call: a deny is 403 naming the rule, a hold returns the approval and runs nothing", arguments: TestBackend.all)
    func toolEnforcement(backend: TestBackend) async throws {
        try await TestCluster.run(backend: backend) { cluster in
            let project = try await Self.project(cluster)
            for tool in ["pay", "blocked"] {
                let applied = try await cluster.http.send(.POST, "\(project.base)/tools/apply", token: project.token, json: [
                    "source": "tool: \(tool)\nkind: echo\nside_effects: non_idempotent\ncost_micros: 700\n",
                ])
                try #require(applied.status == 200, "\(applied.text)")
            }
            try #require(try await Self.apply(cluster, project, Self.payments).status == 200)
            try #require(try await Self.apply(cluster, project, """
                policy: blocklist
                rules:
                  - name: no-blocked
                    effect: deny
                    when: tool.name == "blocked" && tool.side_effects == "non_idempotent" && tool.cost_micros == 700 && principal.kind == "user"
                    message: The blocked tool may not run.
                """).status == 200)
            func invoke(_ tool: String, _ input: [String: Any]) async throws -> HTTPTestClient.Reply {
                try await cluster.http.send(.POST, "\(project.base)/tools/\(tool)/invoke", token: project.token, json: ["input": input])
            }
            let small = try await invoke("pay", ["amount": 20])
            try #require(small.status == 200, "\(small.text)")
            #expect((small.json["output"] as? [String: Any])?["amount"] as? Int == 20)
            #expect(small.json["approval"] == nil)

            let large = try await invoke("pay", ["amount": 250])
            try #require(large.status == 200, "\(large.text)")
            #expect((large.json["error"] as? [String: Any])?["reason"] as? String == "approval_required")
            #expect(large.json["output"] == nil)
            #expect(large.json["invocationId"] == nil)
            let approval = try #require(large.json["approval"] as? [String: Any])
            #expect(approval["tool"] as? String == "pay")
            #expect(approval["rule"] as? String == "payments/large-payment")
            #expect(approval["message"] as? String == "Payments above 100 need an approver.")
            #expect((approval["argumentsDigest"] as? String)?.hasPrefix("sha256:") == true)
            let violationID = try #require(approval["violationId"] as? String)
            // The same arguments, the same digest; other arguments, another.
            let again = try await invoke("pay", ["amount": 250])
            #expect((again.json["approval"] as? [String: Any])?["argumentsDigest"] as? String == approval["argumentsDigest"] as? String)
            let other = try await invoke("pay", ["amount": 251])
            #expect((other.json["approval"] as? [String: Any])?["argumentsDigest"] as? String != approval["argumentsDigest"] as? String)

            let denied = try await invoke("blocked", ["x": 1])
            #expect(denied.status == 403)
            #expect(denied.errorMessage?.contains("blocklist/no-blocked: The blocked tool may not run.") == true)

            let violation = try await cluster.http.send(.GET, "\(project.base)/violations/\(violationID)", token: project.token)
            #expect(violation.json["point"] as? String == "tool.invoke")
            #expect(((violation.json["context"] as? [String: Any])?["tool"] as? [String: Any])?["side_effects"] as? String == "non_idempotent")
            let listed = try await cluster.http.send(.GET, "\(project.base)/violations?point=tool.invoke", token: project.token)
            #expect((listed.json["violations"] as? [[String: Any]])?.compactMap { $0["effect"] as? String } == ["deny", "require_approval", "require_approval", "require_approval"])
        }
    }
}
