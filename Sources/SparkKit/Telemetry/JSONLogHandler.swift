public import Logging
import Foundation
import Synchronization

/// Writes one JSON object per log line to standard error:
/// `{"ts":"2026-11-29T04:05:06.789Z","level":"info","service":"project","msg":"…","request_id":"…","trace_id":"…",…}`.
///
/// Metadata becomes top-level fields (`request_id`, `trace_id` and others added by the gateway and
/// the RPC interceptor); values are strings. Bootstrap it once per process with
/// `LoggingSystem.bootstrap { JSONLogHandler(label: $0) }` (`SparkTelemetry.bootstrap` does it).
public struct JSONLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level
    public let label: String
    private let output: @Sendable (String) -> Void

    public init(label: String, level: Logger.Level = .info, output: @escaping @Sendable (String) -> Void = JSONLogHandler.standardError) {
        self.label = label
        self.logLevel = level
        self.output = output
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { self.metadata[key] }
        set { self.metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var fields: [(String, String)] = [
            ("ts", Self.timestamp()),
            ("level", event.level.rawValue),
            ("logger", self.label),
            ("msg", event.message.description),
        ]
        var merged = self.metadata
        if let extra = event.metadata {
            merged.merge(extra) { _, new in new }
        }
        for (key, value) in merged.sorted(by: { $0.key < $1.key }) {
            fields.append((key, "\(value)"))
        }
        var line = "{"
        for (index, (key, value)) in fields.enumerated() {
            if index > 0 { line += "," }
            line += JSONString.quote(key) + ":" + JSONString.quote(value)
        }
        line += "}\n"
        self.output(line)
    }

    public static let standardError: @Sendable (String) -> Void = { line in
        FileHandle.standardError.write(Data(line.utf8))
    }

    private static func timestamp() -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return formatter.string(from: Date())
    }
}
