import Foundation
import SparkExpr
import SparkWorkflow
import Testing

/// A run machine and the clock it is driven with, keeping every effect it produced.
struct RunDriver {
    var machine: RunMachine
    var now: Int64 = 1_000_000
    var effects: [RunEffect] = []

    init(_ yaml: String, inputs: [String: ExprValue] = [:], seed: UInt64 = 7, timeout: Int64? = nil) throws {
        let definition = try WorkflowDefinition.read(yaml)
        self.machine = RunMachine(
            runID: "run_1", definition: definition, inputs: try RunMachine.inputs(inputs, for: definition.inputs), seed: seed,
            deadline: timeout.map { 1_000_000 + $0 }
        )
    }

    @discardableResult
    mutating func apply(_ input: RunInput) throws(RunMachineError) -> [RunEffect] {
        let effects = try self.machine.apply(input, now: self.now)
        self.effects += effects
        return effects
    }

    /// Admits and starts the run: the first steps' dispatches.
    @discardableResult
    mutating func start() throws(RunMachineError) -> [RunEffect] {
        try self.apply(.admit)
        return try self.apply(.start)
    }

    /// Starts the step's current attempt and finishes it with `output`.
    @discardableResult
    mutating func succeed(_ step: String, _ output: ExprValue = .map([:])) throws(RunMachineError) -> [RunEffect] {
        let attempt = self.machine.step(step)?.attempt ?? 0
        try self.apply(.stepStarted(step: step, attempt: attempt))
        return try self.apply(.stepSucceeded(step: step, attempt: attempt, output: output))
    }

    @discardableResult
    mutating func fail(_ step: String, retryable: Bool = true) throws(RunMachineError) -> [RunEffect] {
        let attempt = self.machine.step(step)?.attempt ?? 0
        if self.machine.step(step)?.status == .ready { try self.apply(.stepStarted(step: step, attempt: attempt)) }
        return try self.apply(.stepFailed(step: step, attempt: attempt, failure: RunFailure(reason: "tool_error", message: "it broke"), retryable: retryable))
    }

    func status(_ step: String) -> StepStatus? { self.machine.step(step)?.status }
}

extension [RunEffect] {
    /// The steps dispatched, in order.
    var dispatched: [String] {
        self.compactMap { if case .dispatch(let step, _, _, _, _) = $0 { step } else { nil } }
    }

    var dispatches: [(step: String, attempt: Int, arguments: ExprValue, key: String, approved: Bool)] {
        self.compactMap { if case .dispatch(let step, let attempt, let arguments, let key, let approved) = $0 { (step, attempt, arguments, key, approved) } else { nil } }
    }

    var events: [String] {
        self.compactMap { if case .event(let event) = $0 { event.step.map { "\(event.kind) \($0)" } ?? event.kind } else { nil } }
    }

    var cancelled: [String] {
        self.compactMap { if case .cancelAttempt(let step, let attempt) = $0 { "\(step)/\(attempt)" } else { nil } }
    }

    var approvals: [(step: String?, message: String, approvers: [String], expiresAt: Int64?)] {
        self.compactMap { if case .requestApproval(let step, let message, let approvers, let expiresAt, _) = $0 { (step, message, approvers, expiresAt) } else { nil } }
    }
}

@Suite("The run state machine")
struct RunMachineTests {
    static let chain = """
        name: chain
        inputs: { topic: { type: string, required: true }, words: { type: integer, default: 300 } }
        steps:
          - { id: search, tool: web-search, with: { q: "${{ inputs.topic }}", n: "${{ inputs.words }}" } }
          - { id: draft, agent: writer, needs: [search], with: { prompt: "From ${{ steps.search.output.hits }} hits" } }
          - { id: publish, tool: cms, needs: [draft], with: { text: "${{ steps.draft.output.text }}" } }
        outputs: { text: "${{ steps.draft.output.text }}", hits: "${{ steps.search.output.hits }}" }
        """

