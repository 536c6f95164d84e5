import Foundation
import NIOHTTP1
import SparkKit
import SparkTesting
import Testing

/// The run service through the gateway, on every backend: runs start, execute their steps
/// durably, wait for humans, and refuse what does not make sense.
@Suite("Run API")
struct RunAPITests {
    static let threeSteps = """
        name: three
        inputs: { word: { type: string, required: true }, times: { type: integer, default: 2 } }
        steps:
          - id: a
            tool: echo
            with: { said: "${{ inputs.word }}" }
          - id: b
            tool: echo
            needs: [a]
            with: { said: "${{ steps.a.output.said }}!", times: "${{ inputs.times }}" }
          - id: c
            tool: echo
            needs: [b]
            when: "${{ inputs.times > 5 }}"
        outputs: { last: "${{ steps.b.output.said }}" }
        """

    static let reviewed = """
        name: reviewed
        steps:
          - id: draft
            tool: echo
            with: { text: draft }
          - id: review
            approval: { approvers: [editor], message: "Publish ${{ steps.draft.output.text }}?" }
            needs: [draft]
          - id: publish
            tool: echo
            needs: [review]
            with: { by: "${{ steps.review.output.by }}" }
        """

    /// A project with the echo tool and the workflows above.
    static func project(_ cluster: TestCluster, _ token: String, name: String = "runs") async throws -> String {
        let project = try await cluster.createProject(name, token: token)
        let tool = try await cluster.http.send(.POST, "/api/v1/projects/\(project)/tools/apply", token: token, json: ["source": "tool: echo\nkind: echo"])
        try #require(tool.status == 200, "\(tool.text)")
        for source in [Self.threeSteps, Self.reviewed] {
            let applied = try await cluster.http.send(.POST, "/api/v1/projects/\(project)/workflows/apply", token: token, json: ["source": source])
            try #require(applied.status == 200, "\(applied.text)")
        }
        return project
    }

    /// Reads the run until its status is final (which never changes again), within `seconds`.
    static func finished(_ cluster: TestCluster, _ token: String, project: String, run: String, seconds: Double = 90) async throws -> [String: Any] {
        let deadline = Date().addingTimeInterval(seconds)
        var last: [String: Any] = [:]
        while Date() < deadline {
            last = try await cluster.http.send(.GET, "/api/v1/projects/\(project)/runs/\(run)", token: token).json
            if let status = last["status"] as? String, ["succeeded", "failed", "cancelled", "rejected", "timed_out"].contains(status) { return last }
            try await Task.sleep(for: .milliseconds(100))
        }
        Issue.record("run \(run) did not finish in \(seconds) s: \(last)")
        return last
    }

    /// Reads until `condition` holds of the run (for states that last until a human acts).
    static func until(_ cluster: TestCluster, _ token: String, project: String, run: String, seconds: Double = 90, _ condition: ([String: Any]) -> Bool) async throws -> [String: Any] {
        let deadline = Date().addingTimeInterval(seconds)
        var last: [String: Any] = [:]
        while Date() < deadline {
            last = try await cluster.http.send(.GET, "/api/v1/projects/\(project)/runs/\(run)", token: token).json
            if condition(last) { return last }
            try await Task.sleep(for: .milliseconds(100))
        }
        Issue.record("run \(run) did not reach the state in \(seconds) s: \(last)")
        return last
    }

    static func steps(_ run: [String: Any]) -> [String: [String: Any]] {
        Dictionary(uniqueKeysWithValues: (run["steps"] as? [[String: Any]] ?? []).map { ($0["id"] as? String ?? "", $0) })
    }

    @Test("a run of three echo steps: queued, then each step in order, outputs, a skipped step, and every event once in sequence", arguments: TestBackend.all)
    func threeStepRun(backend: TestBackend) async throws {
        try await TestCluster.run(backend: backend) { cluster in
            let admin = try await cluster.adminToken()
            let project = try await Self.project(cluster, admin)
            let created = try await cluster.http.send(.POST, "/api/v1/projects/\(project)/runs", token: admin, json: ["workflow": "three", "inputs": ["word": "hi"]])
            try #require(created.status == 201, "\(created.text)")
            let run = try #require(created.json["run"] as? [String: Any])
            let id = try #require(run["id"] as? String)
            #expect(id.hasPrefix("run_"))
            #expect(run["status"] as? String == "queued")
            #expect(run["workflowVersion"] as? Int == 1)
            #expect((run["inputs"] as? [String: Any])?["times"] as? Int == 2, "the default is filled in")

            let done = try await Self.finished(cluster, admin, project: project, run: id)
            #expect(done["status"] as? String == "succeeded", "\(done)")
            #expect((done["outputs"] as? [String: Any])?["last"] as? String == "hi!")
            let steps = Self.steps(done)
            #expect(steps["a"]?["status"] as? String == "succeeded")
            #expect((steps["b"]?["output"] as? [String: Any])?["said"] as? String == "hi!")
            #expect((steps["b"]?["output"] as? [String: Any])?["times"] as? Int == 2)
            #expect(steps["c"]?["status"] as? String == "skipped")
            let attempts = try #require(steps["a"]?["attempts"] as? [[String: Any]])
            #expect(attempts.count == 1)
            #expect(attempts.first?["idempotencyKey"] as? String == "\(id)/a/1")
            #expect(attempts.first?["status"] as? String == "succeeded")
            #expect(done["startTime"] != nil && done["endTime"] != nil)

            let events = try await cluster.http.send(.GET, "/api/v1/projects/\(project)/events?runId=\(id)", token: admin)
            try #require(events.status == 200, "\(events.text)")
            let list = try #require(events.json["events"] as? [[String: Any]])
            let kinds = list.map { "\($0["kind"] as? String ?? "")\(($0["stepId"] as? String).map { " \($0)" } ?? "")" }
            #expect(kinds == [
                "run.created", "run.queued", "run.running", "step.ready a", "step.running a", "step.succeeded a", "step.ready b",
                "step.running b", "step.succeeded b", "step.skipped c", "run.succeeded",
            ], "\(kinds)")
            let sequences = list.compactMap { ($0["sequence"] as? String).flatMap(Int64.init) }
            #expect(sequences == Array(1 ... Int64(list.count)), "per project, without gaps: \(sequences)")
            // From a sequence number on, nothing before it.
            let after = try await cluster.http.send(.GET, "/api/v1/projects/\(project)/events?afterSequence=9", token: admin)
            #expect((after.json["events"] as? [[String: Any]])?.compactMap { $0["sequence"] as? String } == ["10", "11"])

