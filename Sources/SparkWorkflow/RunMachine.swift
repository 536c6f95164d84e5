public import SparkExpr

/// Where a run stands (docs/runs.md): `pending → queued | awaiting_approval | rejected`,
/// `queued → running → succeeded | failed | cancelled | timed_out`.
public enum RunStatus: String, Sendable, Hashable, CaseIterable {
    case pending, queued, running, succeeded, failed, cancelled, rejected
    case awaitingApproval = "awaiting_approval"
    case timedOut = "timed_out"

    /// A run in a final state never changes again.
    public var isFinal: Bool {
        switch self {
        case .succeeded, .failed, .cancelled, .rejected, .timedOut: return true
        case .pending, .queued, .running, .awaitingApproval: return false
        }
    }
}

/// Where a step stands in its run (docs/runs.md).
public enum StepStatus: String, Sendable, Hashable, CaseIterable {
    case pending, ready, running, retrying, succeeded, failed, skipped, cancelled
    case awaitingApproval = "awaiting_approval"
    case needsAttention = "needs_attention"

    public var isFinal: Bool {
        switch self {
        case .succeeded, .failed, .skipped, .cancelled: return true
        case .pending, .ready, .running, .retrying, .awaitingApproval, .needsAttention: return false
        }
    }
}

/// Why a step or a run failed: a reason a program can branch on, and a message for people.
public struct RunFailure: Error, Sendable, Hashable, CustomStringConvertible {
    public var reason: String
    public var message: String

    public init(reason: String, message: String) {
        self.reason = reason
        self.message = message
    }

    public var description: String { "\(self.reason): \(self.message)" }

    /// As `steps.<id>.error` reads it.
    var value: ExprValue { .map(["reason": .string(self.reason), "message": .string(self.message)]) }
}

/// One step's state in a run.
public struct StepState: Sendable, Hashable {
    public var id: String
    public var status: StepStatus = .pending
    /// The current or last attempt, from 1; 0 before the first.
    public var attempt = 0
    public var output: ExprValue = .null
    public var error: RunFailure?
    /// While `retrying`: when the next attempt becomes ready (milliseconds since 1970).
    public var retryAt: Int64?
    /// While `running`: when the attempt times out.
    public var deadline: Int64?
    /// While `awaiting_approval`: when the approval runs out (and rejects).
    public var approvalExpiresAt: Int64?
    /// A policy's hold on this attempt was approved: the attempt goes ahead with that grant.
    public var approved = false
    /// The digests of the held calls humans approved for this attempt: each of those calls goes
    /// ahead, and any other call a policy holds waits for its own decision.
    public var grants: [String] = []
    /// While awaiting approval of a held call: that call (kind, target, arguments, digest, rule).
    public var heldCall: ExprValue?
    /// A tool step's attempt ran past its timeout and was told to stop: its worker's report
    /// (or the loss of its worker) says whether the call may have run, and so what comes next.
    public var timedOut = false

    public init(id: String) {
        self.id = id
    }
}

/// What a transition asks the run service to do. It stores the machine and these effects in one
/// transaction, then acts on them.
public enum RunEffect: Sendable, Hashable {
    /// Queue an attempt of a tool or agent step for a worker, with its arguments rendered.
    case dispatch(step: String, attempt: Int, arguments: ExprValue, idempotencyKey: String, approved: Bool)
    /// Ask a human: for the run itself (`step` nil) or for one step.
    case requestApproval(step: String?, message: String, approvers: [String], expiresAt: Int64?, call: ExprValue? = nil)
    /// Stop an attempt that is running (cancellation reaches it over SparkWire).
    case cancelAttempt(step: String, attempt: Int)
    /// Append this event to the run's history.
    case event(RunEvent)
}

/// One entry of a run's history: `run.<status>` or `step.<status>`.
public struct RunEvent: Sendable, Hashable {
    public var kind: String
    public var step: String?
    public var attempt: Int?
    public var message: String