    @Test("pending → queued → running → succeeded: each step dispatched once its needs are done, with rendered arguments and run/step/attempt keys; outputs computed")
    func chainSucceeds() throws {
        var run = try RunDriver(Self.chain, inputs: ["topic": "rust"])
        #expect(run.machine.status == .pending)
        #expect(try run.apply(.admit).events == ["run.queued"])
        let started = try run.apply(.start)
        #expect(run.machine.status == .running)
        #expect(started.events == ["run.running", "step.ready search"])
        let first = try #require(started.dispatches.first)
        #expect(started.dispatched == ["search"])
        #expect(first.attempt == 1 && first.key == "run_1/search/1" && !first.approved)
        #expect(first.arguments == .map(["q": "rust", "n": .int(300)]))
        #expect(run.status("draft") == .pending && run.status("publish") == .pending)

        let afterSearch = try run.succeed("search", .map(["hits": .int(12)]))
        #expect(run.effects.events.contains("step.running search"))
        #expect(afterSearch.events == ["step.succeeded search", "step.ready draft"])
        #expect(afterSearch.dispatches.first?.arguments == .map(["prompt": "From 12 hits"]))
        try run.succeed("draft", .map(["text": "a brief"]))
        #expect(run.status("publish") == .ready)
        let last = try run.succeed("publish")
        #expect(last.events.suffix(2) == ["step.succeeded publish", "run.succeeded"])
        #expect(run.machine.status == .succeeded)
        #expect(run.machine.outputs == ["text": "a brief", "hits": .int(12)])
        #expect(run.machine.nextWakeUp == nil)
        // A finished run takes no more input.
        #expect(throws: RunMachineError.self) { try run.apply(.cancel(by: "usr_1", reason: "")) }
        #expect(throws: RunMachineError.self) { try run.apply(.stepSucceeded(step: "publish", attempt: 1, output: .null)) }
    }

    @Test("independent steps start together; a step waits for all of its needs")
    func fanOutFanIn() throws {
        var run = try RunDriver("""
            name: fan
            steps:
              - { id: a, tool: t }
              - { id: b, tool: t }
              - { id: c, tool: t, needs: [a, b] }
              - { id: d, tool: t, needs: [c] }
            """)
        #expect(try run.start().dispatched == ["a", "b"])
        #expect(try run.succeed("b").dispatched == [])
        #expect(run.status("c") == .pending)
        #expect(try run.succeed("a").dispatched == ["c"])
        #expect(try run.succeed("c").dispatched == ["d"])
        try run.succeed("d")
        #expect(run.machine.status == .succeeded)
    }

    @Test("when false skips a step; a step after it is skipped unless its own when decides")
    func skipping() throws {
        let yaml = """
            name: skips
            inputs: { go: boolean }
            steps:
              - { id: check, tool: t, when: "inputs.go" }
              - { id: after, tool: t, needs: [check] }
              - { id: later, tool: t, needs: [after] }
              - { id: fallback, tool: t, needs: [check], when: "${{ steps.check.status == 'skipped' }}" }
            """
        var skipped = try RunDriver(yaml, inputs: ["go": .bool(false)])
        let effects = try skipped.start()
        #expect(effects.dispatched == ["fallback"])
        #expect(skipped.status("check") == .skipped && skipped.status("after") == .skipped && skipped.status("later") == .skipped)
        #expect(effects.events.contains("step.skipped later"))
        try skipped.succeed("fallback")
        #expect(skipped.machine.status == .succeeded)

        var taken = try RunDriver(yaml, inputs: ["go": .bool(true)])
        #expect(try taken.start().dispatched == ["check"])
        #expect(try taken.succeed("check").dispatched == ["after"])
        #expect(taken.status("fallback") == .skipped)
    }

