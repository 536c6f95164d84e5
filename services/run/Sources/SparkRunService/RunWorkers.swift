import Foundation
import GRPCCore
import Logging
import Metrics
import SQLKit
import ServiceLifecycle
import SparkExpr
import SparkKit
import SparkProto
import SparkWire
import SparkWorkflow
import SwiftProtobuf
import Synchronization

/// A replica's workers: up to `run.workers` tasks at once, claimed in batches sized by the free
/// slots, each under a lease its heartbeat keeps. They wake when a task is added in this
/// process, on a PostgreSQL notification from another, and at the latest every
/// `run.claimIntervalMilliseconds` (for leases that expired and timers that came due).
///
/// At graceful shutdown the workers stop claiming, give the attempts in flight
/// `run.drainSeconds` to finish, and hand back the tasks of those that did not.
final class RunWorkers: ServiceLifecycle.Service, Sendable {
    let engine: RunEngine
    let calls: StepCalls
    let envelopes: RunEnvelopes
    let settings: RunServiceConfig
    let owner: String
    let logger: Logger
    private let running = Atomic<Int>(0)
    private let draining = Atomic<Bool>(false)
    /// Opened once the service's migrations ran: before that there is no queue to claim from.
    let migrated = Atomic<Bool>(false)

    init(engine: RunEngine, calls: StepCalls, envelopes: RunEnvelopes, settings: RunServiceConfig, logger: Logger) {
        self.engine = engine
        self.calls = calls
        self.envelopes = envelopes
        self.settings = settings
        self.owner = "\(ProcessInfo.processInfo.hostName)/\(ProcessInfo.processInfo.processIdentifier)/\(SparkID.make("wrk").suffix(8))"
        self.logger = logger
    }

    var queue: TaskQueue { self.engine.queue }
    var leaseMicros: Int64 { Int64(self.settings.leaseSeconds) * 1_000_000 }

