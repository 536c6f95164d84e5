import Foundation
import GRPCCore
import Logging
import SparkProto
import SparkWire
import Synchronization
import SwiftProtobuf

/// Audit events only the gateway sees: sign-in attempts it turned away for their rate. At most one
/// event per address per minute, so that a flood of attempts cannot flood the log.
final class GatewayAuditor: Sendable {
    private let project: Sparkops_Project_V1_ProjectService.Client<SparkWireClientTransport>
    private let lastAudit = Mutex<[String: Date]>([:])
    private let logger: Logger

    init(client: GRPCClient<SparkWireClientTransport>, logger: Logger) {
        self.project = .init(wrapping: client)
        self.logger = logger
    }

    func rateLimited(route: String, ip: String) async {
        let now = Date()
        let due = self.lastAudit.withLock { last -> Bool in
            if let previous = last[ip], now.timeIntervalSince(previous) < 60 { return false }
            if last.count > 10_000 { last = last.filter { now.timeIntervalSince($0.value) < 60 } }
            last[ip] = now
            return true
        }
        self.logger.warning("sign-in attempt rate limited", metadata: ["ip": "\(ip)", "rpc": "\(route)"])
        guard due else { return }
        do {
            _ = try await self.project.recordAuditEvent(.with {
                $0.event = .with {
                    $0.actor = "anonymous"
                    $0.action = route == "Login" ? "auth.login" : "auth.\(route.lowercased())"
                    $0.outcome = "denied"
                    $0.ip = ip
                    $0.detail = "rate limited at the gateway (further attempts from this address in the next minute are not audited one by one)"
                }
            })
        } catch {
            self.logger.error("could not record an audit event", metadata: ["error": "\(error)"])
        }
    }
}