    @Test("on_error: continue lets dependents run and the run succeed; on_error: fail fails the run and cancels what is under way")
    func onError() throws {
        var lenient = try RunDriver("""
            name: lenient
            steps:
              - { id: flaky, tool: t, on_error: continue }
              - { id: next, tool: t, needs: [flaky], with: { was: "${{ steps.flaky.status }}", why: "${{ steps.flaky.error.reason }}" } }
            """)
        try lenient.start()
        let failed = try lenient.fail("flaky")
        #expect(lenient.status("flaky") == .failed)
        #expect(failed.dispatches.first?.arguments == .map(["was": "failed", "why": "tool_error"]))
        try lenient.succeed("next")
        #expect(lenient.machine.status == .succeeded)

        var strict = try RunDriver("""
            name: strict
            steps:
              - { id: a, tool: t }
              - { id: b, tool: t }
              - { id: c, tool: t, needs: [a] }
            """)
        try strict.start()
        try strict.apply(.stepStarted(step: "b", attempt: 1))
        let effects = try strict.fail("a")
        #expect(strict.machine.status == .failed)
        #expect(strict.machine.failure?.reason == "step_failed")
        #expect(strict.machine.failure?.message.contains("step a failed") == true)
        #expect(effects.cancelled == ["b/1"])
        #expect(strict.status("b") == .cancelled && strict.status("c") == .cancelled)
        // b's worker reports late: refused, nothing changes.
        #expect(throws: RunMachineError.self) { try strict.apply(.stepSucceeded(step: "b", attempt: 1, output: .null)) }
        #expect(strict.status("b") == .cancelled)
    }

    @Test("retries back off exponentially with jitter, up to max, the same way for the same seed; a failure that cannot pass is not retried")
    func retries() throws {
        let yaml = """
            name: retry
            steps:
              - { id: call, tool: t, retry: { max_attempts: 4, backoff: exponential, initial: 1s, max: 3s } }
            """
        func delays(seed: UInt64) throws -> [Int64] {
            var run = try RunDriver(yaml, seed: seed)
            try run.start()
            var delays: [Int64] = []
            for attempt in 1 ... 3 {
                try run.fail("call")
                let state = try #require(run.machine.step("call"))
                #expect(state.status == .retrying && state.attempt == attempt)
                let at = try #require(state.retryAt)
                delays.append(at - run.now)
                #expect(run.machine.nextWakeUp == at)
                run.now = at - 1
                #expect(try run.apply(.tick).isEmpty)
                run.now = at
                let again = try run.apply(.tick)
                #expect(again.dispatches.map(\.key) == ["run_1/call/\(attempt + 1)"])
            }
            try run.fail("call")
            #expect(run.status("call") == .failed)
            #expect(run.machine.status == .failed)
            return delays
        }
        let first = try delays(seed: 1)
        // Equal jitter: between half and all of 1 s, 2 s, then 3 s (4 s capped at max).
        #expect((500 ... 1000).contains(first[0]) && (1000 ... 2000).contains(first[1]) && (1500 ... 3000).contains(first[2]), "\(first)")
        #expect(try delays(seed: 1) == first)
        let spread = try Set((2 ... 12).map { try delays(seed: UInt64($0)) })
        #expect(spread.count > 1, "the jitter never varied")

        var fixed = try RunDriver("name: fixed\nsteps:\n  - { id: call, tool: t, retry: { max_attempts: 2, backoff: fixed, initial: 250ms } }\n")
        try fixed.start()
        try fixed.fail("call")
        #expect(fixed.machine.step("call")?.retryAt == fixed.now + 250)

        var final = try RunDriver(yaml)
        try final.start()
        try final.fail("call", retryable: false)
        #expect(final.status("call") == .failed && final.machine.step("call")?.attempt == 1)
    }

