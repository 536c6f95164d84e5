import Foundation
public import GRPCCore
import Logging
import Metrics
import SQLKit
import SparkKit
public import SparkProto
import SwiftProtobuf

/// A hard budget that an amount does not fit: the reservation's transaction rolls back.
struct Refusal: Error {
    var budget: BudgetRow
    var usage: UsageRow?
    var amount: Int64

    var error: SparkError {
        let left = self.usage.map { $0.limitMicros - $0.spentMicros - $0.reservedMicros } ?? self.budget.limitMicros
        let period = self.usage?.period ?? self.budget.period.rawValue
        return SparkError(
            .resourceExhausted,
            "budget \(self.budget.name) (\(period)) has \(max(0, left)) of its \(self.usage?.limitMicros ?? self.budget.limitMicros) micro-USD left; this needs \(self.amount)",
            field: "amount_micros"
        )
    }
}

extension BudgetService {
    // MARK: Reserve

    public func reserve(
        request: ServerRequest<Sparkops_Budget_V1_ReserveRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Budget_V1_ReserveResponse> {
        let message = request.message
        let principal = try await self.access.require(request.metadata, projectID: message.projectID, permission: "budget.spend")
        try Validate.amount(message.amountMicros, field: "amount_micros", allowZero: false)
        let ttl = message.ttlSeconds == 0 ? self.settings.defaultTTLSeconds : Int(message.ttlSeconds)
        guard ttl > 0, ttl <= self.settings.maxTTLSeconds else {
            throw SparkError.invalid("ttl_seconds", "must be between 1 and \(self.settings.maxTTLSeconds) (0: \(self.settings.defaultTTLSeconds))")
        }
        let attribution = try Self.attribution(message.attribution, principal: principal)
        if message.runEnvelope, attribution.runID.isEmpty {
            throw SparkError.invalid("attribution.run_id", "is required for a run envelope: the run whose calls draw on it")
        }
        let result: (ReservationRow, [HoldRow], [UsageRow])
        do {
            result = try await self.reserve(projectID: message.projectID, amount: message.amountMicros, ttl: ttl, attribution: attribution, envelope: message.runEnvelope)
        } catch let refusal as Refusal {
            // Reservations that expired but were not swept yet must not refuse anyone: sweep
            // now, and try once more if that gave anything back.
            guard try await self.expireDue(limit: 1000) > 0 else { throw self.refused(refusal) }
            do {
                result = try await self.reserve(projectID: message.projectID, amount: message.amountMicros, ttl: ttl, attribution: attribution, envelope: message.runEnvelope)
            } catch let refusal as Refusal {
                throw self.refused(refusal)
            }
        }
        Counter(label: "sparkops_budget_reservations_total", dimensions: [("outcome", "admitted")]).increment()
        return ServerResponse(message: .with {
            $0.reservation = Self.message(result.0, holds: result.1)
            $0.usage = result.2.map { Self.message($0) }
        })
    }

    func refused(_ refusal: Refusal) -> SparkError {
        Counter(label: "sparkops_budget_reservations_total", dimensions: [("outcome", "refused")]).increment()
        self.logger.info("reservation refused", metadata: ["budget": "\(refusal.budget.id)", "amount": "\(refusal.amount)"])
        return refusal.error
    }

    /// One transaction: the amount goes onto every covering budget's period, each by a
    /// conditional update, or onto none. A call made for a run whose envelope is held takes what
    /// it can of the envelope first: the envelope's holds give up that much in the same
    /// transaction, so only the rest must fit.
    func reserve(projectID: String, amount: Int64, ttl: Int, attribution: AttributionRow, envelope: Bool = false) async throws -> (ReservationRow, [HoldRow], [UsageRow]) {
        let date = Date()
        let now = BudgetStore.now()
        return try await self.store.store.transaction { db in
            // The run's envelope row first, then the usage rows in budget order: every
            // transaction takes its locks in that order.
            var draw: (envelope: ReservationRow, holds: [HoldRow], amount: Int64)?
            if !attribution.runID.isEmpty, let held = try await self.store.heldEnvelope(projectID: projectID, runID: attribution.runID, on: db) {
                if envelope {
                    guard held.amountMicros == amount else {
                        throw SparkError(
                            .failedPrecondition,
                            "run \(attribution.runID) holds the envelope \(held.id) of \(held.amountMicros) micro-USD already; release it first",
                            field: "run_envelope"
                        )
                    }
                    let holds = try await self.store.holds(of: held.id, on: db)
                    var usages: [UsageRow] = []
                    for hold in holds {
                        if let usage = try await self.store.usage(budgetID: hold.budgetID, period: hold.period, on: db) { usages.append(usage) }
                    }
                    return (held, holds, usages)
                }
                let taken = min(amount, held.amountMicros)
                if taken > 0, let left = try await self.store.adjustEnvelope(held.id, by: -taken, on: db) {
                    draw = (left, try await self.store.holds(of: held.id, on: db), taken)
                }
            }
            let budgets = try await self.store.covering(projectID: projectID, attribution, on: db)
            let periods = budgets.map { $0.period.key(at: date, in: self.settings.timeZone) }
            for (budget, period) in zip(budgets, periods) {
                try await self.store.ensureUsage(budget, period: period, on: db)
            }
            // The reservation first: the usage rows' locks, taken by the conditional updates,
            // then last only to the commit.
            var reservation = ReservationRow(
                id: SparkID.make("res"), projectID: projectID, amountMicros: amount, status: .held, actualMicros: 0, late: false,
                attribution: attribution, createdAt: now, expiresAt: now + Int64(ttl) * 1_000_000, finishedAt: 0
            )
            reservation.envelope = envelope
            reservation.drawnMicros = draw?.amount ?? 0
            reservation.envelopeID = draw?.envelope.id ?? ""
            let holds = zip(budgets, periods).map { HoldRow(budgetID: $0.id, period: $1) }
            try await self.store.insert(reservation, holds: holds, on: db)
            enum Change { case draw(HoldRow), reserve(BudgetRow, String) }
            var changes = (draw?.holds ?? []).map { (key: "\($0.budgetID)/\($0.period)/0", change: Change.draw($0)) }
            changes += zip(budgets, periods).map { (key: "\($0.id)/\($1)/1", change: Change.reserve($0, $1)) }
            var usages: [UsageRow] = []
            for (_, change) in changes.sorted(by: { $0.key < $1.key }) {
                switch change {
                case .draw(let hold):
                    guard let draw else { continue }
                    _ = try await self.store.move(
                        budgetID: hold.budgetID, period: hold.period, unreserve: draw.amount, spend: 0, kind: "draw", amount: draw.amount,
                        reservation: draw.envelope, now: now, on: db
                    )
                case .reserve(let budget, let period):
                    let admitted = try await self.store.reserve(
                        budgetID: budget.id, period: period, amount: amount, bounded: budget.hard, recording: reservation, now: now, on: db
                    )
                    guard let usage = admitted else {
                        throw Refusal(budget: budget, usage: try await self.store.usage(budgetID: budget.id, period: period, on: db), amount: amount)
                    }
                    usages.append(usage)
                }
            }
            return (reservation, holds, usages)
        }
    }

    static func attribution(_ message: Sparkops_Budget_V1_Attribution, principal: Sparkops_Common_V1_Principal) throws -> AttributionRow {
        let fields: [(String, String)] = [
            ("attribution.workflow", message.workflow), ("attribution.agent", message.agent), ("attribution.model", message.model),
            ("attribution.tool", message.tool), ("attribution.run_id", message.runID), ("attribution.step_id", message.stepID),
        ]
        for (field, value) in fields {
            guard value.utf8.count <= 200, !value.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else {
                throw SparkError.invalid(field, "must be at most 200 characters, without control characters")
            }
        }
        // Spend made with an API key counts on that key's budgets: the key is the caller's, never
        // one the request names.
        let key = principal.kind == .apiKey ? principal.id : ""
        guard message.apiKeyID.isEmpty || message.apiKeyID == key else {
            throw SparkError.invalid("attribution.api_key_id", "is the calling API key's, and is filled in by the budget service; leave it empty")
        }
        return AttributionRow(
            workflow: message.workflow, agent: message.agent, apiKeyID: key, model: message.model, tool: message.tool,
            runID: message.runID, stepID: message.stepID
        )
    }

    // MARK: Settle and release

    enum Finish: Sendable {
        case done(ReservationRow, [HoldRow], [AlertRow], again: Bool)
        case raced
    }

    public func settle(
        request: ServerRequest<Sparkops_Budget_V1_SettleRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Budget_V1_SettleResponse> {
        let message = request.message
        try await self.access.require(request.metadata, projectID: message.projectID, permission: "budget.spend")
        try Validate.reservationID(message.reservationID)
        try Validate.amount(message.actualMicros, field: "actual_micros", allowZero: true)
        let (row, holds, again) = try await self.finish { db, now in
            if let row = try await self.store.transition(message.reservationID, projectID: message.projectID, from: .held, to: .settled, actual: message.actualMicros, now: now, on: db) {
                guard !row.envelope else {
                    throw SparkError(.failedPrecondition, "reservation \(row.id) is a run's envelope: its calls settle, and it is released when the run ends", field: "reservation_id")
                }
                let (holds, alerts) = try await self.apply(row, kind: "settle", unreserve: row.amountMicros, spend: message.actualMicros, now: now, on: db)
                if message.actualMicros > row.amountMicros {
                    self.logger.warning("a settle exceeded its reservation", metadata: ["reservation": "\(row.id)", "reserved": "\(row.amountMicros)", "actual": "\(message.actualMicros)"])
                }
                return .done(row, holds, alerts, again: false)
            }
            guard let current = try await self.store.reservation(message.reservationID, projectID: message.projectID, on: db) else {
                throw SparkError.notFound("reservation")
            }
            switch current.status {
            case .settled:
                guard current.actualMicros == message.actualMicros else {
                    throw SparkError(
                        .failedPrecondition,
                        "reservation \(current.id) was settled at \(current.actualMicros) micro-USD already; it is not settled again at another amount",
                        field: "actual_micros"
                    )
                }
                return .done(current, try await self.store.holds(of: current.id, on: db), [], again: true)
            case .released:
                throw SparkError(.failedPrecondition, "reservation \(current.id) was released; a released reservation is not settled", field: "reservation_id")
            case .expired:
                // The call went on past its reservation's expiry and did cost this: charge it.
                guard let row = try await self.store.transition(current.id, projectID: message.projectID, from: .expired, to: .settled, actual: message.actualMicros, late: true, now: now, on: db) else {
                    return .raced
                }
                let (holds, alerts) = try await self.apply(row, kind: "charge", unreserve: 0, spend: message.actualMicros, now: now, on: db)
                return .done(row, holds, alerts, again: false)
            case .held:
                return .raced
            }
        }
        return ServerResponse(message: .with {
            $0.reservation = Self.message(row, holds: holds)
            $0.alreadySettled = again
        })
    }

    public func release(
        request: ServerRequest<Sparkops_Budget_V1_ReleaseRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Budget_V1_ReleaseResponse> {
        let message = request.message
        try await self.access.require(request.metadata, projectID: message.projectID, permission: "budget.spend")
        try Validate.reservationID(message.reservationID)
        let (row, holds, again) = try await self.finish { db, now in
            if let row = try await self.store.transition(message.reservationID, projectID: message.projectID, from: .held, to: .released, now: now, on: db) {
                let (holds, _) = try await self.apply(row, kind: "release", unreserve: row.amountMicros, spend: 0, now: now, on: db)
                return .done(row, holds, [], again: false)
            }
            guard let current = try await self.store.reservation(message.reservationID, projectID: message.projectID, on: db) else {
                throw SparkError.notFound("reservation")
            }
            switch current.status {
            case .released, .expired:
                return .done(current, try await self.store.holds(of: current.id, on: db), [], again: true)
            case .settled:
                throw SparkError(.failedPrecondition, "reservation \(current.id) was settled; a settled reservation is not released", field: "reservation_id")
            case .held:
                return .raced
            }
        }
        return ServerResponse(message: .with {
            $0.reservation = Self.message(row, holds: holds)
            $0.alreadyReleased = again
        })
    }

    public func getReservation(
        request: ServerRequest<Sparkops_Budget_V1_GetReservationRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Budget_V1_Reservation> {
        let message = request.message
        try await self.access.require(request.metadata, projectID: message.projectID, permission: "budget.read")
        try Validate.reservationID(message.reservationID)
        let found = try await self.store.store.sql { db -> (ReservationRow, [HoldRow])? in
            guard let row = try await self.store.reservation(message.reservationID, projectID: message.projectID, on: db) else { return nil }
            return (row, try await self.store.holds(of: row.id, on: db))
        }
        guard let (row, holds) = found else { throw SparkError.notFound("reservation") }
        return ServerResponse(message: Self.message(row, holds: holds))
    }

    /// Runs a settle's or release's transaction until it is not overtaken by another one on the
    /// same reservation (an expiry between its two statements, on PostgreSQL), then emits the
    /// alerts it stored.
    func finish(_ body: @escaping @Sendable (any SQLDatabase, Int64) async throws -> Finish) async throws -> (ReservationRow, [HoldRow], Bool) {
        for _ in 0 ..< 5 {
            let outcome = try await self.store.store.transaction { db in try await body(db, BudgetStore.now()) }
            guard case .done(let row, let holds, let alerts, let again) = outcome else { continue }
            self.emit(alerts, projectID: row.projectID)
            return (row, holds, again)
        }
        throw SparkError(.aborted, "the reservation changed while it was being finished; try again")
    }

    /// Moves a finished reservation's amounts on each period it held, with a ledger entry for each,
    /// and stores the alerts the new spend reached. A call that drew on its run's envelope gives
    /// the envelope back what of the drawn part it did not spend, if the envelope is still held
    /// (once: when the call leaves `held`, not at a late charge).
    func apply(_ row: ReservationRow, kind: String, unreserve: Int64, spend: Int64, now: Int64, on db: any SQLDatabase) async throws -> ([HoldRow], [AlertRow]) {
        let holds = try await self.store.holds(of: row.id, on: db)
        var giveBack: (envelope: ReservationRow, holds: [HoldRow], amount: Int64)?
        let back = max(0, row.drawnMicros - spend)
        if kind != "charge", back > 0, !row.envelopeID.isEmpty, let envelope = try await self.store.adjustEnvelope(row.envelopeID, by: back, on: db) {
            giveBack = (envelope, try await self.store.holds(of: envelope.id, on: db), back)
        }
        // Usage rows in budget order, as every transaction locks them.
        var changes = holds.map { (key: "\($0.budgetID)/\($0.period)/0", hold: $0, returning: false) }
        changes += (giveBack?.holds ?? []).map { (key: "\($0.budgetID)/\($0.period)/1", hold: $0, returning: true) }
        var alerts: [AlertRow] = []
        for (_, hold, returning) in changes.sorted(by: { $0.key < $1.key }) {
            if returning, let giveBack {
                _ = try await self.store.move(
                    budgetID: hold.budgetID, period: hold.period, unreserve: -giveBack.amount, spend: 0, kind: "return", amount: giveBack.amount,
                    reservation: giveBack.envelope, now: now, on: db
                )
                continue
            }
            // Read before the update locks the usage row, which stays locked to the commit.
            let budget = spend > 0 ? try await self.store.budget(hold.budgetID, projectID: row.projectID, on: db) : nil
            let amount = kind == "release" || kind == "expire" ? unreserve : spend
            let moved = try await self.store.move(
                budgetID: hold.budgetID, period: hold.period, unreserve: unreserve, spend: spend, kind: kind, amount: amount, reservation: row, now: now, on: db
            )
            guard let usage = moved else { continue }
            if let budget {
                alerts += try await self.store.alerts(for: budget, usage: usage, now: now, on: db)
            }
        }
        return (holds, alerts)
    }

    /// Alerts are stored once per budget, period and threshold (in the transaction that reached
    /// them); each is logged and counted when it is stored.
    func emit(_ alerts: [AlertRow], projectID: String) {
        for alert in alerts {
            Counter(label: "sparkops_budget_alerts_total", dimensions: [("threshold", "\(alert.threshold)")]).increment()
            self.logger.warning("budget alert", metadata: [
                "project": "\(projectID)", "budget": "\(alert.budgetID)", "name": "\(alert.budgetName)", "period": "\(alert.period)",
                "threshold": "\(alert.threshold)", "spent_micros": "\(alert.spentMicros)", "limit_micros": "\(alert.limitMicros)",
            ])
        }
    }

    // MARK: Expiry

    /// Gives back the amounts of held reservations past their expiry, each in its own transaction,
    /// guarded by its status: safe with any number of replicas sweeping at once. Returns how many
    /// this call expired.
    @discardableResult
    func expireDue(limit: Int) async throws -> Int {
        let due = try await self.store.store.sql { try await self.store.expired(now: BudgetStore.now(), limit: limit, on: $0) }
        var expired = 0
        for (id, projectID) in due {
            let done = try await self.store.store.transaction { db -> Bool in
                let now = BudgetStore.now()
                guard let row = try await self.store.transition(id, projectID: projectID, from: .held, to: .expired, now: now, expiredBy: now, on: db) else {
                    return false
                }
                _ = try await self.apply(row, kind: "expire", unreserve: row.amountMicros, spend: 0, now: now, on: db)
                return true
            }
            if done { expired += 1 }
        }
        if expired > 0 {
            Counter(label: "sparkops_budget_reservations_expired_total").increment(by: expired)
            self.logger.info("expired reservations", metadata: ["count": "\(expired)"])
        }
        return expired
    }
}
