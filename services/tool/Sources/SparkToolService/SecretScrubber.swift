import SparkExpr
import Synchronization

/// Keeps the project's secret values out of what its tools return: a tool that echoes a secret
/// it was sent (an http tool pointed at a server that reflects its Authorization header, say)
/// would otherwise put it in run outputs, events and approvals, where viewers read them.
///
/// Each value of at least ``minimumLength`` characters becomes `[secret NAME]` wherever it
/// appears in a string of the output, the logs or the error. The project's values are read at
/// most every ``lifetime`` (a secret set through this replica is seen at once).
final class SecretScrubber: Sendable {
    /// Shorter values would blank out ordinary text; they are not scrubbed.
    static let minimumLength = 6
    static let lifetime: Duration = .seconds(10)

    typealias Secret = (name: String, value: String)

    private struct Entry {
        var secrets: [Secret]
        var until: ContinuousClock.Instant
    }

    private let cache = Mutex<[String: Entry]>([:])

    /// The project's secrets worth scrubbing, longest first (so that one value inside another
    /// is not left half-replaced).
    func secrets(projectID: String, load: () async throws -> [Secret]) async throws -> [Secret] {
        if let entry = self.cache.withLock({ $0[projectID] }), entry.until > .now { return entry.secrets }
        let secrets = try await load().filter { $0.value.count >= Self.minimumLength }.sorted { $0.value.count > $1.value.count }
        self.cache.withLock { cache in
            if cache.count > 10_000 { cache.removeAll() }
            cache[projectID] = Entry(secrets: secrets, until: .now + Self.lifetime)
        }
        return secrets
    }

    func forget(projectID: String) {
        _ = self.cache.withLock { $0.removeValue(forKey: projectID) }
    }

    static func scrub(_ text: String, _ secrets: [Secret]) -> String {
        guard !secrets.isEmpty else { return text }
        var text = text
        for secret in secrets where text.contains(secret.value) {
            text = text.replacing(secret.value, with: "[secret \(secret.name)]")
        }
        return text
    }

    static func scrub(_ value: ExprValue, _ secrets: [Secret]) -> ExprValue {
        guard !secrets.isEmpty else { return value }
        switch value {
        case .string(let text): return .string(Self.scrub(text, secrets))
        case .list(let items): return .list(items.map { Self.scrub($0, secrets) })
        case .map(let fields):
            var scrubbed: [String: ExprValue] = [:]
            for (key, field) in fields { scrubbed[Self.scrub(key, secrets)] = Self.scrub(field, secrets) }
            return .map(scrubbed)
        default: return value
        }
    }
}