    @Test("a tool attempt past its timeout is cancelled and its worker's report decides: retried, or a human for a call that may have run; the run's own timeout stops everything")
    func timeouts() throws {
        var run = try RunDriver("""
            name: slow
            steps:
              - { id: call, tool: t, timeout: 2s, retry: { max_attempts: 3, backoff: fixed, initial: 1s } }
              - { id: other, tool: t }
            """, timeout: 60_000)
        try run.start()
        try run.apply(.stepStarted(step: "call", attempt: 1))
        #expect(run.machine.step("call")?.deadline == run.now + 2000)
        #expect(run.machine.nextWakeUp == run.now + 2000)
        run.now += 2000
        let timedOut = try run.apply(.tick)
        #expect(timedOut.cancelled == ["call/1"])
        // No new attempt under a new key while the first may still run: the worker reports.
        #expect(run.status("call") == .running)
        #expect(run.machine.step("call")?.timedOut == true)
        // Only the run's own deadline is left to wake it.
        #expect(run.machine.nextWakeUp == run.machine.deadline)
        // Kept across a restore.
        let restored = try RunMachine(runID: "run_1", definition: run.machine.definition, inputs: [:], deadline: run.machine.deadline, snapshot: run.machine.snapshot)
        #expect(restored.step("call")?.timedOut == true)
        // The stopped call reports a cancellation: a timeout, retried.
        try run.apply(.stepFailed(step: "call", attempt: 1, failure: RunFailure(reason: "unavailable", message: "cancelled"), retryable: true))
        #expect(run.status("call") == .retrying)
        #expect(run.machine.step("call")?.error?.reason == "timeout")
        #expect(run.machine.step("call")?.timedOut == false)

        // Attempt 2 times out too, and its call may have run (a non_idempotent tool): a human.
        run.now += 1000
        try run.apply(.tick)
        try run.apply(.stepStarted(step: "call", attempt: 2))
        run.now += 2000
        try run.apply(.tick)
        try run.apply(.attemptLost(step: "call", attempt: 2, mayRepeat: false))
        #expect(run.status("call") == .needsAttention)
        try run.apply(.resolveAttention(step: "call", retry: true, by: "usr_ops"))

        try run.apply(.stepStarted(step: "call", attempt: 3))
        run.now = 1_000_000 + 60_000
        let stopped = try run.apply(.tick)
        #expect(run.machine.status == .timedOut)
        // other was queued for a worker, not running: it is cancelled without a call to stop.
        #expect(stopped.cancelled == ["call/3"])
        #expect(run.machine.steps.allSatisfy { $0.status.isFinal })
        #expect(stopped.events.last == "run.timed_out")
        #expect(run.machine.nextWakeUp == nil)
    }

    @Test("an approval step waits for a human: approved it succeeds with who decided; rejected or run out it fails; decided twice is refused")
    func approvalSteps() throws {
        let yaml = """
            name: review
            inputs: { title: string }
            steps:
              - { id: review, approval: { approvers: [editor], message: "Publish ${{ inputs.title }}?", timeout: 1h } }
              - { id: publish, tool: cms, needs: [review], with: { by: "${{ steps.review.output.by }}" } }
            """
        var approved = try RunDriver(yaml, inputs: ["title": "the brief"])
        let started = try approved.start()
        #expect(started.dispatched == [])
        let request = try #require(started.approvals.first)
        #expect(request.step == "review" && request.message == "Publish the brief?" && request.approvers == ["editor"])
        #expect(request.expiresAt == approved.now + 3_600_000)
        #expect(approved.status("review") == .awaitingApproval)
        let decided = try approved.apply(.approveStep(step: "review", by: "usr_ed", comment: "ship it"))
        #expect(decided.dispatches.first?.arguments == .map(["by": "usr_ed"]))
        #expect(approved.machine.step("review")?.output == .map(["approved": .bool(true), "by": "usr_ed", "comment": "ship it"]))
        #expect(throws: RunMachineError.self) { try approved.apply(.approveStep(step: "review", by: "usr_ed", comment: "")) }
        #expect(throws: RunMachineError.self) { try approved.apply(.rejectStep(step: "review", by: "usr_other", reason: "")) }

        var rejected = try RunDriver(yaml, inputs: ["title": "x"])
        try rejected.start()
        try rejected.apply(.rejectStep(step: "review", by: "usr_ed", reason: "not yet"))
        #expect(rejected.status("review") == .failed && rejected.machine.status == .failed)
        #expect(rejected.machine.step("review")?.error == RunFailure(reason: "rejected", message: "rejected by usr_ed: not yet"))

        var expired = try RunDriver(yaml, inputs: ["title": "x"])
        try expired.start()
        expired.now += 3_600_000
        try expired.apply(.tick)
        #expect(expired.machine.step("review")?.error?.reason == "approval_timeout")
        #expect(expired.machine.status == .failed)
    }

