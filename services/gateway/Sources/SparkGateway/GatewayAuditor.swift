import Foundation
import GRPCCore
import Logging
import ServiceLifecycle
import SparkProto
import SparkWire
import Synchronization
import SwiftProtobuf

/// Audit events only the gateway sees: refused requests (bad credentials, permission denials, the
/// 404 a non-member gets) and sign-in attempts turned away for their rate.
///
/// A flood must not flood the log, so refusals are aggregated: the first refusal of a caller, route
/// and status in an interval (`gateway.denialAuditSeconds`, 60 s) is recorded at once; the rest of
/// that interval are counted and recorded as one event when it ends ("… 41 more times").
/// Rate-limited sign-ins are recorded at most once per address per interval.
final class GatewayAuditor: Service, Sendable {
    private struct Bucket {
        var event: Sparkops_Project_V1_AuditEvent
        var start: Date
        var suppressed: Int
    }

    private struct State {
        var buckets: [String: Bucket] = [:]
        var lastRateLimitAudit: [String: Date] = [:]
    }

    private let project: Sparkops_Project_V1_ProjectService.SparkWireClient
    private let state = Mutex(State())
    private let interval: TimeInterval
    private let logger: Logger

    init(client: SparkWireChannel, interval: Int = 60, logger: Logger) {
        self.project = .init(wrapping: client)
        self.interval = TimeInterval(interval)
        self.logger = logger
    }

    /// Records the counts of intervals that have ended, until shutdown (then what is pending).
    func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(max(1, self.interval / 4)))
                await self.flush(now: Date())
            }
        }
        await self.flush(now: .distantFuture)
    }

    /// A refused request.
    func denied(actor: String, route: String, projectID: String, status: String, message: String, ip: String) async {
        let now = Date()
        let key = "\(actor)|\(route)|\(status)|\(projectID)"
        let event = Sparkops_Project_V1_AuditEvent.with {
            $0.projectID = projectID
            $0.actor = actor
            $0.action = "api.denied"
            $0.target = route
            $0.outcome = "denied"
            $0.ip = ip
            $0.detail = "\(status): \(message)"
        }
        enum Step { case counted, first(ended: Bucket?) }
        let step = self.state.withLock { state -> Step in
            if var bucket = state.buckets[key], now.timeIntervalSince(bucket.start) < self.interval {
                bucket.suppressed += 1
                state.buckets[key] = bucket
                return .counted
            }
            // A new interval: the previous one's count (if the timer has not written it) goes first.
            let ended = state.buckets[key].flatMap { $0.suppressed > 0 ? $0 : nil }
            if state.buckets.count > 10_000 { state.buckets.removeAll() }
            state.buckets[key] = Bucket(event: event, start: now, suppressed: 0)
            return .first(ended: ended)
        }
        guard case .first(let ended) = step else { return }
        if let ended { await self.record(self.summary(of: ended)) }
        await self.record(event)
    }

    func rateLimited(route: String, ip: String) async {
        let now = Date()
        let due = self.state.withLock { state -> Bool in
            if let previous = state.lastRateLimitAudit[ip], now.timeIntervalSince(previous) < self.interval { return false }
            if state.lastRateLimitAudit.count > 10_000 {
                state.lastRateLimitAudit = state.lastRateLimitAudit.filter { now.timeIntervalSince($0.value) < self.interval }
            }
            state.lastRateLimitAudit[ip] = now
            return true
        }
        self.logger.warning("sign-in attempt rate limited", metadata: ["ip": "\(ip)", "rpc": "\(route)"])
        guard due else { return }
        await self.record(.with {
            $0.actor = "anonymous"
            $0.action = route == "Login" ? "auth.login" : "auth.\(route.lowercased())"
            $0.outcome = "denied"
            $0.ip = ip
            $0.detail = "rate limited at the gateway (further attempts from this address in the next \(Int(self.interval)) s are not audited one by one)"
        })
    }

    /// Writes one event per ended interval that counted more refusals than its first.
    func flush(now: Date) async {
        let ended = self.state.withLock { state -> [Bucket] in
            let ended = state.buckets.filter { now.timeIntervalSince($0.value.start) >= self.interval }
            for key in ended.keys { state.buckets.removeValue(forKey: key) }
            return ended.values.filter { $0.suppressed > 0 }
        }
        for bucket in ended {
            await self.record(self.summary(of: bucket))
        }
    }

    private func summary(of bucket: Bucket) -> Sparkops_Project_V1_AuditEvent {
        var event = bucket.event
        event.detail = "\(bucket.event.detail) (\(bucket.suppressed) more times in the \(Int(self.interval)) s from \(ISO8601DateFormatter().string(from: bucket.start)))"
        return event
    }

    private func record(_ event: Sparkops_Project_V1_AuditEvent) async {
        do {
            _ = try await self.project.recordAuditEvent(.with { $0.event = event })
        } catch {
            self.logger.error("could not record an audit event", metadata: ["error": "\(error)", "action": "\(event.action)"])
        }
    }
}
