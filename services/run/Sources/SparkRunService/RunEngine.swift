import Foundation
import Logging
import SQLKit
import SparkExpr
import SparkKit
import SparkProto
import SparkWorkflow
import Synchronization

/// A tool or agent step's attempt, queued for a worker.
struct StepTask: Codable, Sendable {
    var run: String
    var step: String
    var attempt: Int
    var key: String
    /// The rendered arguments, as JSON text.
    var arguments: String
    /// A human approved what a policy held for this attempt.
    var approved: Bool
}

/// Carries out a run's transitions: each one locks the run, restores its machine, applies the
/// inputs, and stores in one transaction the new state, the events, the tasks the effects ask
/// for, the approvals and the attempts. After the commit it wakes the workers, tells watchers,
/// and cancels attempts that were stopped.
final class RunEngine: Sendable {
    let store: RunStore
    let queue: TaskQueue
    let signals: RunSignals
    /// Other replicas hear of each commit here, with `redis.url`.
    let relay: RunRelay?
    let logger: Logger
    private let definitions = Mutex<[String: WorkflowDefinition]>([:])
    /// Definitions pinned by runs created here, with their canonical JSON, by content hash.
    private let pinnedDefinitions = Mutex<[String: (WorkflowDefinition, String)]>([:])

    init(store: RunStore, signals: RunSignals, relay: RunRelay? = nil, logger: Logger) {
        self.store = store
        self.queue = TaskQueue(store: store.store)
        self.signals = signals
        self.relay = relay
        self.logger = logger
    }

    /// What a transition's body works on: the run's row and machine, and the time it happens.
    struct Transition {
        var run: RunRow
        var machine: RunMachine
        let now: Int64
        var effects: [RunEffect] = []
        /// Attempts to record with the transition.
        var attempts: [AttemptRow] = []
        var costMicros: Int64 = 0
        /// A step this transition dispatched and its own worker starts at once (``takeOver``).
        var taken: Taken?

        var nowMillis: Int64 { self.now / 1000 }

        mutating func apply(_ input: RunInput) throws(RunMachineError) {
            self.effects += try self.machine.apply(input, now: self.nowMillis)
        }

        /// Starts, in this transition, the first tool or agent step it dispatched, for the worker
        /// `owner` that commits it: the attempt is `running` when the transition commits, and its
        /// task is stored claimed by `owner` under a lease, so that the worker sends the call
        /// right after the commit, with no claim or wake-up in between. The step's other
        /// dispatches are queued for any worker. Nil when nothing was dispatched.
        ///
        /// Should the worker stop before its call ends, the lease expires and the step is found
        /// `running` by whoever claims it next: the same as a worker that stopped after claiming
        /// a task, so the rules for attempts that may have started apply (DESIGN §6).
        mutating func takeOver(owner: String, leaseMicros: Int64) -> Taken? {
            guard self.taken == nil else { return self.taken }
            for effect in self.effects {
                guard case .dispatch(let step, let attempt, let arguments, let key, let approved) = effect,
                    let index = self.machine.definition.steps.firstIndex(where: { $0.id == step })
                else { continue }
                guard (try? self.apply(.stepStarted(step: step, attempt: attempt))) != nil else { continue }
                let task = StepTask(run: self.run.id, step: step, attempt: attempt, key: key, arguments: arguments.jsonText, approved: approved)
                let attemptRow = AttemptRow(
                    runID: self.run.id, stepID: step, attempt: attempt, status: "running", idempotencyKey: key, startedAt: self.now,
                    endedAt: 0, errorReason: "", errorMessage: "", costMicros: 0, callID: "", worker: owner
                )
                self.attempts.append(attemptRow)
                let taken = Taken(
                    taskID: SparkID.make("tsk"), owner: owner, leaseUntil: self.now + leaseMicros, task: task,
                    step: self.machine.definition.steps[index], attemptRow: attemptRow, grants: self.machine.steps[index].grants
                )
                self.taken = taken
                return taken
            }
            return nil
        }
    }

    /// A step started by the worker that committed its dispatch (``Transition/takeOver``).
    struct Taken: Sendable {
        var taskID: String
        var owner: String
        var leaseUntil: Int64
        var task: StepTask
        var step: WorkflowStep
        var attemptRow: AttemptRow
        /// The held calls humans approved for the step (their digests).
        var grants: [String] = []
        /// Set once the transition committed: the task's claim, with its fencing token.
        var claim: TaskQueue.Claim?
    }

    /// A run's definition, from the store (and cached: a content hash names one definition forever).
    func definition(_ hash: String, on db: any SQLDatabase) async throws -> WorkflowDefinition {
        if let cached = self.definitions.withLock({ $0[hash] }) { return cached }
        guard let json = try await self.store.definition(hash, on: db) else {
            throw SparkStoreError("the definition \(hash) of a run is missing")
        }
        let definition = try WorkflowDefinition.read(json)
        self.definitions.withLock { $0[hash] = definition }
        return definition
    }