    @Test("a policy's hold pauses the attempt; approved, the same attempt goes ahead with the grant; rejected, the step fails without retries")
    func policyHolds() throws {
        let yaml = "name: pay\nsteps:\n  - { id: pay, tool: payments, retry: { max_attempts: 3, backoff: fixed, initial: 1s } }\n"
        var run = try RunDriver(yaml)
        try run.start()
        try run.apply(.stepStarted(step: "pay", attempt: 1))
        let held = try run.apply(.stepHeld(step: "pay", attempt: 1, message: "payments/large: over 100", approvers: ["approver"]))
        #expect(held.approvals.first?.step == "pay" && held.approvals.first?.message == "payments/large: over 100")
        #expect(run.status("pay") == .awaitingApproval)
        let resumed = try run.apply(.approveStep(step: "pay", by: "usr_boss", comment: ""))
        let dispatch = try #require(resumed.dispatches.first)
        #expect(dispatch.attempt == 1 && dispatch.key == "run_1/pay/1" && dispatch.approved)
        try run.succeed("pay")
        #expect(run.machine.status == .succeeded)

        // A held call: the approval carries it, and each grant names one call; grants add up and
        // outlive a restore, and a retry by a human starts without them.
        var calls = try RunDriver(yaml)
        try calls.start()
        try calls.apply(.stepStarted(step: "pay", attempt: 1))
        let call: ExprValue = .map(["kind": "tool", "target": "payments", "arguments": .map(["amount": .int(120)]), "digest": "sha256:aa"])
        let asked = try calls.apply(.stepHeld(step: "pay", attempt: 1, message: "m", approvers: [], call: call))
        #expect(asked.contains { if case .requestApproval(_, _, _, _, let shown) = $0 { shown == call } else { false } })
        try calls.apply(.approveStep(step: "pay", by: "usr_boss", comment: ""))
        #expect(calls.machine.step("pay")?.grants == ["sha256:aa"] && calls.machine.step("pay")?.heldCall == nil)
        try calls.apply(.stepStarted(step: "pay", attempt: 1))
        try calls.apply(.stepHeld(step: "pay", attempt: 1, message: "m", approvers: [], call: .map(["digest": "sha256:bb"])))
        #expect(calls.machine.step("pay")?.heldCall != nil)
        try calls.apply(.approveStep(step: "pay", by: "usr_boss", comment: ""))
        let restored = try RunMachine(runID: "run_1", definition: calls.machine.definition, inputs: calls.machine.inputs, deadline: nil, snapshot: calls.machine.snapshot)
        #expect(restored.step("pay")?.grants == ["sha256:aa", "sha256:bb"])

        var refused = try RunDriver(yaml)
        try refused.start()
        try refused.apply(.stepStarted(step: "pay", attempt: 1))
        try refused.apply(.stepHeld(step: "pay", attempt: 1, message: "m", approvers: []))
        try refused.apply(.rejectStep(step: "pay", by: "usr_boss", reason: ""))
        #expect(refused.status("pay") == .failed && refused.machine.step("pay")?.attempt == 1)
    }

