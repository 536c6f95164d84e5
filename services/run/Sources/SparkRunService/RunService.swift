import Crypto
import Foundation
public import GRPCCore
import Logging
import SQLKit
import SparkExpr
import SparkKit
public import SparkProto
import SparkWire
import SparkWorkflow
import SwiftProtobuf

/// `sparkops.run.v1.RunService`: starts runs of pinned workflow versions, shows them with their
/// steps, attempts and events, cancels and reruns them, and takes humans' decisions on approvals.
/// The workers (``RunWorkers``) execute what is queued.
public final class RunService: Sparkops_Run_V1_RunService.ServiceProtocol {
    let engine: RunEngine
    let access: ProjectAccess
    let policy: PolicyCheck
    let workflows: Sparkops_Workflow_V1_WorkflowService.SparkWireClient
    let envelopes: RunEnvelopes
    let settings: RunServiceConfig
    let logger: Logger

    var store: RunStore { self.engine.store }

    init(
        engine: RunEngine, access: ProjectAccess, policy: PolicyCheck, workflows: SparkWireChannel, envelopes: RunEnvelopes,
        settings: RunServiceConfig, logger: Logger
    ) {
        self.engine = engine
        self.access = access
        self.policy = policy
        self.workflows = .init(wrapping: workflows)
        self.envelopes = envelopes
        self.settings = settings
        self.logger = logger
    }

    // MARK: Creating runs

