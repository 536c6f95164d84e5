import GRPCCore
import Logging
import SparkKit
import SparkProto
import SparkWire
import SwiftProtobuf

/// A run's estimated cost (its workflow's `estimated_cost`), held on the project's budgets from
/// the run's creation to its end: a run envelope in the budget service. The run's LLM and tool
/// calls, reserved under its id, draw on the envelope before they hold anything more, so a run
/// that was admitted finds the room it was estimated to need; a hard budget without that room
/// refuses the run when it is created. The envelope is released by a task queued in the
/// transaction that ends the run, so that a crash between the two does not keep it held
/// (its time to live, `run.envelopeTTLSeconds`, is the last safety net).
struct RunEnvelopes: Sendable {
    let budgets: Sparkops_Budget_V1_BudgetService.SparkWireClient
    let ttlSeconds: Int
    let logger: Logger

    /// Holds `estimate` for the run; RESOURCE_EXHAUSTED (429) naming the budget when a hard one
    /// has not that much room left. Returns the reservation's id.
    func reserve(_ estimate: Int64, runID: String, workflow: String, projectID: String, deadline: Int64?, principal: Sparkops_Common_V1_Principal) async throws -> String {
        // Held as long as the run may take, when it has a timeout, and a minute more.
        var ttl = self.ttlSeconds
        if let deadline { ttl = min(ttl, max(1, Int((deadline - RunStore.now() / 1000) / 1000) + 60)) }
        do {
            return try await StepCalls.retrying(until: .now + .seconds(30)) {
                try await self.budgets.reserve(.with {
                    $0.projectID = projectID
                    $0.amountMicros = estimate
                    $0.ttlSeconds = Int32(ttl)
                    $0.runEnvelope = true
                    $0.attribution = .with {
                        $0.workflow = workflow
                        $0.runID = runID
                    }
                }, metadata: principal.metadata).reservation.id
            }
        } catch let error as RPCError where error.code == .resourceExhausted {
            throw SparkError(.resourceExhausted, "the workflow's estimated_cost does not fit: \(error.message)", field: "workflow")
        }
    }

    /// Gives the envelope back. One already released or expired is fine; a budget service that is
    /// unavailable throws, and the task that asked is tried again.
    func release(_ reservationID: String, projectID: String, principal: Sparkops_Common_V1_Principal) async throws {
        do {
            _ = try await self.budgets.release(.with {
                $0.projectID = projectID
                $0.reservationID = reservationID
            }, metadata: principal.metadata)
        } catch let error as RPCError where error.code == .notFound || error.code == .failedPrecondition {
            // Deleted with its budget, or not a reservation to release: nothing is held.
            self.logger.info("a run's envelope was not released", metadata: ["reservation": "\(reservationID)", "error": "\(error.message)"])
        }
    }
}