    public init(kind: String, step: String? = nil, attempt: Int? = nil, message: String = "") {
        self.kind = kind
        self.step = step
        self.attempt = attempt
        self.message = message
    }
}

/// What happens to a run, as the run service learns it.
public enum RunInput: Sendable, Hashable {
    /// The policy allowed the run: `pending → queued`.
    case admit
    /// The policy requires a human's approval first: `pending → awaiting_approval`.
    case hold(message: String, approvers: [String], call: ExprValue? = nil)
    case approveRun(by: String)
    case rejectRun(by: String, reason: String)
    /// A worker takes the run: `queued → running`, and the first steps become ready.
    case start
    /// A worker began the attempt.
    case stepStarted(step: String, attempt: Int)
    case stepSucceeded(step: String, attempt: Int, output: ExprValue)
    /// The attempt failed; `retryable` false (a bad request, a denial) fails it without retries.
    case stepFailed(step: String, attempt: Int, failure: RunFailure, retryable: Bool)
    /// A policy requires approval of something the attempt was about to do; nothing was done.
    case stepHeld(step: String, attempt: Int, message: String, approvers: [String], call: ExprValue? = nil)
    case approveStep(step: String, by: String, comment: String)
    case rejectStep(step: String, by: String, reason: String)
    /// The attempt's worker vanished (its lease expired). `mayRepeat`: the step's effects are
    /// safe to repeat (side effects `none` or `idempotent`); otherwise a human decides.
    case attemptLost(step: String, attempt: Int, mayRepeat: Bool)
    /// A human's choice for a step in `needs_attention`: a new attempt, or skip it.
    case resolveAttention(step: String, retry: Bool, by: String)
    case cancel(by: String, reason: String)
    /// Time passed: retries come due, attempts and approvals time out, the run's deadline passes.
    case tick
}

/// Why an input does not apply to the run as it stands.
public struct RunMachineError: Error, Sendable, Hashable, CustomStringConvertible {
    public enum Code: Sendable, Hashable {
        /// The run or step is not in a state the input applies to (a finished run cancelled,
        /// an approval decided twice).
        case wrongState
        /// The input names an attempt that is not the step's current one: a worker that lost its
        /// lease reporting late. It must not overwrite what happened since.
        case staleAttempt
        case unknownStep
    }

    public var code: Code
    public var message: String

    public var description: String { self.message }
}

/// A run of one workflow version as a value: its status, each step's state, its outputs. Every
/// input gives a new state and the effects to carry out; nothing here does I/O or reads a clock,
/// so that every transition is tested as it is and replayed as it was (docs/runs.md).
public struct RunMachine: Sendable, Hashable {
    public let runID: String
    public let definition: WorkflowDefinition
    public let inputs: [String: ExprValue]
    /// When the run times out as a whole (milliseconds since 1970), if it does.
    public let deadline: Int64?
    public private(set) var status: RunStatus = .pending
    public private(set) var steps: [StepState]
    public private(set) var outputs: [String: ExprValue] = [:]
    public private(set) var failure: RunFailure?
    /// The state of the retries' jitter: a run's delays are the same each time it is replayed.
    private var random: UInt64

    public init(runID: String, definition: WorkflowDefinition, inputs: [String: ExprValue], seed: UInt64, deadline: Int64? = nil) {
        self.runID = runID
        self.definition = definition
        self.inputs = inputs
        self.deadline = deadline
        self.steps = definition.steps.map { StepState(id: $0.id) }
        self.random = seed
    }

    /// A machine for a run made by `RerunFrom`: the steps in `reused` start as succeeded, with the
    /// outputs the original run gave them, and run no more.
    public init(runID: String, definition: WorkflowDefinition, inputs: [String: ExprValue], seed: UInt64, deadline: Int64? = nil, reusing reused: [String: ExprValue]) {
        self.init(runID: runID, definition: definition, inputs: inputs, seed: seed, deadline: deadline)
        for index in self.steps.indices {
            guard let output = reused[self.steps[index].id] else { continue }
            self.steps[index].status = .succeeded
            self.steps[index].output = output
        }
    }

