public import GRPCCore
public import Logging
public import SparkProto
public import SparkWire
import SwiftProtobuf

/// How a service that spends money holds it on the budget service before it acts and settles the
/// actual cost after (`BudgetService/Reserve`, `Settle`, `Release`; docs/budgets.md).
///
/// ```swift
/// let hold = try await budget.reserve(worstCase, projectID: project, attribution: who, ttlSeconds: 120, metadata: request.metadata)
/// … make the call …
/// await budget.settle(hold, actualMicros: cost, metadata: request.metadata)
/// ```
///
/// A hard budget without room refuses the reservation with RESOURCE_EXHAUSTED naming the budget,
/// and the call must not be made. The budget service being unreachable fails the reservation too:
/// nothing is spent unaccounted. A settle or release that cannot reach the budget service is tried
/// again a few times; after that the reservation expires at its ttl and its amount returns.
public struct BudgetSpend: Sendable {
    /// A reservation made: what `settle` and `release` give back.
    public struct Hold: Sendable, Equatable {
        public let projectID: String
        public let reservationID: String
        public let amountMicros: Int64
    }

    private let budget: Sparkops_Budget_V1_BudgetService.SparkWireClient
    private let logger: Logger

    public init(client: SparkWireChannel, logger: Logger) {
        self.budget = .init(wrapping: client)
        self.logger = logger
    }

    /// Holds `amountMicros` on every budget that covers the call; nil when the amount is zero
    /// (nothing to hold). The principal of the call being served (`metadata`) is passed on, so
    /// that an API key's budgets count what it spends.
    public func reserve(
        _ amountMicros: Int64, projectID: String, attribution: Sparkops_Budget_V1_Attribution, ttlSeconds: Int, metadata: Metadata
    ) async throws -> Hold? {
        guard amountMicros > 0 else { return nil }
        let response = try await self.budget.reserve(
            .with {
                $0.projectID = projectID
                $0.amountMicros = amountMicros
                $0.ttlSeconds = Int32(clamping: min(86_400, max(1, ttlSeconds)))
                $0.attribution = attribution
            },
            metadata: Self.principal(metadata)
        )
        return Hold(projectID: projectID, reservationID: response.reservation.id, amountMicros: amountMicros)
    }

    /// Replaces the hold by what the call cost (which may be more than was held: spend is spend).
    public func settle(_ hold: Hold?, actualMicros: Int64, metadata: Metadata) async {
        guard let hold else { return }
        let principal = Self.principal(metadata)
        await self.retrying("settle", hold) {
            _ = try await self.budget.settle(
                .with {
                    $0.projectID = hold.projectID
                    $0.reservationID = hold.reservationID
                    $0.actualMicros = max(0, actualMicros)
                },
                metadata: principal
            )
        }
    }

    /// Gives the hold back: the call was not made.
    public func release(_ hold: Hold?, metadata: Metadata) async {
        guard let hold else { return }
        let principal = Self.principal(metadata)
        await self.retrying("release", hold) {
            _ = try await self.budget.release(
                .with {
                    $0.projectID = hold.projectID
                    $0.reservationID = hold.reservationID
                },
                metadata: principal
            )
        }
    }

    /// Settles and releases are idempotent at the budget service, so an attempt whose answer was
    /// lost is safe to make again. Refusals (the reservation was finished otherwise) are not
    /// retried. A cancelled caller (a cancelled step) still finishes its reservation.
    private func retrying(_ action: String, _ hold: Hold, _ body: @escaping @Sendable () async throws -> Void) async {
        let logger = self.logger
        await Task.detached {
            await Self.attempts(action, hold, logger: logger, body)
        }.value
    }

    private static func attempts(_ action: String, _ hold: Hold, logger: Logger, _ body: @Sendable () async throws -> Void) async {
        var pause = Duration.milliseconds(100)
        for attempt in 1 ... 4 {
            do {
                try await body()
                return
            } catch let error as RPCError where [.unavailable, .deadlineExceeded, .aborted, .internalError].contains(error.code) && attempt < 4 {
                try? await Task.sleep(for: pause)
                pause *= 4
            } catch {
                logger.error("a budget reservation could not be finished; it will expire at its ttl", metadata: [
                    "action": "\(action)", "reservation": "\(hold.reservationID)", "error": "\(error)",
                ])
                return
            }
        }
    }

    private static func principal(_ metadata: Metadata) -> Metadata {
        ((try? Sparkops_Common_V1_Principal(metadata: metadata)).flatMap { $0 })?.metadata ?? [:]
    }
}