    @Test("a lost attempt that is safe to repeat is sent again with the same key; one with side effects waits for a human, who retries or skips it")
    func lostAttempts() throws {
        let yaml = """
            name: lost
            steps:
              - { id: charge, tool: pay }
              - { id: receipt, tool: mail, needs: [charge] }
            """
        var safe = try RunDriver(yaml)
        try safe.start()
        try safe.apply(.stepStarted(step: "charge", attempt: 1))
        let again = try safe.apply(.attemptLost(step: "charge", attempt: 1, mayRepeat: true))
        #expect(again.dispatches.map(\.key) == ["run_1/charge/1"])

        var unsafe = try RunDriver(yaml)
        try unsafe.start()
        try unsafe.apply(.stepStarted(step: "charge", attempt: 1))
        #expect(try unsafe.apply(.attemptLost(step: "charge", attempt: 1, mayRepeat: false)).dispatched == [])
        #expect(unsafe.status("charge") == .needsAttention)
        #expect(unsafe.machine.status == .running)
        #expect(throws: RunMachineError.self) { try unsafe.apply(.stepSucceeded(step: "charge", attempt: 1, output: .null)) }
        let retried = try unsafe.apply(.resolveAttention(step: "charge", retry: true, by: "usr_ops"))
        #expect(retried.dispatches.map(\.key) == ["run_1/charge/2"])
        #expect(throws: RunMachineError.self) { try unsafe.apply(.resolveAttention(step: "charge", retry: true, by: "usr_ops")) }

        // Lost before it started: sent again whatever its side effects.
        var unstarted = try RunDriver(yaml)
        try unstarted.start()
        #expect(try unstarted.apply(.attemptLost(step: "charge", attempt: 1, mayRepeat: false)).dispatched == ["charge"])

        var skipped = try RunDriver(yaml)
        try skipped.start()
        try skipped.apply(.stepStarted(step: "charge", attempt: 1))
        try skipped.apply(.attemptLost(step: "charge", attempt: 1, mayRepeat: false))
        try skipped.apply(.resolveAttention(step: "charge", retry: false, by: "usr_ops"))
        #expect(skipped.status("charge") == .skipped && skipped.status("receipt") == .skipped)
        #expect(skipped.machine.status == .succeeded)
    }

    @Test("a run held for approval is queued when approved and rejected when not; a cancelled run cancels its running attempts")
    func runAdmissionAndCancel() throws {
        var held = try RunDriver(Self.chain, inputs: ["topic": "x"])
        #expect(throws: RunMachineError.self) { try held.apply(.start) }
        let effects = try held.apply(.hold(message: "runs/after-hours: a human starts runs at night", approvers: ["approver"]))
        #expect(held.machine.status == .awaitingApproval)
        #expect(effects.approvals.first?.step == nil)
        try held.apply(.approveRun(by: "usr_boss"))
        #expect(held.machine.status == .queued)
        #expect(throws: RunMachineError.self) { try held.apply(.approveRun(by: "usr_boss")) }

        var rejected = try RunDriver(Self.chain, inputs: ["topic": "x"])
        try rejected.apply(.hold(message: "m", approvers: []))
        try rejected.apply(.rejectRun(by: "usr_boss", reason: "no"))
        #expect(rejected.machine.status == .rejected && rejected.machine.status.isFinal)
        #expect(throws: RunMachineError.self) { try rejected.apply(.cancel(by: "usr_1", reason: "")) }

        var cancelled = try RunDriver(Self.chain, inputs: ["topic": "x"])
        try cancelled.start()
        try cancelled.apply(.stepStarted(step: "search", attempt: 1))
        let stop = try cancelled.apply(.cancel(by: "usr_1", reason: "wrong topic"))
        #expect(stop.cancelled == ["search/1"])
        #expect(cancelled.machine.status == .cancelled)
        #expect(cancelled.machine.failure?.message == "cancelled by usr_1: wrong topic")
        #expect(cancelled.machine.steps.allSatisfy { $0.status == .cancelled })

        var queued = try RunDriver(Self.chain, inputs: ["topic": "x"])
        try queued.apply(.admit)
        #expect(try queued.apply(.cancel(by: "usr_1", reason: "")).cancelled == [])
        #expect(queued.machine.status == .cancelled)
    }