    /// The jitter's state, for the snapshot.
    var randomState: UInt64 { self.random }

    /// Puts back what a snapshot recorded.
    mutating func restore(status: RunStatus, steps: [StepState], outputs: [String: ExprValue], failure: RunFailure?) {
        self.status = status
        self.steps = steps
        self.outputs = outputs
        self.failure = failure
    }

    public func step(_ id: String) -> StepState? {
        self.steps.first { $0.id == id }
    }

    /// The earliest time a `tick` can change something: a retry due, an attempt's or an
    /// approval's timeout, the run's deadline. Nil when only an outside input can.
    public var nextWakeUp: Int64? {
        guard !self.status.isFinal else { return nil }
        let times = self.steps.compactMap { state -> Int64? in
            switch state.status {
            case .retrying: return state.retryAt
            case .running: return state.deadline
            case .awaitingApproval: return state.approvalExpiresAt
            default: return nil
            }
        }
        return (times + [self.deadline].compactMap { $0 }).min()
    }

    /// Applies `input` at `now` (milliseconds since 1970): the new state, and what to do.
    public mutating func apply(_ input: RunInput, now: Int64) throws(RunMachineError) -> [RunEffect] {
        var effects: [RunEffect] = []
        switch input {
        case .admit:
            try self.expectRun(.pending, for: "admit")
            self.setRun(.queued, &effects)
        case .hold(let message, let approvers, let call):
            try self.expectRun(.pending, for: "hold")
            self.setRun(.awaitingApproval, message: message, &effects)
            effects.append(.requestApproval(step: nil, message: message, approvers: approvers, expiresAt: nil, call: call))
        case .approveRun(let by):
            try self.expectRun(.awaitingApproval, for: "approve")
            self.setRun(.queued, message: "approved by \(by)", &effects)
        case .rejectRun(let by, let reason):
            try self.expectRun(.awaitingApproval, for: "reject")
            self.failure = RunFailure(reason: "rejected", message: "rejected by \(by)\(reason.isEmpty ? "" : ": \(reason)")")
            self.setRun(.rejected, message: self.failure!.message, &effects)
        case .start:
            try self.expectRun(.queued, for: "start")
            self.setRun(.running, &effects)
            self.advance(now: now, &effects)
        case .stepStarted(let id, let attempt):
            let index = try self.current(id, attempt, in: [.ready])
            let step = self.definition.steps[index]
            self.steps[index].deadline = step.timeout.map { now + $0.milliseconds }
            self.steps[index].timedOut = false
            self.setStep(index, .running, &effects)
        case .stepSucceeded(let id, let attempt, let output):
            let index = try self.current(id, attempt, in: [.running])
            self.steps[index].output = output
            self.steps[index].error = nil
            self.steps[index].deadline = nil
            self.steps[index].timedOut = false
            self.setStep(index, .succeeded, &effects)
            self.advance(now: now, &effects)
        case .stepFailed(let id, let attempt, let failure, let retryable):
            let index = try self.current(id, attempt, in: [.running, .ready])
            // A call stopped at its timeout fails as a timeout, whatever its stop looked like.
            self.fail(index, self.steps[index].timedOut ? self.timeoutFailure(index) : failure, retryable: retryable, now: now, &effects)
        case .stepHeld(let id, let attempt, let message, let approvers, let call):
            let index = try self.current(id, attempt, in: [.running])
            self.steps[index].deadline = nil
            self.steps[index].heldCall = call
            self.setStep(index, .awaitingApproval, message: message, &effects)
            effects.append(.requestApproval(step: id, message: message, approvers: approvers, expiresAt: nil, call: call))
        case .approveStep(let id, let by, let comment):
            let index = try self.index(id, in: [.awaitingApproval], for: "approve")
            self.steps[index].approvalExpiresAt = nil
            if case .approval = self.definition.steps[index].kind {
                self.steps[index].output = .map(["approved": .bool(true), "by": .string(by), "comment": .string(comment)])
                self.setStep(index, .succeeded, message: "approved by \(by)", &effects)
                self.advance(now: now, &effects)
            } else {
                // A policy's hold: the same attempt goes ahead, with the grant of the held call.
                self.steps[index].approved = true
                if case .map(let call)? = self.steps[index].heldCall, case .string(let digest)? = call["digest"], !self.steps[index].grants.contains(digest) {
                    self.steps[index].grants.append(digest)
                }
                self.steps[index].heldCall = nil
                self.setStep(index, .ready, message: "approved by \(by)", &effects)
                self.dispatch(index, now: now, &effects)
            }
        case .rejectStep(let id, let by, let reason):
            let index = try self.index(id, in: [.awaitingApproval], for: "reject")
            self.steps[index].approvalExpiresAt = nil
            self.steps[index].heldCall = nil
            let message = "rejected by \(by)\(reason.isEmpty ? "" : ": \(reason)")"
            self.fail(index, RunFailure(reason: "rejected", message: message), retryable: false, now: now, &effects)
        case .attemptLost(let id, let attempt, let mayRepeat):
            let index = try self.current(id, attempt, in: [.ready, .running])
            self.steps[index].deadline = nil
            let timedOut = self.steps[index].timedOut
            self.steps[index].timedOut = false
            if timedOut && mayRepeat {
                // Past its timeout, and safe to repeat: a timeout like any other.
                self.fail(index, self.timeoutFailure(index), retryable: true, now: now, &effects)
            } else if self.steps[index].status == .ready || mayRepeat {
                // Nothing started, or repeating is harmless: the same attempt again, with the same
                // idempotency key, so that a call that did finish is replayed rather than redone.
                self.setStep(index, .ready, message: "its worker stopped; the attempt is sent again", &effects)
                self.dispatch(index, now: now, &effects)
            } else {
                self.setStep(index, .needsAttention, message: "its worker stopped while a call with side effects may have started; retry or skip it", &effects)
            }
        case .resolveAttention(let id, let retry, let by):
            let index = try self.index(id, in: [.needsAttention], for: retry ? "retry" : "skip")
            if retry {
                self.steps[index].attempt += 1
                self.steps[index].approved = false
                self.steps[index].grants = []
                self.setStep(index, .ready, message: "retried by \(by)", &effects)
                self.dispatch(index, now: now, &effects)
            } else {
                self.setStep(index, .skipped, message: "skipped by \(by)", &effects)
                self.advance(now: now, &effects)
            }
        case .cancel(let by, let reason):
            guard !self.status.isFinal else {
                throw RunMachineError(code: .wrongState, message: "the run is \(self.status.rawValue) already; only an unfinished run can be cancelled")
            }
            self.failure = RunFailure(reason: "cancelled", message: "cancelled by \(by)\(reason.isEmpty ? "" : ": \(reason)")")
            self.stopSteps(&effects)
            self.setRun(.cancelled, message: self.failure!.message, &effects)
        case .tick:
            self.tick(now: now, &effects)
        }
        return effects
    }

