public import SparkExpr

/// A run machine as stored: everything that changes as it runs, as JSON, so that whichever
/// worker handles a run's next input restores the machine exactly as the last one left it.
/// The definition, the inputs and the deadline are stored beside it, as they never change.
extension RunMachine {
    /// The machine's changing state as JSON text.
    public var snapshot: String {
        var steps: [ExprValue] = []
        for state in self.steps {
            var fields: [String: ExprValue] = [
                "id": .string(state.id), "status": .string(state.status.rawValue), "attempt": .int(Int64(state.attempt)),
                "output": state.output, "approved": .bool(state.approved),
            ]
            if let error = state.error { fields["error"] = error.value }
            if let at = state.retryAt { fields["retryAt"] = .int(at) }
            if let at = state.deadline { fields["deadline"] = .int(at) }
            if let at = state.approvalExpiresAt { fields["approvalExpiresAt"] = .int(at) }
            if state.timedOut { fields["timedOut"] = .bool(true) }
            if !state.grants.isEmpty { fields["grants"] = .list(state.grants.map(ExprValue.string)) }
            if let call = state.heldCall { fields["heldCall"] = call }
            steps.append(.map(fields))
        }
        var fields: [String: ExprValue] = [
            "status": .string(self.status.rawValue), "steps": .list(steps), "outputs": .map(self.outputs),
            // As text: a UInt64 does not fit every JSON reader's numbers.
            "random": .string(String(self.randomState, radix: 16)),
        ]
        if let failure = self.failure { fields["failure"] = failure.value }
        return ExprValue.map(fields).jsonText
    }

    /// The machine of `definition` as `snapshot` describes it.
    public init(runID: String, definition: WorkflowDefinition, inputs: [String: ExprValue], deadline: Int64?, snapshot: String) throws(RunSnapshotError) {
        guard let value = try? ExprValue(jsonText: snapshot), case .map(let fields) = value,
            case .string(let statusName)? = fields["status"], let status = RunStatus(rawValue: statusName),
            case .list(let stepValues)? = fields["steps"], case .string(let randomText)? = fields["random"],
            let random = UInt64(randomText, radix: 16)
        else {
            throw RunSnapshotError(message: "the stored state of run \(runID) is not a run machine's")
        }
        var steps: [StepState] = []
        for item in stepValues {
            guard case .map(let step) = item, case .string(let id)? = step["id"], case .string(let name)? = step["status"],
                let stepStatus = StepStatus(rawValue: name), case .int(let attempt)? = step["attempt"]
            else {
                throw RunSnapshotError(message: "the stored state of run \(runID) has a step that is not a step's state")
            }
            var state = StepState(id: id)
            state.status = stepStatus
            state.attempt = Int(attempt)
            state.output = step["output"] ?? .null
            state.error = step["error"].flatMap(RunFailure.init(value:))
            if case .int(let at)? = step["retryAt"] { state.retryAt = at }
            if case .int(let at)? = step["deadline"] { state.deadline = at }
            if case .int(let at)? = step["approvalExpiresAt"] { state.approvalExpiresAt = at }
            if case .bool(let approved)? = step["approved"] { state.approved = approved }
            if case .bool(let timedOut)? = step["timedOut"] { state.timedOut = timedOut }
            if case .list(let grants)? = step["grants"] { state.grants = grants.compactMap { if case .string(let digest) = $0 { digest } else { nil } } }
            state.heldCall = step["heldCall"]
            steps.append(state)
        }
        guard steps.map(\.id) == definition.steps.map(\.id) else {
            throw RunSnapshotError(message: "the stored state of run \(runID) does not have the steps of its workflow version")
        }
        var outputs: [String: ExprValue] = [:]
        if case .map(let stored)? = fields["outputs"] { outputs = stored }
        self.init(runID: runID, definition: definition, inputs: inputs, seed: random, deadline: deadline)
        self.restore(status: status, steps: steps, outputs: outputs, failure: fields["failure"].flatMap(RunFailure.init(value:)))
    }
}

extension RunFailure {
    init?(value: ExprValue) {
        guard case .map(let fields) = value, case .string(let reason)? = fields["reason"], case .string(let message)? = fields["message"] else {
            return nil
        }
        self.init(reason: reason, message: message)
    }
}

/// A stored run state that cannot be read back.
public struct RunSnapshotError: Error, Sendable, Hashable, CustomStringConvertible {
    public var message: String
    public var description: String { self.message }
}