    func pinned(_ hash: String) -> (WorkflowDefinition, String)? {
        self.pinnedDefinitions.withLock { $0[hash] }
    }

    func remember(_ definition: WorkflowDefinition, json: String, hash: String) {
        self.pinnedDefinitions.withLock { cache in
            if cache.count >= 10_000 { cache.removeAll() }
            cache[hash] = (definition, json)
        }
    }

    func machine(of run: RunRow, on db: any SQLDatabase) async throws -> RunMachine {
        let definition = try await self.definition(run.contentHash, on: db)
        let inputs: [String: ExprValue]
        if case .map(let fields) = try ExprValue(jsonText: run.inputs) { inputs = fields } else { inputs = [:] }
        return try RunMachine(runID: run.id, definition: definition, inputs: inputs, deadline: run.deadline, snapshot: run.state)
    }

    /// Runs `body` on the run's locked state and stores what it did. With `completing`, the
    /// task's lease must still be this claim's: otherwise nothing is stored (a stale worker) and
    /// ``StaleLease`` is thrown.
    @discardableResult
    func transition<T: Sendable>(
        runID: String,
        completing claim: TaskQueue.Claim? = nil,
        _ body: @Sendable (inout Transition, any SQLDatabase) async throws -> T
    ) async throws -> T {
        try await self.takingTransition(runID: runID, completing: claim, body).result
    }

    /// ``transition(runID:completing:_:)``, and the step its body took over, claimed.
    func takingTransition<T: Sendable>(
        runID: String,
        completing claim: TaskQueue.Claim? = nil,
        _ body: @Sendable (inout Transition, any SQLDatabase) async throws -> T
    ) async throws -> (result: T, taken: Taken?) {
        let (result, committed, taken) = try await self.store.store.transaction { db -> (T, Committed, Taken?) in
            guard let row = try await self.store.lockedRun(runID, on: db) else { throw SparkError.notFound("run") }
            // On PostgreSQL the task's fenced completion goes in the statement that stores the
            // transition (a stale lease rolls it all back); on SQLite, under the single writer,
            // first.
            if let claim, self.store.store.dialect == .sqlite, try await !self.queue.complete(claim, on: db) { throw StaleLease() }
            var transition = Transition(run: row, machine: try await self.machine(of: row, on: db), now: RunStore.now())
            let before = transition.machine
            let result = try await body(&transition, db)
            let (committed, taken) = try await self.store(transition, before: before, completing: claim, on: db)
            return (result, committed, taken)
        }
        self.announce(committed)
        return (result, taken)
    }

    struct StaleLease: Error {}

    /// What the commit means for the world outside the transaction.
    struct Committed: Sendable {
        var projectID: String
        var events: [EventRow]
        var enqueued: Bool
        var cancelled: [String]
    }