    // MARK: Transitions

    private mutating func tick(now: Int64, _ effects: inout [RunEffect]) {
        guard !self.status.isFinal else { return }
        if let deadline = self.deadline, now >= deadline {
            self.failure = RunFailure(reason: "timeout", message: "the run ran past its timeout")
            self.stopSteps(&effects)
            self.setRun(.timedOut, message: self.failure!.message, &effects)
            return
        }
        guard self.status == .running else { return }
        for index in self.steps.indices {
            guard !self.status.isFinal else { return }
            let state = self.steps[index]
            if state.status == .retrying, let at = state.retryAt, now >= at {
                self.steps[index].retryAt = nil
                self.steps[index].attempt += 1
                self.steps[index].approved = false
                self.steps[index].grants = []
                self.setStep(index, .ready, &effects)
                self.dispatch(index, now: now, &effects)
            } else if state.status == .running, let deadline = state.deadline, now >= deadline {
                effects.append(.cancelAttempt(step: state.id, attempt: state.attempt))
                if case .tool = self.definition.steps[index].kind {
                    // The call may have reached the tool: not retried here under a new key while
                    // it may still run. Its worker reports what became of it (a failure, or a
                    // loss that sends a non_idempotent step to a human).
                    self.steps[index].deadline = nil
                    self.steps[index].timedOut = true
                } else {
                    self.fail(index, self.timeoutFailure(index), retryable: true, now: now, &effects)
                }
            } else if state.status == .awaitingApproval, let expires = state.approvalExpiresAt, now >= expires {
                self.steps[index].approvalExpiresAt = nil
                self.fail(index, RunFailure(reason: "approval_timeout", message: "no one decided in time, so the step is rejected"), retryable: false, now: now, &effects)
            }
        }
    }