    public func createRun(
        request: ServerRequest<Sparkops_Run_V1_CreateRunRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Run_V1_CreateRunResponse> {
        let message = request.message
        let principal = try await self.access.require(request.metadata, projectID: message.projectID, permission: "run.create")
        try Self.validateReference(message.workflow, field: "workflow")
        let version = message.version.isEmpty ? "latest" : message.version
        guard version == "latest" || (Int(version).map { $0 > 0 } ?? false) else {
            throw SparkError.invalid("version", "must be a version number (1, 2, …) or latest")
        }
        try Self.validateKey(message.idempotencyKey)
        let given: [String: ExprValue]
        do {
            guard case .map(let fields) = try message.inputs.value(field: "inputs", absent: .map([:])) else {
                throw SparkError.invalid("inputs", "must be a JSON object")
            }
            given = fields
        } catch let error as SparkError {
            throw error
        } catch {
            throw SparkError.invalid("inputs", "is not JSON")
        }
        let requestHash = Self.hash("\(message.workflow)\u{0}\(version)\u{0}\(ExprValue.map(given).stableJSONText)")
        if let replayed = try await self.replay(key: message.idempotencyKey, projectID: message.projectID, requestHash: requestHash) {
            return ServerResponse(message: replayed)
        }
        let pinned = try await self.pin(message.workflow, version: version, projectID: message.projectID, metadata: request.metadata)
        let inputs: [String: ExprValue]
        do {
            inputs = try RunMachine.inputs(given, for: pinned.definition.inputs)
        } catch {
            throw SparkError.invalid("inputs.\(error.input)", error.message)
        }
        let runID = SparkID.make("run")
        let machine = RunMachine(
            runID: runID, definition: pinned.definition, inputs: inputs, seed: UInt64.random(in: 0 ... UInt64.max), deadline: Self.deadline(of: pinned.definition)
        )
        let response = try await self.start(
            projectID: message.projectID, runID: runID, machine: machine, pinned: pinned, principal: principal, key: message.idempotencyKey, requestHash: requestHash,
            rerun: nil, metadata: request.metadata
        )
        return ServerResponse(message: response)
    }

    /// A workflow version, pinned: its identity and its definition as the run will follow it.
    struct Pinned: Sendable {
        var workflowID: String
        var version: Int
        var contentHash: String
        var canonicalJSON: String
        var definition: WorkflowDefinition
    }

    func pin(_ workflow: String, version: String, projectID: String, metadata: Metadata) async throws -> Pinned {
        let principal = try Sparkops_Common_V1_Principal.required(metadata)
        let found: Sparkops_Workflow_V1_WorkflowVersion
        do {
            found = try await self.workflows.getWorkflowVersion(.with {
                $0.projectID = projectID
                $0.workflowID = workflow
                $0.version = version
            }, metadata: principal.metadata)
        } catch let error as RPCError where error.code == .notFound {
            throw SparkError(.notFound, version == "latest" ? "workflow not found" : "workflow \(workflow) has no version \(version)", field: "workflow")
        }
        // A content hash names one definition forever: a version pinned before is not read again.
        if let (definition, json) = self.engine.pinned(found.contentHash) {
            return Pinned(workflowID: found.workflowID, version: Int(found.version), contentHash: found.contentHash, canonicalJSON: json, definition: definition)
        }
        // The source as written, read again: a Struct's numbers are all doubles, and a
        // definition's integers must stay integers.
        let definition: WorkflowDefinition
        do {
            definition = try WorkflowDefinition.read(found.source)
        } catch {
            throw SparkError(.internalError, "the workflow version \(found.version) cannot be read back: \(error)")
        }
        guard definition.contentHash == found.contentHash else {
            throw SparkError(.internalError, "the workflow version \(found.version) reads back as another definition")
        }
        let json = definition.canonicalJSON
        self.engine.remember(definition, json: json, hash: found.contentHash)
        return Pinned(workflowID: found.workflowID, version: Int(found.version), contentHash: found.contentHash, canonicalJSON: json, definition: definition)
    }

    /// The stored response of an earlier request under `key`; 409 when that request was another.
    func replay(key: String, projectID: String, requestHash: String) async throws -> Sparkops_Run_V1_CreateRunResponse? {
        guard !key.isEmpty, let row = try await self.store.store.sql({ try await self.store.key(key, projectID: projectID, on: $0) }) else {
            return nil
        }
        guard row.requestHash == requestHash else {
            throw SparkError(.alreadyExists, "the idempotency key started another run with a different request (\(row.runID)); use a new key", field: "idempotency_key")
        }
        var response = try Sparkops_Run_V1_CreateRunResponse(sparkJSON: row.response)
        response.replayed = true
        return response
    }

    /// Asks the policy, holds the workflow's estimated cost on the budgets, then stores the run,
    /// its first task or approval, its events and its key in one transaction.
    func start(
        projectID: String, runID: String, machine initial: RunMachine, pinned: Pinned, principal: Sparkops_Common_V1_Principal, key: String,
        requestHash: String, rerun: (of: String, step: String)?, metadata: Metadata
    ) async throws -> Sparkops_Run_V1_CreateRunResponse {
        let decision = try await self.policy.check("run.create", projectID: projectID, context: .with {
            $0.workflow = .with {
                $0.id = pinned.workflowID
                $0.name = pinned.definition.name
                $0.version = Int32(clamping: pinned.version)
            }
            $0.runID = runID
            $0.estimatedCostMicros = pinned.definition.estimatedCostMicros ?? 0
        }, metadata: metadata)
        var envelopeID = ""
        if let estimate = pinned.definition.estimatedCostMicros {
            envelopeID = try await self.envelopes.reserve(
                estimate, runID: runID, workflow: pinned.definition.name, projectID: projectID, deadline: initial.deadline, principal: principal
            )
        }
        var machine = initial
        let now = RunStore.now()
        var effects: [RunEffect]
        if decision.effect == "require_approval" {
            let held = RunWorkers.value(Sparkops_Common_V1_HeldCall(decision, kind: "run", target: pinned.definition.name))
            effects = try machine.apply(.hold(message: "held by policy \(decision.message)", approvers: [], call: held), now: now / 1000)
        } else {
            effects = try machine.apply(.admit, now: now / 1000)
        }
        let row = RunRow(
            id: runID, projectID: projectID, workflowID: pinned.workflowID, workflowName: pinned.definition.name,
            workflowVersion: pinned.version, contentHash: pinned.contentHash, status: RunStatus.pending.rawValue,
            inputs: ExprValue.map(machine.inputs).jsonText, outputs: "{}", errorReason: "", errorMessage: "", state: initial.snapshot,
            principal: try principal.jsonString(), idempotencyKey: key, costMicros: 0, rerunOf: rerun?.of ?? "", rerunFromStep: rerun?.step ?? "",
            seed: 0, deadline: initial.deadline, createdBy: principal.id, createdAt: now, startedAt: 0, endedAt: 0, updatedAt: now, wakeAt: nil,
            envelopeID: envelopeID, estimatedCostMicros: pinned.definition.estimatedCostMicros ?? 0
        )
        effects.insert(.event(RunEvent(kind: "run.created", message: "version \(pinned.version) of \(pinned.definition.name)")), at: 0)
        let transition = RunEngine.Transition(run: row, machine: machine, now: now, effects: effects)
        let outcome: (Sparkops_Run_V1_CreateRunResponse, RunEngine.Committed?)
        do {
            outcome = try await self.store.store.transaction { db -> (Sparkops_Run_V1_CreateRunResponse, RunEngine.Committed?) in
            try await self.store.putDefinition(pinned.contentHash, json: pinned.canonicalJSON, on: db)
            try await self.store.insert(row, on: db)
            let (committed, _) = try await self.engine.store(transition, before: initial, on: db)
            var stored = row
            stored.status = machine.status.rawValue
            stored.state = machine.snapshot
            let response = Sparkops_Run_V1_CreateRunResponse.with { $0.run = self.message(stored, machine: machine, attempts: []) }
            if !key.isEmpty {
                guard try await self.store.insertKey(key, projectID: row.projectID, requestHash: requestHash, runID: runID, response: try response.sparkJSONString(), now: now, on: db) else {
                    throw KeyTaken()
                }
            }
            return (response, committed)
            }
        } catch {
            // Nothing was stored: the estimate is given back (or expires, if that fails too).
            if !envelopeID.isEmpty { try? await self.envelopes.release(envelopeID, projectID: projectID, principal: principal) }
            guard error is KeyTaken else { throw error }
            // The same key, at the same moment, in another call: its run is the answer.
            if let replayed = try await self.replay(key: key, projectID: projectID, requestHash: requestHash) { return replayed }
            throw SparkError(.aborted, "another request under this idempotency key is being stored; ask again")
        }
        if let committed = outcome.1 { self.engine.announce(committed) }
        await self.access.record(
            principal, projectID: row.projectID, action: rerun == nil ? "run.create" : "run.rerun", target: runID,
            detail: "\(pinned.definition.name) v\(pinned.version): \(machine.status.rawValue)", metadata: metadata, logger: self.logger
        )
        return outcome.0
    }

    struct KeyTaken: Error {}

    // MARK: Reading runs

    public func getRun(
        request: ServerRequest<Sparkops_Run_V1_GetRunRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Run_V1_Run> {
        let message = request.message
        try await self.access.require(request.metadata, projectID: message.projectID, permission: "run.read")
        let (row, machine, attempts) = try await self.store.store.sql { db in
            let row = try await self.run(message.runID, projectID: message.projectID, on: db)
            return (row, try await self.engine.machine(of: row, on: db), try await self.store.attempts(runID: row.id, on: db))
        }
        return ServerResponse(message: self.message(row, machine: machine, attempts: attempts))
    }

    public func listRuns(
        request: ServerRequest<Sparkops_Run_V1_ListRunsRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Run_V1_ListRunsResponse> {
        let message = request.message
        try await self.access.require(request.metadata, projectID: message.projectID, permission: "run.read")
        var filter = RunStore.RunFilter()
        if !message.status.isEmpty {
            guard RunStatus(rawValue: message.status) != nil else {
                throw SparkError.invalid("status", "must be one of \(RunStatus.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            filter.status = message.status
        }
        filter.createdAfter = try Self.time(message.createdAfter, field: "created_after")
        filter.createdBefore = try Self.time(message.createdBefore, field: "created_before")
        if !message.workflow.isEmpty {
            try Self.validateReference(message.workflow, field: "workflow")
            if SparkID.isValid(message.workflow, prefix: "wf") {
                filter.workflowID = message.workflow
            } else {
                let principal = try Sparkops_Common_V1_Principal.required(request.metadata)
                do {
                    filter.workflowID = try await self.workflows.getWorkflow(.with {
                        $0.projectID = message.projectID
                        $0.workflowID = message.workflow
                    }, metadata: principal.metadata).id
                } catch let error as RPCError where error.code == .notFound {
                    throw SparkError(.notFound, "workflow not found", field: "workflow")
                }
            }
        }
        let (limit, before) = try Paging.parse(size: message.pageSize, token: message.pageToken)
        let (rows, runs) = try await self.store.store.sql { db -> ([RunRow], [Sparkops_Run_V1_Run]) in
            let rows = try await self.store.runs(projectID: message.projectID, filter: filter, before: before, limit: limit, on: db)
            var runs: [Sparkops_Run_V1_Run] = []
            for row in rows {
                var run = self.message(row, machine: try await self.engine.machine(of: row, on: db), attempts: [])
                run.steps = []
                runs.append(run)
            }
            return (rows, runs)
        }
        return ServerResponse(message: .with {
            $0.runs = runs
            $0.nextPageToken = Paging.token(lastID: rows.last?.id, count: rows.count, limit: limit)
        })
    }

    /// The run as it stands after a change.
    func current(_ runID: String, projectID: String, metadata: Metadata, context: ServerContext) async throws -> ServerResponse<Sparkops_Run_V1_Run> {
        try await self.getRun(request: ServerRequest(metadata: metadata, message: .with {
            $0.projectID = projectID
            $0.runID = runID
        }), context: context)
    }

    func run(_ id: String, projectID: String, on db: any SQLDatabase) async throws -> RunRow {
        guard SparkID.isValid(id, prefix: "run") else { throw SparkError.invalid("run_id", id.isEmpty ? "is required" : "is not a run_… id") }
        guard let row = try await self.store.run(id, projectID: projectID, on: db) else { throw SparkError.notFound("run") }
        return row
    }

    // MARK: Changing runs

    public func cancelRun(
        request: ServerRequest<Sparkops_Run_V1_CancelRunRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Run_V1_Run> {
        let message = request.message
        let principal = try await self.access.require(request.metadata, projectID: message.projectID, permission: "run.cancel")
        guard message.reason.count <= 1000 else { throw SparkError.invalid("reason", "must be at most 1000 characters") }
        _ = try await self.store.store.sql { try await self.run(message.runID, projectID: message.projectID, on: $0) }
        try await self.engine.transition(runID: message.runID) { transition, _ in
            try Self.mapped { () throws(RunMachineError) in try transition.apply(.cancel(by: principal.id, reason: message.reason)) }
        }
        await self.access.record(principal, projectID: message.projectID, action: "run.cancel", target: message.runID, detail: message.reason, metadata: request.metadata, logger: self.logger)
        return try await self.current(message.runID, projectID: message.projectID, metadata: request.metadata, context: context)
    }

    public func resolveStep(
        request: ServerRequest<Sparkops_Run_V1_ResolveStepRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Run_V1_Run> {
        let message = request.message
        let principal = try await self.access.require(request.metadata, projectID: message.projectID, permission: "approval.decide")
        guard message.action == "retry" || message.action == "skip" else {
            throw SparkError.invalid("action", "must be retry or skip, not \(message.action.debugDescription)")
        }
        let row = try await self.store.store.sql { try await self.run(message.runID, projectID: message.projectID, on: $0) }
        let machine = try await self.store.store.sql { try await self.engine.machine(of: row, on: $0) }
        guard machine.step(message.stepID) != nil else { throw SparkError.invalid("step_id", "the run has no step \(message.stepID.debugDescription)") }
        try await self.engine.transition(runID: message.runID) { transition, _ in
            try Self.mapped { () throws(RunMachineError) in
                try transition.apply(.resolveAttention(step: message.stepID, retry: message.action == "retry", by: principal.id))
            }
        }
        await self.access.record(
            principal, projectID: message.projectID, action: "run.step.\(message.action)", target: message.runID, detail: "step \(message.stepID)",
            metadata: request.metadata, logger: self.logger
        )
        return try await self.current(message.runID, projectID: message.projectID, metadata: request.metadata, context: context)
    }

    public func rerunFrom(
        request: ServerRequest<Sparkops_Run_V1_RerunFromRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Run_V1_CreateRunResponse> {
        let message = request.message
        let principal = try await self.access.require(request.metadata, projectID: message.projectID, permission: "run.create")
        try Self.validateKey(message.idempotencyKey)
        let (original, machine) = try await self.store.store.sql { db in
            let row = try await self.run(message.runID, projectID: message.projectID, on: db)
            return (row, try await self.engine.machine(of: row, on: db))
        }
        guard machine.step(message.stepID) != nil else {
            let hint = NameSuggestion.closest(to: message.stepID, in: machine.steps.map(\.id)).map { "; did you mean \($0.debugDescription)?" } ?? ""
            throw SparkError.invalid("step_id", "the run has no step \(message.stepID.debugDescription)\(hint)")
        }
        let requestHash = Self.hash("rerun\u{0}\(original.id)\u{0}\(message.stepID)")
        if let replayed = try await self.replay(key: message.idempotencyKey, projectID: message.projectID, requestHash: requestHash) {
            return ServerResponse(message: replayed)
        }
        let downstream = machine.definition.downstream(of: message.stepID)
        var reused: [String: ExprValue] = [:]
        for state in machine.steps where state.status == .succeeded && !downstream.contains(state.id) {
            reused[state.id] = state.output
        }
        let json = try await self.store.store.sql { try await self.store.definition(original.contentHash, on: $0) } ?? machine.definition.canonicalJSON
        let pinned = Pinned(workflowID: original.workflowID, version: original.workflowVersion, contentHash: original.contentHash, canonicalJSON: json, definition: machine.definition)
        let runID = SparkID.make("run")
        let fresh = RunMachine(
            runID: runID, definition: machine.definition, inputs: machine.inputs, seed: UInt64.random(in: 0 ... UInt64.max),
            deadline: Self.deadline(of: machine.definition), reusing: reused
        )
        let response = try await self.start(
            projectID: message.projectID, runID: runID, machine: fresh, pinned: pinned, principal: principal, key: message.idempotencyKey, requestHash: requestHash,
            rerun: (original.id, message.stepID), metadata: request.metadata
        )
        return ServerResponse(message: response)
    }

    // MARK: Helpers

    /// When a run of `definition` created now must have ended (milliseconds), if it has a timeout.
    static func deadline(of definition: WorkflowDefinition) -> Int64? {
        definition.timeout.map { RunStore.now() / 1000 + $0.milliseconds }
    }

    /// A machine error as the API answers it: 409 for a state the input does not apply to.
    static func mapped(_ body: () throws(RunMachineError) -> Void) throws {
        do {
            try body()
        } catch {
            switch error.code {
            case .wrongState, .staleAttempt: throw SparkError(.failedPrecondition, error.message)
            case .unknownStep: throw SparkError.invalid("step_id", error.message)
            }
        }
    }

    static func validateReference(_ value: String, field: String) throws {
        guard !value.isEmpty else { throw SparkError.invalid(field, "is required (an id or a name)") }
        guard value.utf8.count <= 200, !value.unicodeScalars.contains(where: { $0.properties.generalCategory == .control || $0 == "/" }) else {
            throw SparkError.invalid(field, "must be an id or a name of at most 200 characters")
        }
    }

    static func validateKey(_ key: String) throws {
        guard key.utf8.count <= 200, key.unicodeScalars.allSatisfy({ $0.value >= 0x21 && $0.value < 0x7F }) else {
            throw SparkError.invalid("idempotency_key", "must be at most 200 printable ASCII characters, without spaces")
        }
    }

    static func time(_ text: String, field: String) throws -> Int64? {
        guard !text.isEmpty else { return nil }
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        guard let date = formatter.date(from: text) ?? ISO8601DateFormatter().date(from: text) else {
            throw SparkError.invalid(field, "must be an RFC 3339 time, such as 2026-12-01T09:30:00Z")
        }
        return Int64(date.timeIntervalSince1970 * 1_000_000)
    }

    static func hash(_ text: String) -> String {
        SparkHex.encode(SHA256.hash(data: Array(text.utf8)))
    }
}