            let listed = try await cluster.http.send(.GET, "/api/v1/projects/\(project)/runs?status=succeeded&workflow=three", token: admin)
            #expect((listed.json["runs"] as? [[String: Any]])?.compactMap { $0["id"] as? String } == [id], "\(listed.text)")
            let none = try await cluster.http.send(.GET, "/api/v1/projects/\(project)/runs?status=failed", token: admin)
            #expect((none.json["runs"] as? [[String: Any]] ?? []).isEmpty)
        }
    }

    @Test(
        "a worker starts the step its commit dispatches in that commit; with run.takeOver false the step waits for a claim",
        arguments: TestBackend.all.flatMap { backend in [true, false].map { (backend, $0) } }
    )
    func takeOver(backend: TestBackend, takeOver: Bool) async throws {
        try await TestCluster.run(backend: backend, overrides: ["run.takeOver": "\(takeOver)"]) { cluster in
            let admin = try await cluster.adminToken()
            let project = try await Self.project(cluster, admin)
            let created = try await cluster.http.send(.POST, "/api/v1/projects/\(project)/runs", token: admin, json: ["workflow": "three", "inputs": ["word": "hi", "times": 9]])
            let id = try #require((created.json["run"] as? [String: Any])?["id"] as? String, "\(created.text)")
            let done = try await Self.finished(cluster, admin, project: project, run: id)
            #expect(done["status"] as? String == "succeeded", "\(done)")
            #expect(Self.steps(done).values.allSatisfy { ($0["attempts"] as? [[String: Any]])?.count == 1 }, "one attempt per step: \(done)")

            var list = try await cluster.http.send(.GET, "/api/v1/projects/\(project)/events?runId=\(id)", token: admin).json["events"] as? [[String: Any]] ?? []
            // RFC 3339 with up to nine digits of fraction, in microseconds since 1970.
            func time(_ kind: String, _ step: String) -> Int64? {
                guard let text = list.first(where: { $0["kind"] as? String == kind && $0["stepId"] as? String == step })?["time"] as? String,
                    text.hasSuffix("Z")
                else { return nil }
                let parts = text.dropLast().split(separator: ".", maxSplits: 1)
                guard let whole = ISO8601DateFormatter().date(from: "\(parts[0])Z") else { return nil }
                let digits = parts.count > 1 ? String(parts[1]) : ""
                let micros = Int64((digits + "000000").prefix(6)) ?? 0
                return Int64(whole.timeIntervalSince1970) * 1_000_000 + micros
            }
            // A transaction stamps its events with one time; another transaction, later, another.
            for (need, step) in [("a", "b"), ("b", "c")] {
                let succeeded = try #require(time("step.succeeded", need), "\(list)")
                let running = try #require(time("step.running", step), "\(list)")
                if takeOver {
                    #expect(running == succeeded, "\(step) started in the commit of \(need)'s end")
                } else {
                    #expect(running > succeeded, "\(step) started in a transaction of its own, after a claim")
                }
            }

            // Fan-out and fan-in: of the two steps a's end makes ready, the worker takes one and
            // the other is queued for a claim; d starts in the commit of whichever of b and c ends last.
            let diamond = """
                name: diamond
                steps:
                  - { id: a, tool: echo }
                  - { id: b, tool: echo, needs: [a] }
                  - { id: c, tool: echo, needs: [a] }
                  - { id: d, tool: echo, needs: [b, c] }
                """
            let applied = try await cluster.http.send(.POST, "/api/v1/projects/\(project)/workflows/apply", token: admin, json: ["source": diamond])
            try #require(applied.status == 200, "\(applied.text)")
            let fan = try await cluster.http.send(.POST, "/api/v1/projects/\(project)/runs", token: admin, json: ["workflow": "diamond"])
            let fanID = try #require((fan.json["run"] as? [String: Any])?["id"] as? String, "\(fan.text)")
            let fanDone = try await Self.finished(cluster, admin, project: project, run: fanID)
            #expect(fanDone["status"] as? String == "succeeded", "\(fanDone)")
            list = try await cluster.http.send(.GET, "/api/v1/projects/\(project)/events?runId=\(fanID)", token: admin).json["events"] as? [[String: Any]] ?? []
            let aDone = try #require(time("step.succeeded", "a"), "\(list)")
            let bRunning = try #require(time("step.running", "b"), "\(list)")
            let cRunning = try #require(time("step.running", "c"), "\(list)")
            let lastOfBC = max(try #require(time("step.succeeded", "b")), try #require(time("step.succeeded", "c")))
            let dRunning = try #require(time("step.running", "d"), "\(list)")
            if takeOver {
                #expect([bRunning, cRunning].filter { $0 == aDone }.count == 1, "one of b and c taken over: \(list)")
                #expect([bRunning, cRunning].filter { $0 > aDone }.count == 1, "the other claimed: \(list)")
                #expect(dRunning == lastOfBC, "d taken over by the last of b and c: \(list)")
            } else {
                #expect(bRunning > aDone && cRunning > aDone && dRunning > lastOfBC, "\(list)")
            }
        }
    }

    @Test("the same idempotency key returns the same run; with other inputs it is 409", arguments: TestBackend.all)
    func idempotency(backend: TestBackend) async throws {
        try await TestCluster.run(backend: backend) { cluster in
            let admin = try await cluster.adminToken()
            let project = try await Self.project(cluster, admin)
            let body: [String: Any] = ["workflow": "three", "inputs": ["word": "once"], "idempotencyKey": "order-42"]
            let first = try await cluster.http.send(.POST, "/api/v1/projects/\(project)/runs", token: admin, json: body)
            try #require(first.status == 201, "\(first.text)")
            let again = try await cluster.http.send(.POST, "/api/v1/projects/\(project)/runs", token: admin, json: body)
            #expect(again.status == 201)
            #expect(again.json["replayed"] as? Bool == true)
            let firstRun = try #require(first.json["run"] as? [String: Any])
            let againRun = try #require(again.json["run"] as? [String: Any])
            #expect(againRun["id"] as? String == firstRun["id"] as? String)
            #expect(againRun["status"] as? String == firstRun["status"] as? String, "the stored response, as it was")
            let other = try await cluster.http.send(.POST, "/api/v1/projects/\(project)/runs", token: admin, json: ["workflow": "three", "inputs": ["word": "twice"], "idempotencyKey": "order-42"])
            #expect(other.status == 409)
            #expect(other.errorField == "idempotencyKey" || other.errorField == "idempotency_key", "\(other.text)")
            let runs = try await cluster.http.send(.GET, "/api/v1/projects/\(project)/runs", token: admin)
            #expect((runs.json["runs"] as? [[String: Any]])?.count == 1)
        }
    }

    @Test("separation of duties: an approval step with exclude_starter refuses the run's starter, as a user or through their API key, and takes anyone else", arguments: TestBackend.all)
    func excludeStarter(backend: TestBackend) async throws {
        try await TestCluster.run(backend: backend) { cluster in
            let admin = try await cluster.adminToken()
            let project = try await Self.project(cluster, admin)
            let applied = try await cluster.http.send(.POST, "/api/v1/projects/\(project)/workflows/apply", token: admin, json: ["source": """
                name: four-eyes
                steps:
                  - id: review
                    approval: { approvers: [editor], message: "Ship it?", exclude_starter: true }
                """])
            try #require(applied.status == 200, "\(applied.text)")
            let bad = try await cluster.http.send(.POST, "/api/v1/projects/\(project)/workflows/validate", token: admin, json: ["source": "name: x\nsteps:\n  - id: r\n    approval: { exclude_starter: maybe }\n"])
            #expect((bad.json["problems"] as? [[String: Any]])?.first?["field"] as? String == "steps[0].approval.exclude_starter", "\(bad.text)")
            let editorID = try await cluster.createUser("second@runs.test", adminToken: admin)
            let added = try await cluster.http.send(.POST, "/api/v1/projects/\(project)/members", token: admin, json: ["userId": editorID, "role": "ROLE_EDITOR"])
            try #require(added.status == 200 || added.status == 201, "\(added.text)")
            let editor = try await cluster.login(email: "second@runs.test", password: "user-password-123")["accessToken"] as! String
            let key = try #require(try await cluster.http.send(.POST, "/api/v1/projects/\(project)/api-keys", token: admin, json: ["name": "starter-key", "role": "ROLE_ADMIN"]).json["key"] as? String)

            // Started by the administrator, refused to them and to their key; the editor decides.
            let created = try await cluster.http.send(.POST, "/api/v1/projects/\(project)/runs", token: admin, json: ["workflow": "four-eyes"])
            let id = try #require((created.json["run"] as? [String: Any])?["id"] as? String, "\(created.text)")
            _ = try await Self.until(cluster, admin, project: project, run: id) { Self.steps($0)["review"]?["status"] as? String == "awaiting_approval" }
            let approvalID = try #require((try await cluster.http.send(.GET, "/api/v1/projects/\(project)/approvals?runId=\(id)", token: admin).json["approvals"] as? [[String: Any]])?.first?["id"] as? String)
            let decide = "/api/v1/projects/\(project)/approvals/\(approvalID)/decide"
            for token in [admin, key] {
                let refused = try await cluster.http.send(.POST, decide, token: token, json: ["decision": "approve"])
                #expect(refused.status == 403, "\(refused.text)")
                #expect(refused.errorMessage?.contains("other than the person who started the run") == true, "\(refused.text)")
            }
            let approved = try await cluster.http.send(.POST, decide, token: editor, json: ["decision": "approve"])
            #expect(approved.status == 200, "\(approved.text)")
            #expect(try await Self.finished(cluster, admin, project: project, run: id)["status"] as? String == "succeeded")

            // Started through the key: its creator may not decide either.
            let keyed = try await cluster.http.send(.POST, "/api/v1/projects/\(project)/runs", token: key, json: ["workflow": "four-eyes"])
            let keyedID = try #require((keyed.json["run"] as? [String: Any])?["id"] as? String, "\(keyed.text)")
            _ = try await Self.until(cluster, admin, project: project, run: keyedID) { Self.steps($0)["review"]?["status"] as? String == "awaiting_approval" }
            let second = try #require((try await cluster.http.send(.GET, "/api/v1/projects/\(project)/approvals?runId=\(keyedID)", token: admin).json["approvals"] as? [[String: Any]])?.first?["id"] as? String)
            #expect(try await cluster.http.send(.POST, "/api/v1/projects/\(project)/approvals/\(second)/decide", token: admin, json: ["decision": "approve"]).status == 403)
            #expect(try await cluster.http.send(.POST, "/api/v1/projects/\(project)/approvals/\(second)/decide", token: editor, json: ["decision": "reject"]).status == 200)

            // A policy's require_approval rule with exclude_starter holds a call the same way.
            let policy = try await cluster.http.send(.POST, "/api/v1/projects/\(project)/policies/apply", token: admin, json: ["source": """
                policy: echo-four-eyes
                points: [tool.invoke]
                rules:
                  - { name: second-person, effect: require_approval, when: 'tool.name == "echo"', message: Someone else looks., exclude_starter: true }
                """])
            try #require(policy.status == 200, "\(policy.text)")
            let badRule = try await cluster.http.send(.POST, "/api/v1/projects/\(project)/policies/validate", token: admin, json: ["source": "policy: p\npoints: [tool.invoke]\nrules:\n  - { name: r, effect: deny, exclude_starter: true }\n"])
            #expect((badRule.json["problems"] as? [[String: Any]])?.first?["field"] as? String == "rules[0].exclude_starter", "\(badRule.text)")
            let held = try await cluster.http.send(.POST, "/api/v1/projects/\(project)/runs", token: admin, json: ["workflow": "three", "inputs": ["word": "x"]])
            let heldID = try #require((held.json["run"] as? [String: Any])?["id"] as? String, "\(held.text)")
            _ = try await Self.until(cluster, admin, project: project, run: heldID) { Self.steps($0).values.contains { $0["status"] as? String == "awaiting_approval" } }
            let hold = try #require((try await cluster.http.send(.GET, "/api/v1/projects/\(project)/approvals?runId=\(heldID)", token: admin).json["approvals"] as? [[String: Any]])?.first)
            #expect((hold["heldCall"] as? [String: Any])?["excludeStarter"] as? Bool == true, "\(hold)")
            let holdDecide = "/api/v1/projects/\(project)/approvals/\(hold["id"] as? String ?? "")/decide"
            let refusedHold = try await cluster.http.send(.POST, holdDecide, token: admin, json: ["decision": "approve"])
            #expect(refusedHold.status == 403, "\(refusedHold.text)")
            #expect(refusedHold.errorMessage?.contains("echo-four-eyes/second-person needs an approver other than the person who started the run") == true, "\(refusedHold.text)")
            #expect(try await cluster.http.send(.POST, holdDecide, token: editor, json: ["decision": "reject"]).status == 200)
        }
    }

    @Test("an approval step waits for a human of the named role; the decision is recorded and audited; deciding twice is 409", arguments: TestBackend.all)
    func approvalStep(backend: TestBackend) async throws {
        try await TestCluster.run(backend: backend) { cluster in
            let admin = try await cluster.adminToken()
            let project = try await Self.project(cluster, admin)
            var tokens: [String: (id: String, token: String)] = [:]
            for role in ["viewer", "approver"] {
                let email = "\(role)@runs.test"
                let id = try await cluster.createUser(email, adminToken: admin)
                let added = try await cluster.http.send(.POST, "/api/v1/projects/\(project)/members", token: admin, json: ["userId": id, "role": "ROLE_\(role.uppercased())"])
                try #require(added.status == 200 || added.status == 201, "\(added.text)")
                tokens[role] = (id, try await cluster.login(email: email, password: "user-password-123")["accessToken"] as! String)
            }
            let created = try await cluster.http.send(.POST, "/api/v1/projects/\(project)/runs", token: admin, json: ["workflow": "reviewed"])
            try #require(created.status == 201, "\(created.text)")
            let id = try #require((created.json["run"] as? [String: Any])?["id"] as? String)
            let waiting = try await Self.until(cluster, admin, project: project, run: id) { Self.steps($0)["review"]?["status"] as? String == "awaiting_approval" }
            #expect(waiting["status"] as? String == "running")

            let pending = try await cluster.http.send(.GET, "/api/v1/projects/\(project)/approvals", token: tokens["viewer"]!.token)
            let approvals = try #require(pending.json["approvals"] as? [[String: Any]], "\(pending.text)")
            try #require(approvals.count == 1)
            let approval = approvals[0]
            #expect(approval["message"] as? String == "Publish draft?")
            #expect(approval["stepId"] as? String == "review")
            let approvalID = try #require(approval["id"] as? String)
            let decide = "/api/v1/projects/\(project)/approvals/\(approvalID)/decide"

            let viewer = try await cluster.http.send(.POST, decide, token: tokens["viewer"]!.token, json: ["decision": "approve"])
            #expect(viewer.status == 403, "\(viewer.text)")
            // An approver is below the editor the step names.
            let approver = try await cluster.http.send(.POST, decide, token: tokens["approver"]!.token, json: ["decision": "approve"])
            #expect(approver.status == 403, "\(approver.text)")
            let bad = try await cluster.http.send(.POST, decide, token: admin, json: ["decision": "maybe"])
            #expect(bad.status == 400)
            #expect(bad.errorField == "decision")

            let approved = try await cluster.http.send(.POST, decide, token: admin, json: ["decision": "approve", "comment": "looks right"])
            try #require(approved.status == 200, "\(approved.text)")
            #expect(approved.json["status"] as? String == "approved")
            let twice = try await cluster.http.send(.POST, decide, token: admin, json: ["decision": "reject"])
            #expect(twice.status == 409, "\(twice.text)")

            let done = try await Self.finished(cluster, admin, project: project, run: id)
            #expect(done["status"] as? String == "succeeded", "\(done)")
            let review = Self.steps(done)["review"]?["output"] as? [String: Any]
            #expect(review?["approved"] as? Bool == true)
            #expect(review?["comment"] as? String == "looks right")
            let adminID = try #require(review?["by"] as? String)
            #expect((Self.steps(done)["publish"]?["output"] as? [String: Any])?["by"] as? String == adminID)

            let audit = try await cluster.http.send(.GET, "/api/v1/projects/\(project)/audit-events", token: admin)
            let actions = (audit.json["events"] as? [[String: Any]] ?? []).compactMap { $0["action"] as? String }
            #expect(actions.contains("approval.approve"), "\(actions)")
            #expect(actions.contains("run.create"))
        }
    }

    @Test("cancel stops a waiting run and closes its approval; cancelling it again is 409", arguments: TestBackend.all)
    func cancel(backend: TestBackend) async throws {
        try await TestCluster.run(backend: backend) { cluster in
            let admin = try await cluster.adminToken()
            let project = try await Self.project(cluster, admin)
            let created = try await cluster.http.send(.POST, "/api/v1/projects/\(project)/runs", token: admin, json: ["workflow": "reviewed"])
            let id = try #require((created.json["run"] as? [String: Any])?["id"] as? String)
            _ = try await Self.until(cluster, admin, project: project, run: id) { Self.steps($0)["review"]?["status"] as? String == "awaiting_approval" }
            let cancelled = try await cluster.http.send(.POST, "/api/v1/projects/\(project)/runs/\(id)/cancel", token: admin, json: ["reason": "not today"])
            try #require(cancelled.status == 200, "\(cancelled.text)")
            #expect(cancelled.json["status"] as? String == "cancelled")
            #expect((cancelled.json["error"] as? [String: Any])?["message"] as? String == "cancelled by \(try await Self.userID(cluster, admin)): not today")
            #expect(Self.steps(cancelled.json)["publish"]?["status"] as? String == "cancelled")
            let again = try await cluster.http.send(.POST, "/api/v1/projects/\(project)/runs/\(id)/cancel", token: admin, json: [:])
            #expect(again.status == 409, "\(again.text)")
            let closed = try await cluster.http.send(.GET, "/api/v1/projects/\(project)/approvals?status=cancelled", token: admin)
            #expect((closed.json["approvals"] as? [[String: Any]])?.count == 1, "\(closed.text)")
            let pending = try await cluster.http.send(.GET, "/api/v1/projects/\(project)/approvals", token: admin)
            #expect((pending.json["approvals"] as? [[String: Any]] ?? []).isEmpty)
        }
    }

    static func userID(_ cluster: TestCluster, _ token: String) async throws -> String {
        let me = try await cluster.http.send(.GET, "/api/v1/users/me", token: token)
        return (me.json["user"] as? [String: Any])?["id"] as? String ?? me.json["id"] as? String ?? ""
    }

    @Test("bad requests name their field: unknown or foreign workflow, inputs of the wrong type, unknown steps", arguments: TestBackend.all)
    func badRequests(backend: TestBackend) async throws {
        try await TestCluster.run(backend: backend) { cluster in
            let admin = try await cluster.adminToken()
            let project = try await Self.project(cluster, admin)
            let other = try await Self.project(cluster, admin, name: "other")
            let runs = "/api/v1/projects/\(project)/runs"
            let cases: [(body: [String: Any], status: UInt, field: String, message: String)] = [
                (["workflow": "nope"], 404, "workflow", "workflow not found"),
                (["workflow": ""], 400, "workflow", "is required"),
                (["workflow": "three"], 400, "inputs.word", "is required (string)"),
                (["workflow": "three", "inputs": ["word": 5]], 400, "inputs.word", "must be string"),
                (["workflow": "three", "inputs": ["word": "x", "times": 2.5]], 400, "inputs.times", "must be integer"),
                (["workflow": "three", "inputs": ["word": "x", "tmes": 1]], 400, "inputs.tmes", "did you mean \"times\"?"),
                (["workflow": "three", "version": "7", "inputs": ["word": "x"]], 404, "workflow", "has no version 7"),
                (["workflow": "three", "version": "one", "inputs": ["word": "x"]], 400, "version", "a version number"),
                (["workflow": "three", "inputs": ["word": "x"], "idempotencyKey": "has space"], 400, "idempotencyKey", "printable"),
            ]
            for test in cases {
                let response = try await cluster.http.send(.POST, runs, token: admin, json: test.body)
                #expect(response.status == test.status, "\(test.body): \(response.text)")
                #expect(response.errorField == test.field, "\(test.body): \(response.text)")
                #expect(response.errorMessage?.contains(test.message) == true, "\(test.body): \(response.text)")
            }
            // Another project's workflow, by its id, is not found here.
            let foreign = try await cluster.http.send(.GET, "/api/v1/projects/\(other)/workflows", token: admin)
            let foreignID = try #require((foreign.json["workflows"] as? [[String: Any]])?.first?["id"] as? String)
            let refused = try await cluster.http.send(.POST, runs, token: admin, json: ["workflow": foreignID, "inputs": ["word": "x"]])
            #expect(refused.status == 404, "\(refused.text)")
            let listedRuns = try await cluster.http.send(.GET, runs, token: admin)
            #expect((listedRuns.json["runs"] as? [[String: Any]] ?? []).isEmpty, "no run was stored")

            // A whole number is an integer input.
            let created = try await cluster.http.send(.POST, runs, token: admin, json: ["workflow": "three", "inputs": ["word": "x", "times": 3]])
            let id = try #require((created.json["run"] as? [String: Any])?["id"] as? String, "\(created.text)")
            let done = try await Self.finished(cluster, admin, project: project, run: id)
            #expect((Self.steps(done)["b"]?["output"] as? [String: Any])?["times"] as? Int == 3)
            let rerun = try await cluster.http.send(.POST, "\(runs)/\(id)/rerun", token: admin, json: ["stepId": "bb"])
            #expect(rerun.status == 400)
            #expect(rerun.errorField == "stepId", "\(rerun.text)")
            #expect(rerun.errorMessage?.contains("did you mean \"b\"?") == true, "\(rerun.text)")
            let cancel = try await cluster.http.send(.POST, "\(runs)/\(id)/cancel", token: admin, json: [:])
            #expect(cancel.status == 409)
            #expect(cancel.errorMessage?.contains("succeeded already") == true, "\(cancel.text)")
            let missing = try await cluster.http.send(.GET, "\(runs)/run_01a23ece91787395977e43a47bbce7b4", token: admin)
            #expect(missing.status == 404)
            let malformed = try await cluster.http.send(.GET, "\(runs)/nonsense", token: admin)
            #expect(malformed.status == 400)
            #expect(malformed.errorField == "runId")
            let badStatus = try await cluster.http.send(.GET, "\(runs)?status=done", token: admin)
            #expect(badStatus.status == 400)
            #expect(badStatus.errorField == "status")
            let badTime = try await cluster.http.send(.GET, "\(runs)?createdAfter=yesterday", token: admin)
            #expect(badTime.status == 400)
            #expect(badTime.errorField == "createdAfter")
            // The other project's run is not reachable through this project.
            let elsewhere = try await cluster.http.send(.GET, "/api/v1/projects/\(other)/runs/\(id)", token: admin)
            #expect(elsewhere.status == 404)
        }
    }

    @Test("rerun from a step reuses the outputs upstream of it and runs it and what follows again", arguments: TestBackend.all)
    func rerunFrom(backend: TestBackend) async throws {
        try await TestCluster.run(backend: backend) { cluster in
            let admin = try await cluster.adminToken()
            let project = try await Self.project(cluster, admin)
            let runs = "/api/v1/projects/\(project)/runs"
            let created = try await cluster.http.send(.POST, runs, token: admin, json: ["workflow": "three", "inputs": ["word": "again"]])
            let id = try #require((created.json["run"] as? [String: Any])?["id"] as? String)
            _ = try await Self.finished(cluster, admin, project: project, run: id)
            let rerun = try await cluster.http.send(.POST, "\(runs)/\(id)/rerun", token: admin, json: ["stepId": "b"])
            try #require(rerun.status == 201, "\(rerun.text)")
            let second = try #require((rerun.json["run"] as? [String: Any])?["id"] as? String)
            let done = try await Self.finished(cluster, admin, project: project, run: second)
            #expect(done["status"] as? String == "succeeded", "\(done)")
            #expect(done["rerunOf"] as? String == id)
            #expect(done["rerunFromStep"] as? String == "b")
            let steps = Self.steps(done)
            #expect((steps["a"]?["attempts"] as? [[String: Any]] ?? []).isEmpty, "a kept its output and did not run")
            #expect((steps["a"]?["output"] as? [String: Any])?["said"] as? String == "again")
            #expect((steps["b"]?["attempts"] as? [[String: Any]])?.count == 1)
            #expect((done["outputs"] as? [String: Any])?["last"] as? String == "again!")
        }
    }

    @Test("retries with backoff until the attempts run out; on_error continue goes on; an attempt past its timeout is cancelled", arguments: TestBackend.all)
    func retriesAndTimeouts(backend: TestBackend) async throws {
        let server = try await HTTPEchoServer.start()
        defer { Task { try? await server.stop() } }
        try await TestCluster.run(backend: backend, overrides: ["tool.outboundAllow": "127.0.0.1:\(server.port)"]) { cluster in
            let admin = try await cluster.adminToken()
            let project = try await Self.project(cluster, admin)
            let base = "/api/v1/projects/\(project)"
            let sources = [
                "tools": [
                    "tool: down\nkind: http\nside_effects: none\nhttp: { url: \"\(server.baseURL)/status/503\" }\n",
                    "tool: sleepy\nkind: http\nside_effects: none\nhttp: { url: \"\(server.baseURL)/slow?ms=20000\" }\n",
                ],
                "workflows": [
                    """
                    name: flaky
                    steps:
                      - id: call
                        tool: down
                        retry: { max_attempts: 3, backoff: fixed, initial: 200ms }
                        on_error: continue
                      - id: after
                        tool: echo
                        needs: [call]
                        with: { status: "${{ steps.call.status }}", attempts: "${{ steps.call.attempts }}" }
                    """,
                    "name: sleepy\nsteps:\n  - id: wait\n    tool: sleepy\n    timeout: 1s\n",
                ],
            ]
            for path in ["tools", "workflows"] {
                for source in sources[path]! {
                    let applied = try await cluster.http.send(.POST, "\(base)/\(path)/apply", token: admin, json: ["source": source])
                    try #require(applied.status == 200, "\(applied.text)")
                }
            }
            let flaky = try await cluster.http.send(.POST, "\(base)/runs", token: admin, json: ["workflow": "flaky"])
            let flakyID = try #require((flaky.json["run"] as? [String: Any])?["id"] as? String, "\(flaky.text)")
            let done = try await Self.finished(cluster, admin, project: project, run: flakyID)
            #expect(done["status"] as? String == "succeeded", "\(done)")
            let steps = Self.steps(done)
            #expect(steps["call"]?["status"] as? String == "failed")
            #expect((steps["call"]?["error"] as? [String: Any])?["reason"] as? String == "http_status")
            let attempts = steps["call"]?["attempts"] as? [[String: Any]] ?? []
            #expect(attempts.map { $0["status"] as? String ?? "" } == ["failed", "failed", "failed"], "\(attempts)")
            #expect(attempts.map { $0["idempotencyKey"] as? String ?? "" } == (1 ... 3).map { "\(flakyID)/call/\($0)" })
            #expect((steps["after"]?["output"] as? [String: Any])?["status"] as? String == "failed")
            #expect((steps["after"]?["output"] as? [String: Any])?["attempts"] as? Int == 3)
            #expect(server.requestsByURI["/status/503"] == 3)
            // The fixed backoff of 200 ms stands between attempts.
            let times = attempts.compactMap { ($0["startTime"] as? String).flatMap { try? Date($0, strategy: .iso8601.year().month().day().time(includingFractionalSeconds: true)) } }
            if times.count == 3 {
                #expect(times[1].timeIntervalSince(times[0]) >= 0.2 && times[2].timeIntervalSince(times[1]) >= 0.2, "\(times)")
            }
            let events = try await cluster.http.send(.GET, "\(base)/events?runId=\(flakyID)", token: admin).json["events"] as? [[String: Any]] ?? []
            #expect(events.filter { $0["kind"] as? String == "step.retrying" }.count == 2)

            let sleepy = try await cluster.http.send(.POST, "\(base)/runs", token: admin, json: ["workflow": "sleepy"])
            let sleepyID = try #require((sleepy.json["run"] as? [String: Any])?["id"] as? String, "\(sleepy.text)")
            let timedOut = try await Self.finished(cluster, admin, project: project, run: sleepyID)
            #expect(timedOut["status"] as? String == "failed", "\(timedOut)")
            let wait = Self.steps(timedOut)["wait"]
            #expect((wait?["error"] as? [String: Any])?["reason"] as? String == "timeout", "\(wait ?? [:])")
            // The tool's own deadline (the step's timeout, passed on) or the run's timer, whichever came first.
            #expect(["failed", "cancelled"].contains((wait?["attempts"] as? [[String: Any]])?.first?["status"] as? String ?? ""))
            let seconds = Self.seconds(timedOut["startTime"], timedOut["endTime"])
            #expect(seconds < 15, "the run waited \(seconds) s for a call with a timeout of 1 s")
        }
    }

    static func seconds(_ start: Any?, _ end: Any?) -> Double {
        let parse = { (value: Any?) -> Date? in (value as? String).flatMap { try? Date($0, strategy: .iso8601.year().month().day().time(includingFractionalSeconds: true)) } }
        guard let start = parse(start), let end = parse(end) else { return .infinity }
        return end.timeIntervalSince(start)
    }

    @Test("the WebSocket delivers a project's run events as they commit; a client that reconnects with its last sequence misses nothing", arguments: TestBackend.all)
    func liveEvents(backend: TestBackend) async throws {
        try await TestCluster.run(backend: backend) { cluster in
            let admin = try await cluster.adminToken()
            let project = try await Self.project(cluster, admin)
            let ticket = { () async throws -> String in
                try #require(try await cluster.http.send(.POST, "/api/v1/ws/tickets", token: admin).json["ticket"] as? String)
            }
            var seen: [[String: Any]] = []
            var runID = ""
            _ = try await WebSocketTestClient.converse(port: cluster.gatewayPort, path: "/api/v1/ws?ticket=\(try await ticket())") { socket in
                #expect(try await socket.receive()["type"] as? String == "ready")
                try await socket.send(["type": "subscribe", "topic": "runs", "projectId": project])
                #expect(try await socket.receive()["type"] as? String == "subscribed")
                let created = try await cluster.http.send(.POST, "/api/v1/projects/\(project)/runs", token: admin, json: ["workflow": "three", "inputs": ["word": "live"]])
                runID = try #require((created.json["run"] as? [String: Any])?["id"] as? String)
                while seen.last?["kind"] as? String != "run.succeeded" {
                    let message = try await socket.receive()
                    guard !message.isEmpty else { break }
                    #expect(message["type"] as? String == "event", "\(message)")
                    if let event = message["event"] as? [String: Any] { seen.append(event) }
                }
                try await socket.send(["type": "subscribe", "topic": "runs", "projectId": project, "runId": "nonsense"])
                #expect(try await socket.receive()["field"] as? String == "runId")
            }
            let sequences = seen.compactMap { ($0["sequence"] as? String).flatMap(Int64.init) }
            #expect(sequences == Array(1 ... Int64(seen.count)), "\(sequences)")
            #expect(seen.first?["kind"] as? String == "run.created")
            #expect(seen.allSatisfy { $0["runId"] as? String == runID })

            // Reconnected after the 5th event, with a run's filter: the 6th on, once each.
            var resumed: [Int64] = []
            _ = try await WebSocketTestClient.converse(port: cluster.gatewayPort, path: "/api/v1/ws?ticket=\(try await ticket())") { socket in
                #expect(try await socket.receive()["type"] as? String == "ready")
                try await socket.send(["type": "subscribe", "topic": "runs", "projectId": project, "runId": runID, "afterSequence": 5])
                #expect(try await socket.receive()["type"] as? String == "subscribed")
                while resumed.last != sequences.last {
                    let message = try await socket.receive()
                    guard let event = message["event"] as? [String: Any], let sequence = (event["sequence"] as? String).flatMap(Int64.init) else { break }
                    resumed.append(sequence)
                }
            }
            #expect(resumed == Array(6 ... (sequences.last ?? 5)), "\(resumed)")

            // Without afterSequence a subscription starts from now: the finished run's events are
            // not replayed (on either topic), a new run's are; afterSequence 0 asks for history.
            _ = try await WebSocketTestClient.converse(port: cluster.gatewayPort, path: "/api/v1/ws?ticket=\(try await ticket())") { socket in
                #expect(try await socket.receive()["type"] as? String == "ready")
                try await socket.send(["type": "subscribe", "topic": "runs", "projectId": project])
                let subscribed = try await socket.receive()
                #expect(subscribed["afterSequence"] as? String == "\(sequences.last ?? 0)", "\(subscribed)")
                let created = try await cluster.http.send(.POST, "/api/v1/projects/\(project)/runs", token: admin, json: ["workflow": "three", "inputs": ["word": "now"]])
                let second = try #require((created.json["run"] as? [String: Any])?["id"] as? String)
                let first = try await socket.receive()
                let event = try #require(first["event"] as? [String: Any], "\(first)")
                #expect(event["runId"] as? String == second)
                #expect(event["kind"] as? String == "run.created")
                #expect((event["sequence"] as? String).flatMap(Int64.init) == (sequences.last ?? 0) + 1)
                for bad in [-1, 1.5, true, "x"] as [Any] {
                    try await socket.send(["type": "subscribe", "topic": "runs", "projectId": project, "runId": second, "afterSequence": bad])
                    var reply = try await socket.receive()
                    while reply["type"] as? String == "event" { reply = try await socket.receive() }
                    #expect(reply["field"] as? String == "afterSequence", "\(bad): \(reply)")
                }
            }
            _ = try await WebSocketTestClient.converse(port: cluster.gatewayPort, path: "/api/v1/ws?ticket=\(try await ticket())") { socket in
                #expect(try await socket.receive()["type"] as? String == "ready")
                try await socket.send(["type": "subscribe", "topic": "runs", "projectId": project, "runId": runID, "afterSequence": 0])
                #expect(try await socket.receive()["type"] as? String == "subscribed")
                let history = try await socket.receive()
                #expect((history["event"] as? [String: Any])?["kind"] as? String == "run.created", "\(history)")
            }
        }
    }

    @Test("policies decide on runs and tool calls: a deny refuses the run with its rule, a hold waits for a human, and an approved call runs", arguments: TestBackend.all)
    func policyHolds(backend: TestBackend) async throws {
        try await TestCluster.run(backend: backend) { cluster in
            let admin = try await cluster.adminToken()
            let project = try await Self.project(cluster, admin)
            let base = "/api/v1/projects/\(project)"
            let policy = try await cluster.http.send(.POST, "\(base)/policies/apply", token: admin, json: ["source": """
                policy: runs
                points: [run.create, tool.invoke]
                rules:
                  - name: no-shouting
                    effect: deny
                    when: point == "run.create" && workflow.name == "three" && principal.kind == "api_key"
                    message: Keys may not start three.
                  - name: review-first
                    effect: require_approval
                    when: point == "run.create" && workflow.name == "reviewed"
                    message: A person starts reviewed runs.
                  - name: echo-needs-a-look
                    effect: require_approval
                    when: point == "tool.invoke" && workflow.name == "three" && tool.name == "echo"
                    message: Look at echo calls first.
                """])
            try #require(policy.status == 200, "\(policy.text)")

            // A deny: 403 naming the rule, and nothing stored.
            let key = try await cluster.http.send(.POST, "\(base)/api-keys", token: admin, json: ["name": "bot", "role": "ROLE_RUNNER"])
            let secret = try #require(key.json["secret"] as? String ?? key.json["key"] as? String, "\(key.text)")
            let denied = try await cluster.http.send(.POST, "\(base)/runs", token: secret, json: ["workflow": "three", "inputs": ["word": "x"]])
            #expect(denied.status == 403, "\(denied.text)")
            #expect(denied.errorMessage?.contains("runs/no-shouting") == true, "\(denied.text)")
            #expect((try await cluster.http.send(.GET, "\(base)/runs", token: admin).json["runs"] as? [[String: Any]] ?? []).isEmpty)

            // A run held at creation: awaiting_approval with an approval for the run itself.
            let held = try await cluster.http.send(.POST, "\(base)/runs", token: admin, json: ["workflow": "reviewed"])
            let heldRun = try #require(held.json["run"] as? [String: Any], "\(held.text)")
            #expect(heldRun["status"] as? String == "awaiting_approval")
            let heldID = try #require(heldRun["id"] as? String)
            let runApproval = try #require((try await cluster.http.send(.GET, "\(base)/approvals?runId=\(heldID)", token: admin).json["approvals"] as? [[String: Any]])?.first)
            #expect(runApproval["stepId"] == nil)
            #expect((runApproval["message"] as? String)?.contains("A person starts reviewed runs.") == true, "\(runApproval)")
            let reject = try await cluster.http.send(.POST, "\(base)/approvals/\(runApproval["id"] as? String ?? "")/decide", token: admin, json: ["decision": "reject", "comment": "not now"])
            #expect(reject.status == 200, "\(reject.text)")
            let rejected = try await Self.finished(cluster, admin, project: project, run: heldID)
            #expect(rejected["status"] as? String == "rejected")

            // A tool call held: the step waits; approved, the same attempt runs with the grant.
            let created = try await cluster.http.send(.POST, "\(base)/runs", token: admin, json: ["workflow": "three", "inputs": ["word": "held"]])
            let id = try #require((created.json["run"] as? [String: Any])?["id"] as? String, "\(created.text)")
            _ = try await Self.until(cluster, admin, project: project, run: id) { Self.steps($0)["a"]?["status"] as? String == "awaiting_approval" }
            let stepApproval = try #require((try await cluster.http.send(.GET, "\(base)/approvals?runId=\(id)", token: admin).json["approvals"] as? [[String: Any]])?.first)
            #expect(stepApproval["stepId"] as? String == "a")
            #expect((stepApproval["message"] as? String)?.contains("Look at echo calls first.") == true, "\(stepApproval)")
            let approve = try await cluster.http.send(.POST, "\(base)/approvals/\(stepApproval["id"] as? String ?? "")/decide", token: admin, json: ["decision": "approve"])
            #expect(approve.status == 200, "\(approve.text)")
            // Step b is held in its turn.
            _ = try await Self.until(cluster, admin, project: project, run: id) { Self.steps($0)["b"]?["status"] as? String == "awaiting_approval" }
            let second = try #require((try await cluster.http.send(.GET, "\(base)/approvals?runId=\(id)", token: admin).json["approvals"] as? [[String: Any]])?.first)
            #expect(try await cluster.http.send(.POST, "\(base)/approvals/\(second["id"] as? String ?? "")/decide", token: admin, json: ["decision": "approve"]).status == 200)
            let done = try await Self.finished(cluster, admin, project: project, run: id)
            #expect(done["status"] as? String == "succeeded", "\(done)")
            let attempts = Self.steps(done)["a"]?["attempts"] as? [[String: Any]] ?? []
            #expect(attempts.map { $0["status"] as? String ?? "" } == ["succeeded"], "the held attempt went ahead: \(attempts)")

            // Nobody but the run service passes an approval to the tool service.
            let forged = try await cluster.http.send(.POST, "\(base)/tools/echo/invoke", token: admin, json: ["input": [:], "approved": true])
            #expect(forged.status == 403, "\(forged.text)")
            #expect(forged.errorField == "approved")
        }
    }
}