    /// How an attempt past its step's timeout fails.
    private func timeoutFailure(_ index: Int) -> RunFailure {
        let timeout = self.definition.steps[index].timeout.map(\.description) ?? ""
        return RunFailure(reason: "timeout", message: "attempt \(self.steps[index].attempt) ran past its timeout of \(timeout)")
    }

    /// A value as an error names it, in JSON's words: `the number 5` (JSON has one kind of
    /// number, so a message never says int or double), `the string "5"`, `a list`, `an object`.
    static func describe(_ value: ExprValue) -> String {
        switch value {
        case .null: return "null"
        case .bool(let flag): return "the boolean \(flag)"
        case .int(let number): return "the number \(number)"
        case .double, .number: return "the number \(value.jsonText)"
        case .string(let text): return "the string \(String(text.prefix(40)).debugDescription)"
        case .list: return "a list"
        case .map: return "an object"
        }
    }

    /// A failed attempt: another one after the backoff if the step has attempts left and the
    /// failure may pass; otherwise the step fails, and with `on_error: fail` the run with it.
    private mutating func fail(_ index: Int, _ failure: RunFailure, retryable: Bool, now: Int64, _ effects: inout [RunEffect]) {
        let step = self.definition.steps[index]
        self.steps[index].deadline = nil
        self.steps[index].timedOut = false
        self.steps[index].error = failure
        if retryable, self.steps[index].attempt < step.retry.maxAttempts {
            let delay = self.backoff(step.retry, after: self.steps[index].attempt)
            self.steps[index].retryAt = now + delay
            self.setStep(index, .retrying, message: "\(failure); attempt \(self.steps[index].attempt + 1) in \(WorkflowDuration(milliseconds: max(delay, 1)))", &effects)
            return
        }
        self.setStep(index, .failed, message: failure.description, &effects)
        if step.onError == .fail {
            self.failure = RunFailure(reason: "step_failed", message: "step \(step.id) failed: \(failure)")
            self.stopSteps(&effects)
            self.setRun(.failed, message: self.failure!.message, &effects)
        } else {
            self.advance(now: now, &effects)
        }
    }

    /// The delay before the attempt after `attempt`: `fixed` waits `initial`; `exponential` waits
    /// `initial × 2^(attempt−1)` up to `max`, of which a random half (equal jitter), so that
    /// steps failing together do not retry together.
    mutating func backoff(_ retry: WorkflowStep.Retry, after attempt: Int) -> Int64 {
        switch retry.backoff {
        case .fixed:
            return retry.initial.milliseconds
        case .exponential:
            let doublings = Int64(1) << Int64(min(max(attempt - 1, 0), 40))
            let (scaled, overflow) = retry.initial.milliseconds.multipliedReportingOverflow(by: doublings)
            let ceiling = overflow ? retry.maximum.milliseconds : min(scaled, retry.maximum.milliseconds)
            let half = ceiling / 2
            return ceiling - half + Int64(self.nextRandom() % UInt64(half + 1))
        }
    }