    @Test("arguments or a condition that do not evaluate fail the step; outputs that do not fail the run; unknown steps are refused")
    func evaluationFailures() throws {
        var run = try RunDriver("""
            name: bad
            steps:
              - { id: a, tool: t }
              - { id: b, tool: t, needs: [a], with: { n: "${{ steps.a.output.count + 1 }}" } }
            """)
        try run.start()
        try run.succeed("a", .map(["count": "many"]))
        #expect(run.status("b") == .failed)
        #expect(run.machine.step("b")?.error?.reason == "arguments")
        #expect(run.machine.step("b")?.error?.message.hasPrefix("with.n:") == true)
        #expect(run.machine.status == .failed)

        var condition = try RunDriver("name: c\nsteps:\n  - { id: a, tool: t }\n  - { id: b, tool: t, needs: [a], when: \"steps.a.output.ok\" }\n")
        try condition.start()
        try condition.succeed("a", .map(["ok": "yes"]))
        #expect(condition.machine.step("b")?.error?.reason == "condition")

        var outputs = try RunDriver("name: o\nsteps:\n  - { id: a, tool: t }\noutputs: { total: \"${{ steps.a.output.n * 2 }}\" }\n")
        try outputs.start()
        try outputs.succeed("a", .map(["n": "three"]))
        #expect(outputs.machine.status == .failed)
        #expect(outputs.machine.failure?.reason == "outputs")
        #expect(outputs.machine.failure?.message.hasPrefix("outputs.total:") == true)

        var unknown = try RunDriver("name: u\nsteps:\n  - { id: a, tool: t }\n")
        try unknown.start()
        let noStep = #expect(throws: RunMachineError.self) { try unknown.apply(.stepSucceeded(step: "nope", attempt: 1, output: .null)) }
        #expect(noStep?.code == .unknownStep)
        let stale = #expect(throws: RunMachineError.self) { try unknown.apply(.stepSucceeded(step: "a", attempt: 2, output: .null)) }
        #expect(stale?.code == .staleAttempt)
    }

    @Test("inputs are checked against their declared types, with defaults; unknown, missing and mistyped ones are named")
    func inputs() throws {
        let declared = try WorkflowDefinition.read(Self.chain).inputs
        #expect(try RunMachine.inputs(["topic": "go"], for: declared) == ["topic": "go", "words": .int(300)])
        #expect(try RunMachine.inputs(["topic": "go", "words": .int(5)], for: declared)["words"] == .int(5))
        let missing = #expect(throws: RunInputError.self) { try RunMachine.inputs([:], for: declared) }
        #expect(missing?.description == "inputs.topic: is required (string)")
        let mistyped = #expect(throws: RunInputError.self) { try RunMachine.inputs(["topic": .int(3)], for: declared) }
        #expect(mistyped?.description == "inputs.topic: must be string, not the number 3")
        let fraction = #expect(throws: RunInputError.self) { try RunMachine.inputs(["topic": .double(2.5)], for: declared) }
        #expect(fraction?.description == "inputs.topic: must be string, not the number 2.5")
        let unknown = #expect(throws: RunInputError.self) { try RunMachine.inputs(["topic": "a", "word": .int(3)], for: declared) }
        #expect(unknown?.input == "word")
        #expect(unknown?.message.contains("did you mean \"words\"") == true, "\(String(describing: unknown))")
    }

    /// A random DAG of `count` steps, each needing some earlier ones, some with retries, some
    /// continuing on error, some conditional on an earlier step's output.
    static func randomWorkflow(_ count: Int, using random: inout some RandomNumberGenerator) -> String {
        var yaml = "name: random\nsteps:\n"
        for index in 0 ..< count {
            var fields = ["id: s\(index)", "tool: t"]
            let needs = (0 ..< index).filter { _ in Int.random(in: 0 ..< 4, using: &random) == 0 }
            if !needs.isEmpty { fields.append("needs: [\(needs.map { "s\($0)" }.joined(separator: ", "))]") }
            if Bool.random(using: &random) { fields.append("retry: { max_attempts: \(Int.random(in: 1 ... 3, using: &random)), backoff: fixed, initial: 1s }") }
            if Int.random(in: 0 ..< 3, using: &random) == 0 { fields.append("on_error: continue") }
            if Int.random(in: 0 ..< 4, using: &random) == 0 { fields.append("timeout: 1s") }
            if let need = needs.first, Int.random(in: 0 ..< 4, using: &random) == 0 { fields.append("when: \"steps.s\(need).output.go == true\"") }
            yaml += "  - { \(fields.joined(separator: ", ")) }\n"
        }
        return yaml
    }