    /// Stores a run's new state and its effects in the transaction `db`.
    func store(_ transition: Transition, before: RunMachine, completing claim: TaskQueue.Claim? = nil, on db: any SQLDatabase) async throws -> (Committed, Taken?) {
        var run = transition.run
        let machine = transition.machine
        let now = transition.now
        run.status = machine.status.rawValue
        run.state = machine.snapshot
        run.outputs = ExprValue.map(machine.outputs).jsonText
        run.errorReason = machine.failure?.reason ?? ""
        run.errorMessage = machine.failure?.message ?? ""
        run.costMicros += transition.costMicros
        run.updatedAt = now
        if machine.status == .running, run.startedAt == 0 { run.startedAt = now }
        if machine.status.isFinal, run.endedAt == 0 { run.endedAt = now }
        run.wakeAt = machine.nextWakeUp.map { $0 * 1000 }

        var events: [EventRow] = []
        var tasks: [TaskQueue.NewTask] = []
        var cancelled: [String] = []
        let taken = transition.taken
        var takenClaimed: Taken?
        var claimedTasks: [(task: TaskQueue.NewTask, owner: String, leaseUntil: Int64)] = []
        if before.status == .pending, machine.status == .queued {
            tasks.append(.init(id: SparkID.make("tsk"), kind: "start", payload: run.id, runAt: now))
        }
        if machine.status.isFinal, !before.status.isFinal, !run.envelopeID.isEmpty {
            // The run's estimate goes back to its budgets, durably: a task, not a call after the commit.
            tasks.append(.init(id: SparkID.make("tsk"), kind: "release", payload: run.id, runAt: now))
        }
        for effect in transition.effects {
            switch effect {
            case .event(let event):
                events.append(EventRow(
                    projectID: run.projectID, sequence: 0, runID: run.id, workflowName: run.workflowName, kind: event.kind,
                    stepID: event.step ?? "", attempt: event.attempt ?? 0, message: event.message, createdAt: now
                ))
                if event.kind == "run.queued", before.status == .awaitingApproval {
                    tasks.append(.init(id: SparkID.make("tsk"), kind: "start", payload: run.id, runAt: now))
                }
            case .dispatch(let step, let attempt, let arguments, let key, let approved):
                if var taken, taken.task.step == step, taken.task.attempt == attempt {
                    let payload = String(decoding: try JSONEncoder().encode(taken.task), as: UTF8.self)
                    let task = TaskQueue.NewTask(id: taken.taskID, kind: "step", payload: payload, runAt: now)
                    claimedTasks.append((task, taken.owner, taken.leaseUntil))
                    taken.claim = TaskQueue.claim(of: task, leaseUntil: taken.leaseUntil)
                    takenClaimed = taken
                    continue
                }
                let payload = StepTask(run: run.id, step: step, attempt: attempt, key: key, arguments: arguments.jsonText, approved: approved)
                tasks.append(.init(id: SparkID.make("tsk"), kind: "step", payload: String(decoding: try JSONEncoder().encode(payload), as: UTF8.self), runAt: now))
            case .requestApproval(let step, let message, let approvers, let expiresAt, let call):
                try await self.store.insert(ApprovalRow(
                    id: SparkID.make("apr"), projectID: run.projectID, runID: run.id, stepID: step ?? "", status: "pending", message: message,
                    approvers: approvers, workflowName: run.workflowName, requestedBy: run.createdBy, createdAt: now,
                    expiresAt: expiresAt.map { $0 * 1000 }, decidedBy: "", decidedAt: 0, comment: "", heldCall: call?.jsonText ?? ""
                ), on: db)
            case .cancelAttempt(let step, let attempt):
                cancelled.append("\(run.id)/\(step)/\(attempt)")
                if var row = try await self.store.attempt(runID: run.id, stepID: step, attempt: attempt, on: db), row.status == "running" {
                    row.status = "cancelled"
                    row.endedAt = now
                    try await self.store.upsert(row, on: db)
                }
            }
        }
        // Approvals nobody needs any more: the step (or run) left awaiting_approval without a
        // decision (an approval step's timeout, a cancel).
        if before.status == .awaitingApproval, machine.status != .awaitingApproval {
            try await self.store.closeApprovals(runID: run.id, stepID: "", status: machine.status == .queued ? "approved" : "cancelled", by: "", comment: "", now: now, on: db)
        }
        for (old, new) in zip(before.steps, machine.steps) where old.status == .awaitingApproval && new.status != .awaitingApproval {
            let status = new.error?.reason == "approval_timeout" ? "expired" : "cancelled"
            try await self.store.closeApprovals(runID: run.id, stepID: new.id, status: status, by: "", comment: "", now: now, on: db)
        }
        let numbered: [EventRow]
        switch self.store.store.dialect {
        case .postgres:
            // Delivered at commit to every replica listening (RunListener): workers wake for the
            // queued tasks, watchers read the project's events. With Redis the events travel
            // there instead, whole, and no watcher needs to read them from the store.
            let notifyEvents = !events.isEmpty && self.relay == nil
            let notify = !tasks.isEmpty || notifyEvents ? "\(tasks.isEmpty ? "" : "t")\(notifyEvents ? "e" : ""):\(run.projectID)" : nil
            guard let written = try await self.store.writeTransition(
                run, attempts: transition.attempts, tasks: self.queue.insertion(queued: tasks, claimed: claimedTasks, now: now),
                completing: claim.map(self.queue.completion), events: events, notify: notify, on: db
            ) else { throw StaleLease() }
            numbered = written
        case .sqlite:
            for attempt in transition.attempts { try await self.store.upsert(attempt, on: db) }
            try await self.store.update(run, on: db)
            try await self.queue.enqueue(tasks, claimed: claimedTasks, now: now, on: db)
            numbered = try await self.store.append(events, projectID: run.projectID, on: db)
        }
        return (Committed(projectID: run.projectID, events: numbered, enqueued: !tasks.isEmpty, cancelled: cancelled), takenClaimed)
    }

    /// After a commit: workers wake for new tasks, watchers get the events, and stopped
    /// attempts running here are cancelled.
    func announce(_ committed: Committed) {
        if committed.enqueued { self.signals.tasksAdded() }
        if !committed.events.isEmpty { self.signals.published(committed.events, projectID: committed.projectID) }
        for key in committed.cancelled { self.signals.cancel(attempt: key) }
        self.relay?.publish(committed)
    }
}