    func run() async throws {
        let (waker, stopWaking) = self.engine.signals.waker()
        defer { stopWaking() }
        await withGracefulShutdownHandler {
            while !self.migrated.load(ordering: .acquiring), !self.draining.load(ordering: .acquiring), !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(50))
            }
            await withDiscardingTaskGroup { group in
                group.addTask { await self.tickTimers() }
                var failing = false
                while !self.draining.load(ordering: .acquiring), !Task.isCancelled {
                    let free = self.settings.workers - self.running.load(ordering: .acquiring)
                    var claimed: [TaskQueue.Claim] = []
                    if free > 0 {
                        do {
                            // A claim that does not answer within a lease (a connection the
                            // database lost without a word) is given up: the loop goes on, and
                            // what the claim took, if it ever answers, is claimed again once its
                            // lease expires.
                            let limit = free
                            claimed = try await Self.answer(within: .seconds(self.settings.leaseSeconds)) {
                                try await self.queue.claim(owner: self.owner, limit: limit, leaseMicros: self.leaseMicros, now: RunStore.now())
                            }
                            failing = false
                        } catch {
                            if !failing { self.logger.warning("could not claim tasks", metadata: ["error": "\(String(reflecting: error).prefix(1000))"]) }
                            failing = true
                        }
                    }
                    for claim in claimed {
                        self.running.add(1, ordering: .acquiringAndReleasing)
                        group.addTask {
                            defer {
                                self.running.subtract(1, ordering: .acquiringAndReleasing)
                                self.engine.signals.tasksAdded()
                            }
                            await self.handle(claim)
                        }
                    }
                    // A full batch: there may be more at once. Otherwise wait for a wake-up.
                    if !claimed.isEmpty, claimed.count == free { continue }
                    await waker.wait(atMost: self.settings.claimInterval)
                }
                // Draining: the attempts in flight have the grace period, then are cancelled
                // (and hand their tasks back).
                let deadline = ContinuousClock.now + .seconds(self.settings.drainSeconds)
                while self.running.load(ordering: .acquiring) > 0, ContinuousClock.now < deadline {
                    try? await Task.sleep(for: .milliseconds(50))
                }
                group.cancelAll()
            }
        } onGracefulShutdown: {
            self.draining.store(true, ordering: .releasing)
            self.engine.signals.tasksAdded()
        }
    }

    struct NoAnswer: Error, CustomStringConvertible {
        var limit: Duration
        var description: String { "no answer within \(self.limit)" }
    }

    /// `body`'s result, or ``NoAnswer`` once `limit` passed; `body` is cancelled then, and left
    /// to finish on its own if it does not heed that.
    static func answer<T: Sendable>(within limit: Duration, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
        let race = FirstAnswer<T>()
        let work = Task {
            do { race.finish(.success(try await body())) } catch { race.finish(.failure(error)) }
        }
        let timer = Task {
            try? await Task.sleep(for: limit)
            if !Task.isCancelled { race.finish(.failure(NoAnswer(limit: limit))) }
        }
        defer {
            work.cancel()
            timer.cancel()
        }
        return try await race.value()
    }

    /// Applies `tick` to runs whose timer is due: retries, attempt and approval timeouts.
    func tickTimers() async {
        while !self.draining.load(ordering: .acquiring), !Task.isCancelled {
            try? await Task.sleep(for: self.settings.claimInterval)
            do {
                let due = try await self.engine.store.store.sql { try await self.engine.store.dueRuns(now: RunStore.now(), limit: 100, on: $0) }
                for runID in due {
                    try await self.engine.transition(runID: runID) { transition, _ in
                        try? transition.apply(.tick)
                    }
                }
            } catch is CancellationError {
                return
            } catch {
                self.logger.warning("could not apply timers", metadata: ["error": "\(String(reflecting: error).prefix(1000))"])
            }
        }
    }

    // MARK: Tasks

    func handle(_ claim: TaskQueue.Claim) async {
        do {
            switch claim.kind {
            case "start":
                let (row, taken) = try await self.engine.takingTransition(runID: claim.payload, completing: claim) { transition, _ -> RunRow in
                    // A run cancelled before a worker took it stays as it is.
                    if transition.machine.status == .queued {
                        try transition.apply(.start)
                        self.takeOver(&transition)
                    }
                    return transition.run
                }
                if let started = Started(taken, run: row) { try await self.attempts(from: started) }
            case "step":
                try await self.handleStep(claim)
            case "release":
                let row = try await self.engine.store.store.sql { try await self.engine.store.run(claim.payload, on: $0) }
                if let row, !row.envelopeID.isEmpty {
                    try await self.envelopes.release(row.envelopeID, projectID: row.projectID, principal: try Sparkops_Common_V1_Principal(jsonString: row.principal))
                }
                guard try await self.engine.store.store.transaction({ try await self.queue.complete(claim, on: $0) }) else { throw RunEngine.StaleLease() }
            default:
                self.logger.error("a task of an unknown kind", metadata: ["kind": "\(claim.kind)", "task": "\(claim.id)"])
                _ = try await self.engine.store.store.transaction { try await self.queue.complete(claim, on: $0) }
            }
        } catch is RunEngine.StaleLease {
            self.logger.info("a task's lease passed to another worker; its late result is dropped", metadata: ["task": "\(claim.id)"])
        } catch is CancellationError {
            _ = try? await self.queue.release(claim, runAt: RunStore.now())
        } catch {
            // Left claimed: its lease expires and it is tried again.
            self.logger.warning("a task failed; it is tried again once its lease expires", metadata: ["task": "\(claim.id)", "error": "\(String(reflecting: error).prefix(1000))"])
        }
    }

    /// What a step task finds when its worker begins it.
    enum Beginning: Sendable {
        /// The attempt is now running, here.
        case started(RunRow, WorkflowStep, grants: [String])
        /// It was running under an earlier claim whose worker stopped.
        case wasRunning(RunRow, WorkflowStep)
        /// The run or the step moved on (cancelled, timed out, retried): the task is done.
        case moved
    }

    func handleStep(_ claim: TaskQueue.Claim) async throws {
        let task = try JSONDecoder().decode(StepTask.self, from: Data(claim.payload.utf8))
        let started = RunStore.now()
        let attemptRow = AttemptRow(
            runID: task.run, stepID: task.step, attempt: task.attempt, status: "running", idempotencyKey: task.key, startedAt: started,
            endedAt: 0, errorReason: "", errorMessage: "", costMicros: 0, callID: "", worker: self.owner
        )
        // One transaction reads where the step stands and, if it is ready, starts the attempt.
        let beginning: Beginning
        do {
            beginning = try await self.engine.transition(runID: task.run) { transition, db -> Beginning in
                let machine = transition.machine
                guard let index = machine.definition.steps.firstIndex(where: { $0.id == task.step }),
                    machine.status == .running, machine.steps[index].attempt == task.attempt,
                    machine.steps[index].status == .ready || machine.steps[index].status == .running
                else {
                    _ = try await self.queue.complete(claim, on: db)
                    return .moved
                }
                let step = machine.definition.steps[index]
                if machine.steps[index].status == .running { return .wasRunning(transition.run, step) }
                try transition.apply(.stepStarted(step: task.step, attempt: task.attempt))
                transition.attempts.append(attemptRow)
                return .started(transition.run, step, grants: transition.machine.steps[index].grants)
            }
        } catch let error as RunMachineError {
            self.logger.info("a step task is out of date", metadata: ["task": "\(claim.id)", "reason": "\(error)"])
            _ = try await self.engine.store.store.transaction { try await self.queue.complete(claim, on: $0) }
            return
        }
        switch beginning {
        case .moved:
            return
        case .wasRunning(let found, let lostStep):
            // The attempt started under an earlier claim whose worker stopped.
            let principal = try Sparkops_Common_V1_Principal(jsonString: found.principal)
            let mayRepeat = await self.calls.mayRepeat(lostStep, projectID: found.projectID, principal: principal)
            self.logger.info(
                mayRepeat ? "an attempt's worker stopped while it ran; it is sent again" : "an attempt's worker stopped while it ran; it may have had effects, so it waits for a human",
                metadata: ["run": "\(found.id)", "step": "\(task.step)", "attempt": "\(task.attempt)"]
            )
            try await self.engine.transition(runID: found.id, completing: claim) { transition, db in
                try transition.apply(.attemptLost(step: task.step, attempt: task.attempt, mayRepeat: mayRepeat))
                if var attempt = try await self.engine.store.attempt(runID: found.id, stepID: task.step, attempt: task.attempt, on: db) {
                    attempt.status = "lost"
                    attempt.endedAt = transition.now
                    transition.attempts.append(attempt)
                }
            }
            return
        case .started(let found, let startedStep, let grants):
            Self.claimedSteps.increment()
            try await self.attempts(from: Started(claim: claim, task: task, run: found, step: startedStep, attemptRow: attemptRow, grants: grants))
        }
    }

    /// A step's attempt that is `running` under a claim of this worker.
    struct Started: Sendable {
        var claim: TaskQueue.Claim
        var task: StepTask
        var run: RunRow
        var step: WorkflowStep
        var attemptRow: AttemptRow
        /// The held calls humans approved for the step: each goes ahead, and no other.
        var grants: [String]

        init(claim: TaskQueue.Claim, task: StepTask, run: RunRow, step: WorkflowStep, attemptRow: AttemptRow, grants: [String]) {
            self.claim = claim
            self.task = task
            self.run = run
            self.step = step
            self.attemptRow = attemptRow
            self.grants = grants
        }

        init?(_ taken: RunEngine.Taken?, run: RunRow) {
            guard let taken, let claim = taken.claim else { return nil }
            RunWorkers.takenSteps.increment()
            self.init(claim: claim, task: taken.task, run: run, step: taken.step, attemptRow: taken.attemptRow, grants: taken.grants)
        }
    }

    /// Attempts started by claiming their task, and by the worker whose commit dispatched them.
    static let claimedSteps = Counter(label: "sparkops_run_steps_started_total", dimensions: [("how", "claimed")])
    static let takenSteps = Counter(label: "sparkops_run_steps_started_total", dimensions: [("how", "taken_over")])

    /// Lets this worker start the first step a transition dispatches, unless it is draining
    /// (see ``RunEngine/Transition/takeOver``).
    func takeOver(_ transition: inout RunEngine.Transition) {
        guard self.settings.takeOver, !self.draining.load(ordering: .acquiring), !Task.isCancelled else { return }
        _ = transition.takeOver(owner: self.owner, leaseMicros: self.leaseMicros)
    }

    /// Runs `first`, then each step that the transition recording an attempt's end dispatched
    /// and this worker took over, in this worker's slot.
    func attempts(from first: Started) async throws {
        var next: Started? = first
        while let started = next {
            next = try await self.attempt(started)
        }
    }

    /// Sends a started attempt's call under its lease and records its end; the step that
    /// transition dispatched and took over, if any.
    func attempt(_ started: Started) async throws -> Started? {
        let (claim, task, row, step, attemptRow) = (started.claim, started.task, started.run, started.step, started.attemptRow)
        let principal = try Sparkops_Common_V1_Principal(jsonString: row.principal)
        let key = "\(row.id)/\(task.step)/\(task.attempt)"
        let answered = await self.withLease(claim, attempt: key) {
            await self.calls.call(step, task: task, run: row, grants: started.grants, principal: principal)
        }
        guard var checked = answered else { throw RunEngine.StaleLease() }
        if Task.isCancelled {
            // Draining: the task goes back, and whoever takes it finds the attempt started.
            _ = try? await self.queue.release(claim, runAt: RunStore.now())
            return nil
        }
        if checked.mayHaveRun, case .failed(let failure, _) = checked.result, case .tool = step.kind,
            await !self.calls.mayRepeat(step, projectID: row.projectID, principal: principal)
        {
            // No answer (the tool service died, the step's timeout stopped the call, the key was
            // still busy): the call may have run, and the tool must not run twice. A timeout
            // never turns "may have started" into "did not happen".
            checked.result = .lost("no answer says what became of the call (\(failure.message)); the tool is non_idempotent, so it is not sent again: check its effect, then retry or skip the step")
        }
        let outcome = checked
        let (_, taken) = try await self.engine.takingTransition(runID: row.id, completing: claim) { transition, _ in
            var attempt = attemptRow
            attempt.endedAt = transition.now
            attempt.costMicros = outcome.costMicros
            attempt.callID = outcome.callID
            transition.costMicros += outcome.costMicros
            do {
                switch outcome.result {
                case .succeeded(let output):
                    attempt.status = "succeeded"
                    try transition.apply(.stepSucceeded(step: task.step, attempt: task.attempt, output: output))
                case .failed(let failure, let retryable):
                    attempt.status = "failed"
                    attempt.errorReason = failure.reason
                    attempt.errorMessage = failure.message
                    try transition.apply(.stepFailed(step: task.step, attempt: task.attempt, failure: failure, retryable: retryable))
                case .lost(let message):
                    attempt.status = "lost"
                    attempt.errorReason = "lost"
                    attempt.errorMessage = message
                    try transition.apply(.attemptLost(step: task.step, attempt: task.attempt, mayRepeat: false))
                case .held(let message, let call):
                    attempt.status = "held"
                    attempt.errorReason = "approval_required"
                    attempt.errorMessage = message
                    try transition.apply(.stepHeld(step: task.step, attempt: task.attempt, message: message, approvers: [], call: call.map(Self.value)))
                }
            } catch {
                // Cancelled or timed out meanwhile: the attempt's record stays as the machine left it.
                attempt.status = "cancelled"
            }
            transition.attempts.append(attempt)
            self.takeOver(&transition)
        }
        return Started(taken, run: row)
    }

    /// Runs `body` while a heartbeat keeps the claim's lease; the call is cancelled when the lease
    /// is lost, when a transition in this process stops the attempt, or when the worker drains.
    /// Nil when the lease was lost: what the call returned is not this worker's to report.
    func withLease<T: Sendable>(_ claim: TaskQueue.Claim, attempt key: String, _ body: @escaping @Sendable () async -> T) async -> T? {
        let lost = Atomic<Bool>(false)
        let call = Task { await body() }
        let heartbeat = Task {
            let interval = Duration.seconds(max(1, self.settings.leaseSeconds / 3))
            while !Task.isCancelled {
                try? await Task.sleep(for: interval)
                guard !Task.isCancelled else { return }
                // A heartbeat that cannot reach the store is tried again; one refused means the
                // lease is another's.
                if let kept = try? await self.queue.heartbeat(claim, until: RunStore.now() + self.leaseMicros), !kept {
                    lost.store(true, ordering: .releasing)
                    call.cancel()
                    return
                }
            }
        }
        self.engine.signals.running(attempt: key) { call.cancel() }
        let value = await withTaskCancellationHandler {
            await call.value
        } onCancel: {
            call.cancel()
        }
        self.engine.signals.finished(attempt: key)
        heartbeat.cancel()
        return lost.load(ordering: .acquiring) ? nil : value
    }
}

/// The first of several results, for one waiter.
final class FirstAnswer<T: Sendable>: Sendable {
    private let state = Mutex<(result: Result<T, any Error>?, waiter: CheckedContinuation<T, any Error>?)>((nil, nil))

    func finish(_ result: Result<T, any Error>) {
        let waiter = self.state.withLock { state -> CheckedContinuation<T, any Error>? in
            guard state.result == nil else { return nil }
            state.result = result
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume(with: result)
    }

    func value() async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            let ready = self.state.withLock { state -> Result<T, any Error>? in
                if let result = state.result { return result }
                state.waiter = continuation
                return nil
            }
            if let ready { continuation.resume(with: ready) }
        }
    }
}

extension RunWorkers {
    /// A held call as the run's state and its approval keep it.
    static func value(_ call: Sparkops_Common_V1_HeldCall) -> ExprValue {
        .map([
            "kind": .string(call.kind), "target": .string(call.target), "arguments": (try? call.arguments.value(field: "arguments")) ?? .null,
            "digest": .string(call.digest), "rule": .string(call.rule), "message": .string(call.message), "violation_id": .string(call.violationID),
            "exclude_starter": .bool(call.excludeStarter),
        ])
    }
}