    /// SplitMix64: small, fast, and the same sequence for the same seed.
    private mutating func nextRandom() -> UInt64 {
        self.random &+= 0x9E37_79B9_7F4A_7C15
        var z = self.random
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Moves every pending step whose needs are all final: skipped, failed (a `when` or its
    /// arguments did not evaluate), ready (dispatched) or awaiting approval; again until nothing
    /// moves. Then a run with every step final succeeds, with its outputs.
    private mutating func advance(now: Int64, _ effects: inout [RunEffect]) {
        var moved = true
        while moved, self.status == .running {
            moved = false
            for index in self.steps.indices where self.steps[index].status == .pending {
                let step = self.definition.steps[index]
                let needs = step.needs.compactMap { need in self.steps.first { $0.id == need } }
                guard needs.allSatisfy({ $0.status.isFinal }) else { continue }
                moved = true
                let anySkipped = needs.contains { $0.status == .skipped }
                if let when = step.when {
                    switch self.condition(when) {
                    case .success(false):
                        self.setStep(index, .skipped, message: "its condition is false", &effects)
                        continue
                    case .success(true):
                        break
                    case .failure(let failure):
                        self.fail(index, failure, retryable: false, now: now, &effects)
                        continue
                    }
                } else if anySkipped {
                    // A step after a skipped one is skipped too, unless its own `when` decides.
                    let skipped = needs.filter { $0.status == .skipped }.map(\.id)
                    self.setStep(index, .skipped, message: "it needs \(skipped.joined(separator: ", ")), which was skipped", &effects)
                    continue
                }
                self.steps[index].attempt = 1
                self.setStep(index, .ready, &effects)
                self.dispatch(index, now: now, &effects)
                guard self.status == .running else { return }
            }
        }
        guard self.status == .running, self.steps.allSatisfy({ $0.status.isFinal }) else { return }
        let environment = self.environment
        var outputs: [String: ExprValue] = [:]
        for (name, source) in self.definition.outputs {
            do {
                outputs[name] = try Self.render(source, in: environment)
            } catch {
                self.failure = RunFailure(reason: "outputs", message: "outputs.\(name): \(error.message)")
                self.setRun(.failed, message: self.failure!.message, &effects)
                return
            }
        }
        self.outputs = outputs
        self.setRun(.succeeded, &effects)
    }

    /// A ready step's next move: an approval step waits for a human; a tool or agent step is
    /// queued with its arguments rendered (arguments that do not render fail it).
    private mutating func dispatch(_ index: Int, now: Int64, _ effects: inout [RunEffect]) {
        let step = self.definition.steps[index]
        let environment = self.environment
        if case .approval(let approval) = step.kind {
            let message: String
            do {
                message = approval.message.contains("${{") ? try Self.render(approval.message, in: environment).templateText : approval.message
            } catch {
                self.fail(index, RunFailure(reason: "arguments", message: "approval.message: \(error.message)"), retryable: false, now: now, &effects)
                return
            }
            self.steps[index].approvalExpiresAt = approval.timeout.map { now + $0.milliseconds }
            self.setStep(index, .awaitingApproval, message: message, &effects)
            effects.append(.requestApproval(step: step.id, message: message, approvers: approval.approvers, expiresAt: self.steps[index].approvalExpiresAt))
            return
        }
        let arguments: ExprValue
        do {
            arguments = try Self.renderTemplates(in: step.with, environment: environment, field: "with")
        } catch {
            self.fail(index, RunFailure(reason: "arguments", message: "\(error.field): \(error.message)"), retryable: false, now: now, &effects)
            return
        }
        let state = self.steps[index]
        effects.append(.dispatch(
            step: step.id, attempt: state.attempt, arguments: arguments,
            idempotencyKey: "\(self.runID)/\(step.id)/\(state.attempt)", approved: state.approved
        ))
    }

    /// Stops whatever is under way: running attempts are cancelled, and no step that has not
    /// finished will start.
    private mutating func stopSteps(_ effects: inout [RunEffect]) {
        for index in self.steps.indices where !self.steps[index].status.isFinal {
            if self.steps[index].status == .running {
                effects.append(.cancelAttempt(step: self.steps[index].id, attempt: self.steps[index].attempt))
            }
            self.steps[index].retryAt = nil
            self.steps[index].deadline = nil
            self.steps[index].approvalExpiresAt = nil
            self.setStep(index, .cancelled, &effects)
        }
    }

    private mutating func setRun(_ status: RunStatus, message: String = "", _ effects: inout [RunEffect]) {
        self.status = status
        effects.append(.event(RunEvent(kind: "run.\(status.rawValue)", message: message)))
    }

    private mutating func setStep(_ index: Int, _ status: StepStatus, message: String = "", _ effects: inout [RunEffect]) {
        self.steps[index].status = status
        let attempt = self.steps[index].attempt
        effects.append(.event(RunEvent(kind: "step.\(status.rawValue)", step: self.steps[index].id, attempt: attempt > 0 ? attempt : nil, message: message)))
    }

    // MARK: Checks

    private func expectRun(_ expected: RunStatus, for action: String) throws(RunMachineError) {
        guard self.status == expected else {
            throw RunMachineError(code: .wrongState, message: "cannot \(action) a run that is \(self.status.rawValue) (only a \(expected.rawValue) one)")
        }
    }

    private func index(_ id: String, in states: Set<StepStatus>, for action: String) throws(RunMachineError) -> Int {
        guard let index = self.steps.firstIndex(where: { $0.id == id }) else {
            throw RunMachineError(code: .unknownStep, message: "the run has no step \(id.debugDescription)")
        }
        guard self.status == .running, states.contains(self.steps[index].status) else {
            let expected = states.map(\.rawValue).sorted().joined(separator: " or ")
            throw RunMachineError(
                code: .wrongState,
                message: "cannot \(action) step \(id): it is \(self.steps[index].status.rawValue) in a run that is \(self.status.rawValue) (only a \(expected) step of a running run)"
            )
        }
        return index
    }

    /// The step's index when `attempt` is its current attempt and it is in one of `states`.
    private func current(_ id: String, _ attempt: Int, in states: Set<StepStatus>) throws(RunMachineError) -> Int {
        guard let index = self.steps.firstIndex(where: { $0.id == id }) else {
            throw RunMachineError(code: .unknownStep, message: "the run has no step \(id.debugDescription)")
        }
        let state = self.steps[index]
        guard self.status == .running, state.attempt == attempt, states.contains(state.status) else {
            throw RunMachineError(
                code: .staleAttempt,
                message: "step \(id) attempt \(attempt) is not under way (the step is \(state.status.rawValue) at attempt \(state.attempt), the run \(self.status.rawValue))"
            )
        }
        return index
    }

    // MARK: Expressions

    /// What expressions in the run read: `inputs.<name>`, and `steps.<id>.output`, `.status`,
    /// `.attempts` and `.error` of every step.
    public var environment: [String: ExprValue] {
        var steps: [String: ExprValue] = [:]
        for state in self.steps {
            steps[state.id] = .map([
                "output": state.output, "status": .string(state.status.rawValue),
                "attempts": .int(Int64(state.attempt)), "error": state.error?.value ?? .null,
            ])
        }
        return ["inputs": .map(self.inputs), "steps": .map(steps)]
    }

    private func condition(_ source: String) -> Result<Bool, RunFailure> {
        do {
            // With or without ${{ }} around it, as the workflow reader accepts it.
            let value = source.contains("${{") ? try Self.render(source, in: self.environment) : try Expr.parse(source).evaluate(in: self.environment)
            guard case .bool(let holds) = value else {
                return .failure(RunFailure(reason: "condition", message: "when: is \(value.typeName), not bool"))
            }
            return .success(holds)
        } catch {
            return .failure(RunFailure(reason: "condition", message: "when: \(error.message)"))
        }
    }

    static func render(_ source: String, in environment: [String: ExprValue]) throws(ExprError) -> ExprValue {
        try ExprTemplate.parse(source).render(in: environment)
    }

    struct RenderError: Error {
        var field: String
        var message: String
    }

    /// `value` with every string that holds `${{ … }}` replaced by what it renders to.
    static func renderTemplates(in value: ExprValue, environment: [String: ExprValue], field: String) throws(RenderError) -> ExprValue {
        switch value {
        case .string(let text) where text.contains("${{"):
            do {
                return try Self.render(text, in: environment)
            } catch {
                throw RenderError(field: field, message: error.message)
            }
        case .list(let items):
            var out: [ExprValue] = []
            for (index, item) in items.enumerated() {
                out.append(try Self.renderTemplates(in: item, environment: environment, field: "\(field)[\(index)]"))
            }
            return .list(out)
        case .map(let fields):
            var out: [String: ExprValue] = [:]
            for (key, item) in fields {
                out[key] = try Self.renderTemplates(in: item, environment: environment, field: "\(field).\(key)")
            }
            return .map(out)
        default:
            return value
        }
    }
}

extension RunMachine {
    /// The inputs a run starts with: `given` checked against the workflow's declared inputs, with
    /// defaults filled in. Throws naming the first input that is unknown, missing or of the wrong type.
    public static func inputs(_ given: [String: ExprValue], for declared: [WorkflowInput]) throws(RunInputError) -> [String: ExprValue] {
        let known = Set(declared.map(\.name))
        if let unknown = given.keys.sorted().first(where: { !known.contains($0) }) {
            let hint = NameSuggestion.closest(to: unknown, in: declared.map(\.name)).map { "; did you mean \($0.debugDescription)?" } ?? ""
            throw RunInputError(input: unknown, message: "the workflow declares no input \(unknown.debugDescription)\(hint)")
        }
        var out: [String: ExprValue] = [:]
        for input in declared {
            if var value = given[input.name], value != .null {
                // JSON has one kind of number: a whole one is an integer where one is declared.
                // (`3.0` and `2E3` are the integers 3 and 2000; `-0` stays as written.)
                if input.type == .integer, let number = value.wholeDouble, number.rounded() == number, abs(number) < 9_007_199_254_740_992 {
                    value = .int(Int64(number))
                }
                guard input.type.admits(value) else {
                    throw RunInputError(input: input.name, message: "must be \(input.type.rawValue), not \(Self.describe(value))")
                }
                out[input.name] = value
            } else if let value = input.defaultValue {
                out[input.name] = value
            } else if input.required {
                throw RunInputError(input: input.name, message: "is required (\(input.type.rawValue))")
            } else {
                out[input.name] = .null
            }
        }
        return out
    }
}

/// An input of a run that its workflow does not accept.
public struct RunInputError: Error, Sendable, Hashable, CustomStringConvertible {
    public var input: String
    public var message: String

    public var description: String { "inputs.\(self.input): \(self.message)" }
}

extension ExprValue {
    /// A double's value, or that of a number kept as written other than an integer beyond 64
    /// bits: what may stand for a whole number given in another form.
    fileprivate var wholeDouble: Double? {
        switch self {
        case .double(let number): return number
        case .number(let text) where !ExprNumber.isIntegral(text): return Double(text)
        default: return nil
        }
    }
}
