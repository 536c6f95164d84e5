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
import Synchronization
import SwiftProtobuf

extension ToolService {
    public func invokeTool(
        request: ServerRequest<Sparkops_Tool_V1_InvokeToolRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Tool_V1_InvokeToolResponse> {
        let message = request.message
        try await self.access.require(request.metadata, projectID: message.projectID, permission: "run.create")
        try Self.validateReference(message.tool)
        // The run service passes a human's approval of a held step, and the agent service passes
        // it on to the step's tool calls.
        if message.approved, ![ServiceName.run.rawValue, ServiceName.agent.rawValue].contains(context.sparkWirePeer?.identity ?? "") {
            throw SparkError(.permissionDenied, "only the run and agent services pass a human's approval of a held call", field: "approved")
        }
        let key = message.idempotencyKey
        guard key.utf8.count <= 200, key.unicodeScalars.allSatisfy({ $0.value >= 0x21 && $0.value < 0x7F }) else {
            throw SparkError.invalid("idempotency_key", "must be at most 200 printable ASCII characters, without spaces")
        }
        guard message.timeoutMs >= 0 else { throw SparkError.invalid("timeout_ms", "must be 0 (the tool's own timeout) or more") }
        for (field, value) in [("run_id", message.runID), ("step_id", message.stepID), ("agent", message.agent), ("workflow", message.workflow)] {
            guard value.utf8.count <= 200, !value.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else {
                throw SparkError.invalid(field, "must be at most 200 characters, without control characters")
            }
        }
        guard message.maxOutputBytes >= 0 else { throw SparkError.invalid("max_output_bytes", "must be 0 (the tool's own cap) or more") }
        // Policies are shown a call's arguments, and see at most this much of them.
        guard message.input.text.utf8.count <= Self.maxInputBytes else {
            throw SparkError.invalid("input", "is \(message.input.text.utf8.count) bytes of JSON; a tool's input is at most \(Self.maxInputBytes) bytes")
        }
        let input: ExprValue
        do {
            input = try message.input.value(field: "input", absent: .map([:]))
        } catch {
            throw SparkError.invalid("input", "is not JSON")
        }
        guard let row = try await self.store.store.sql({ try await self.store.tool(message.tool, projectID: message.projectID, on: $0) }) else {
            throw SparkError.notFound("tool")
        }
        let definition = try await self.definition(of: row)
        let problems = definition.schema.problems(input)
        if let first = problems.first {
            let listed = problems.map { "\($0.path): \($0.message)" }.joined(separator: "; ")
            throw SparkError(.invalidArgument, "the input does not fit the tool's input_schema: \(listed)", field: first.path)
        }
        if let held = try await self.askPolicy(message, definition: definition, input: input, metadata: request.metadata) {
            // A hold a human approved, as the run service says, lets this very call go ahead;
            // any other call it holds waits for its own decision.
            if !(message.approved && message.approvedDigests.contains(held.approval.call.digest)) { return ServerResponse(message: held) }
        }
        var timeout = Duration.milliseconds(definition.timeout.milliseconds)
        if message.timeoutMs > 0 { timeout = min(timeout, .milliseconds(message.timeoutMs)) }
        let maxOutput = message.maxOutputBytes > 0 ? min(Int(clamping: message.maxOutputBytes), definition.maxOutputBytes) : definition.maxOutputBytes
        let requestHash = Self.hash("\(input.stableJSONText)\u{0}\(maxOutput)")
        let invocationID = SparkID.make("inv")
        let now = ToolStore.now()
        let invocation = InvocationRow(
            id: invocationID, projectID: message.projectID, toolID: row.id, key: key.isEmpty ? invocationID : key,
            requestHash: requestHash, status: "running", toolVersion: row.latestVersion, response: "", startedAt: now, finishedAt: nil
        )
        // The call's cost is held before it runs; a call answered from an earlier one under its
        // key costs nothing, and gives the hold back.
        let hold = try await self.reserve(message, definition: definition, timeout: timeout, metadata: request.metadata)
        do {
            if !key.isEmpty, let earlier = try await self.claim(invocation, definition: definition) {
                await self.budget.release(hold, metadata: request.metadata)
                return ServerResponse(message: earlier)
            } else if key.isEmpty {
                _ = try await self.store.store.write { try await self.store.begin(invocation, on: $0) }
            }
        } catch {
            await self.budget.release(hold, metadata: request.metadata)
            throw error
        }

        let started = ContinuousClock.now
        let projectID = message.projectID
        var response = Sparkops_Tool_V1_InvokeToolResponse()
        response.toolVersion = Int32(clamping: row.latestVersion)
        response.invocationID = invocationID
        response.costMicros = definition.costMicros
        let result: Result<ToolRunner.Outcome, ToolRunner.Failure>
        do {
            let project = ToolRunner.Project(
                secret: { name, host in try await self.openSecret(projectID: projectID, name: name, host: host) },
                search: { query, collection, limit in
                    try await self.search(projectID: projectID, query: query, collection: collection, limit: limit).map { row in
                        .map([
                            "document_id": .string(row.id), "collection": .string(row.collection), "title": .string(row.title),
                            "snippet": .string(row.snippet), "score": .double(row.score),
                            "metadata": (try? ExprValue(jsonText: row.metadata)) ?? .map([:]),
                        ])
                    }
                }
            )
            result = .success(try await self.runner.run(definition, input: input, timeout: timeout, maxOutputBytes: maxOutput, project: project))
        } catch {
            result = .failure(error)
        }
        // No secret value of the project leaves in what the tool returned.
        let secrets = (try? await self.scrubber.secrets(projectID: projectID) { try await self.secretValues(projectID: projectID) }) ?? []
        switch result {
        case .success(let outcome):
            response.output = Sparkops_Common_V1_Json(SecretScrubber.scrub(outcome.output, secrets))
            response.logs = Self.cut(SecretScrubber.scrub(outcome.logs, secrets))
        case .failure(let error):
            response.error = .with {
                $0.reason = error.reason
                $0.message = SecretScrubber.scrub(error.message, secrets)
            }
            if let output = error.output { response.output = Sparkops_Common_V1_Json(SecretScrubber.scrub(output, secrets)) }
            response.logs = Self.cut(SecretScrubber.scrub(error.logs, secrets))
        }
        // The tool ran, whatever came of it: its configured cost is spent.
        await self.budget.settle(hold, actualMicros: definition.costMicros, metadata: request.metadata)
        let elapsed = ContinuousClock.now - started
        response.durationMs = elapsed.components.seconds * 1000 + elapsed.components.attoseconds / 1_000_000_000_000_000
        let status = response.hasError ? "failed" : "succeeded"
        let store = self.store
        if Task.isCancelled, response.hasError {
            // The caller went away and the call was cut short. A tool without side effects gives
            // its key back, so that the caller's retry runs it; a non_idempotent one may have had
            // its effect, so the key keeps the failure and nothing runs twice.
            if definition.sideEffects != .nonIdempotent {
                try? await Task.detached { try await store.store.transaction { try await store.forget(id: invocationID, on: $0) } }.value
                throw CancellationError()
            }
            response.error = .with {
                $0.reason = "cancelled"
                $0.message = "the call was cancelled before it finished (\(response.error.message)); the tool is non_idempotent, so it may have had its effect"
            }
        }
        let final = try response.sparkJSONString()
        // The result is kept even when the caller has gone: a retry under the key finds it.
        try await Task.detached {
            try await store.store.write { try await store.finish(id: invocationID, status: status, response: final, at: ToolStore.now(), on: $0) }
        }.value
        if response.hasError {
            self.logger.info("tool call failed", metadata: ["tool": "\(row.name)", "reason": "\(response.error.reason)", "invocation": "\(invocationID)"])
        }
        return ServerResponse(message: response)
    }

    /// What a grant of a held call names: the tool and its input.
    static func callDigest(tool: String, input: ExprValue) -> String {
        "sha256:" + Self.hash("tool\u{0}\(tool)\u{0}\(input.stableJSONText)")
    }

    /// The largest input, as JSON text: what the policy service takes as a call's arguments.
    static let maxInputBytes = 64 * 1024

    /// Asks the policy service (`tool.invoke`) before the call runs: a deny throws
    /// PERMISSION_DENIED naming the rule; a require_approval is the response to give (nothing
    /// ran); nil lets the call go on.
    func askPolicy(
        _ message: Sparkops_Tool_V1_InvokeToolRequest, definition: ToolDefinition, input: ExprValue, metadata: Metadata
    ) async throws -> Sparkops_Tool_V1_InvokeToolResponse? {
        let arguments = Sparkops_Common_V1_Json(input)
        let decision = try await self.policy.check("tool.invoke", projectID: message.projectID, context: .with {
            $0.tool = .with {
                $0.name = definition.name
                $0.kind = definition.kind.rawValue
                $0.host = Self.policyHost(definition, input: input)
                $0.sideEffects = definition.sideEffects.rawValue
                $0.costMicros = definition.costMicros
                $0.arguments = arguments
            }
            $0.estimatedCostMicros = definition.costMicros
            $0.runID = message.runID
            $0.step.id = message.stepID
            $0.step.kind = message.stepKind
            $0.step.attempt = message.attempt
            $0.agent = message.agent
            $0.workflow.name = message.workflow
            $0.workflow.id = message.workflowID
            $0.workflow.version = message.workflowVersion
        }, metadata: metadata)
        guard decision.effect == "require_approval" else { return nil }
        let call = Sparkops_Common_V1_HeldCall(decision, kind: "tool", target: definition.name, arguments: input, digest: Self.callDigest(tool: definition.name, input: input))
        return .with {
            $0.error = .with {
                $0.reason = "approval_required"
                $0.message = "held by policy \(decision.message): a human must approve this call"
            }
            $0.approval = .with {
                $0.tool = definition.name
                $0.argumentsDigest = "sha256:" + Self.hash(input.stableJSONText)
                $0.rule = call.rule
                $0.message = call.message
                $0.violationID = decision.violationID
                $0.call = call
            }
        }
    }

    /// Holds the tool's configured cost on the budgets that cover the call, for its timeout and
    /// `tool.budgetHoldSeconds` more (a minute by default): a service killed mid-call leaves a
    /// hold that expires then. RESOURCE_EXHAUSTED naming the budget when a hard one has no room (nothing ran).
    func reserve(
        _ message: Sparkops_Tool_V1_InvokeToolRequest, definition: ToolDefinition, timeout: Duration, metadata: Metadata
    ) async throws -> BudgetSpend.Hold? {
        do {
            return try await self.budget.reserve(
                definition.costMicros, projectID: message.projectID,
                attribution: .with {
                    $0.workflow = message.workflow
                    $0.agent = message.agent
                    $0.tool = definition.name
                    $0.runID = message.runID
                    $0.stepID = message.stepID
                },
                ttlSeconds: Int(timeout.components.seconds) + 1 + self.budgetHoldSeconds, metadata: metadata
            )
        } catch let error as RPCError where error.code == .resourceExhausted {
            throw SparkError(.resourceExhausted, "the tool was not run: \(error.message)")
        } catch let error as RPCError where error.code == .invalidArgument {
            throw error
        } catch {
            throw SparkError(.unavailable, "the budget service could not be asked, so the tool was not run: \(error)")
        }
    }

    /// The host a call reaches, as policies see it (`tool.host`): an http, mcp or browser tool's
    /// URL host (a browser tool's page from its input); empty when it is not known before the call.
    static func policyHost(_ definition: ToolDefinition, input: ExprValue) -> String {
        var url: String?
        switch definition.kind {
        case .http: url = definition.http?.url
        case .mcp: if case .url(let address) = definition.mcp?.server { url = address }
        case .browser:
            url = definition.browser?.url
            if url == "${{ input.url }}", case .map(let fields) = input, case .string(let page) = fields["url"] { url = page }
        default: break
        }
        guard let url, let components = URLComponents(string: url), let host = components.host, !host.contains("$") else { return "" }
        return host.lowercased()
    }

    /// Takes the key for this call, or answers with what an earlier call under it got: its
    /// stored response, a refusal when the input differs, or when it is still running (or may
    /// have run, for a non-idempotent tool, before its caller was lost).
    func claim(_ invocation: InvocationRow, definition: ToolDefinition) async throws -> Sparkops_Tool_V1_InvokeToolResponse? {
        // One statement takes the key; only a key taken before needs the earlier call read.
        if try await self.store.store.write({ try await self.store.begin(invocation, on: $0) }) { return nil }
        guard let earlier = try await self.store.store.sql({
            try await self.store.invocation(projectID: invocation.projectID, toolID: invocation.toolID, key: invocation.key, on: $0)
        }) else {
            throw SparkError(.aborted, "the call under this idempotency key was just forgotten; ask again")
        }
        guard earlier.requestHash == invocation.requestHash else {
            throw SparkError(.alreadyExists, "the idempotency key was used for a call with another input; use a new key", field: "idempotency_key")
        }
        switch earlier.status {
        case "running":
            let abandoned = earlier.startedAt + definition.timeout.milliseconds * 1000 + Int64(self.abandonGraceSeconds) * 1_000_000 < invocation.startedAt
            guard abandoned else {
                throw SparkError(.aborted, "a call under this idempotency key is still running; ask again once it ends")
            }
            guard definition.sideEffects != .nonIdempotent else {
                throw SparkError(.failedPrecondition, "a call under this idempotency key started and was lost, so it may have run; the tool is non_idempotent, so it is not run again: check its effect, then call with a new key")
            }
            let taken = try await self.store.store.transaction { try await self.store.retake(invocation, startedAt: earlier.startedAt, on: $0) }
            guard taken else { throw SparkError(.aborted, "another call took over this idempotency key; ask again once it ends") }
            return nil
        default:
            var response = try Sparkops_Tool_V1_InvokeToolResponse(sparkJSON: earlier.response)
            response.replayed = true
            return response
        }
    }

    /// The tool's latest definition, parsed once per content hash.
    func definition(of row: ToolRow) async throws -> ToolDefinition {
        if let cached = self.definitions.withLock({ $0[row.contentHash] }) { return cached }
        guard let version = try await self.store.store.sql({ try await self.store.version(toolID: row.id, version: row.latestVersion, on: $0) }) else {
            throw SparkError(.internalError, "the tool's latest version is missing")
        }
        let definition: ToolDefinition
        do {
            definition = try ToolDefinition.read(version.source)
        } catch {
            throw SparkError(.failedPrecondition, "the tool's stored definition no longer reads: \(error); apply it again")
        }
        self.definitions.withLock { cache in
            if cache.count > 10_000 { cache.removeAll() }
            cache[row.contentHash] = definition
        }
        return definition
    }

    /// Every secret of the project, opened: what tool outputs are scrubbed of.
    func secretValues(projectID: String) async throws -> [SecretScrubber.Secret] {
        var found: [SecretScrubber.Secret] = []
        var after = ""
        while true {
            let rows = try await self.store.store.sql { try await self.store.secrets(projectID: projectID, after: after, limit: 500, on: $0) }
            for row in rows {
                if let value = try? self.secrets.open(keyID: row.keyID, sealed: row.sealed, projectID: projectID, name: row.name) {
                    found.append((row.name, value))
                }
            }
            guard rows.count == 500, let last = rows.last else { return found }
            after = last.name
        }
    }

    func openSecret(projectID: String, name: String, host: String?) async throws -> String? {
        guard let row = try await self.store.store.sql({ try await self.store.secret(projectID: projectID, name: name, on: $0) }) else { return nil }
        if let host, !row.allows(host) { throw ToolRunner.SecretRefused(name: name, host: host, hosts: row.hosts) }
        return try self.secrets.open(keyID: row.keyID, sealed: row.sealed, projectID: projectID, name: name)
    }

    static func hash(_ text: String) -> String {
        SparkHex.encode(SHA256.hash(data: Array(text.utf8)))
    }

    static func cut(_ logs: String) -> String {
        logs.utf8.count <= 64 * 1024 ? logs : String(decoding: Array(logs.utf8.prefix(64 * 1024)), as: UTF8.self)
    }
}
