public import Logging
import Metrics
public import Prometheus
import Synchronization

/// Process-wide logging and metrics, set up once per process.
public enum SparkTelemetry {
    private static let bootstrapped = Mutex(false)

    /// The registry `/metrics` serves.
    public static let registry = PrometheusCollectorRegistry()

    /// JSON logs at `level` and Prometheus metrics; later calls do nothing.
    public static func bootstrap(logLevel: Logger.Level = .info, jsonLogs: Bool = true) {
        let first = Self.bootstrapped.withLock { done in
            defer { done = true }
            return !done
        }
        guard first else { return }
        if jsonLogs {
            LoggingSystem.bootstrap { JSONLogHandler(label: $0, level: logLevel) }
        }
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: Self.registry))
    }
}