    @Test("random DAGs under random outcomes, lost workers, timeouts and cancels: every run ends, steps start only after their needs, nothing moves after the end, and every state is reached")
    func randomRuns() throws {
        var random = SystemRandomNumberGenerator()
        var seenRun: Set<RunStatus> = []
        var seenStep: Set<StepStatus> = []
        for trial in 0 ..< 300 {
            let yaml = Self.randomWorkflow(Int.random(in: 1 ... 8, using: &random), using: &random)
            var run = try RunDriver(yaml, seed: UInt64(trial))
            let definition = run.machine.definition
            try run.start()
            var moves = 0
            while !run.machine.status.isFinal {
                moves += 1
                #expect(moves < 500, "the run did not end:\n\(yaml)")
                guard moves < 500 else { break }
                seenStep.formUnion(run.machine.steps.map(\.status))
                let open = run.machine.steps.filter { [.ready, .running, .needsAttention].contains($0.status) }
                guard let step = open.randomElement(using: &random) else {
                    // Only timers can move it: jump to the next wake-up.
                    let wake = try #require(run.machine.nextWakeUp, "stuck with nothing to wait for:\n\(yaml)\n\(run.machine.steps)")
                    run.now = max(run.now, wake)
                    try run.apply(.tick)
                    continue
                }
                run.now += Int64.random(in: 0 ... 1500, using: &random)
                let before = run.effects.count
                switch (step.status, Int.random(in: 0 ..< 10, using: &random)) {
                case (_, 9):
                    // Time passes: attempts past their timeout are cancelled, retries come due.
                    try run.apply(.tick)
                case (.needsAttention, let roll):
                    try run.apply(.resolveAttention(step: step.id, retry: roll < 5, by: "usr_ops"))
                case (.ready, 0):
                    try run.apply(.attemptLost(step: step.id, attempt: step.attempt, mayRepeat: false))
                case (.ready, _):
                    try run.apply(.stepStarted(step: step.id, attempt: step.attempt))
                case (.running, 0):
                    try run.apply(.attemptLost(step: step.id, attempt: step.attempt, mayRepeat: Bool.random(using: &random)))
                case (.running, 1):
                    try run.apply(.stepFailed(step: step.id, attempt: step.attempt, failure: RunFailure(reason: "x", message: "y"), retryable: Bool.random(using: &random)))
                case (.running, 2) where trial % 10 == 0:
                    try run.apply(.cancel(by: "usr_1", reason: ""))
                case (.running, let roll):
                    try run.apply(.stepSucceeded(step: step.id, attempt: step.attempt, output: .map(["go": .bool(roll % 2 == 0)])))
                    // The same report again is stale: refused, and nothing changes.
                    let snapshot = run.machine
                    #expect(throws: RunMachineError.self) { try run.apply(.stepSucceeded(step: step.id, attempt: step.attempt, output: .null)) }
                    #expect(run.machine == snapshot)
                default:
                    break
                }
                // Every dispatch names a step whose needs had all ended.
                for dispatch in Array(run.effects[before...]).dispatches {
                    let needs = try #require(definition.steps.first { $0.id == dispatch.step }).needs
                    #expect(needs.allSatisfy { run.machine.step($0)?.status.isFinal == true }, "\(dispatch.step) dispatched early:\n\(yaml)")
                }
            }
            seenRun.insert(run.machine.status)
            seenStep.formUnion(run.machine.steps.map(\.status))
            #expect(run.machine.steps.allSatisfy { $0.status.isFinal }, "\(run.machine.status) with unfinished steps:\n\(yaml)")
            #expect(run.machine.nextWakeUp == nil)
            let ended = run.machine
            #expect(try run.apply(.tick).isEmpty)
            #expect(run.machine == ended)
        }
        #expect(seenRun.isSuperset(of: [.succeeded, .failed, .cancelled]), "\(seenRun)")
        #expect(seenStep.isSuperset(of: [.pending, .ready, .running, .retrying, .needsAttention, .succeeded, .failed, .skipped, .cancelled]), "\(seenStep)")
    }
}
