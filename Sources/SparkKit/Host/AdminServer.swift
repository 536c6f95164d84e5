public import Hummingbird
public import Logging
import NIOCore
import Prometheus

/// The admin HTTP listener of a service: `/healthz` (the process is up), `/readyz` (it can serve:
/// migrations applied, database reachable) and `/metrics` (Prometheus text format).
public enum AdminServer {
    public static func application(
        service: ServiceName,
        host: String,
        port: Int,
        ready: @escaping @Sendable () async -> Bool,
        logger: Logger
    ) -> some ApplicationProtocol {
        let router = Router()
        router.get("/healthz") { _, _ in
            Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: #"{"status":"ok"}"#)))
        }
        router.get("/readyz") { _, _ in
            let isReady = await ready()
            return Response(
                status: isReady ? .ok : .serviceUnavailable,
                headers: [.contentType: "application/json"],
                body: .init(byteBuffer: ByteBuffer(string: isReady ? #"{"status":"ready"}"# : #"{"status":"not ready"}"#))
            )
        }
        router.get("/metrics") { _, _ in
            Response(
                status: .ok,
                headers: [.contentType: "text/plain; version=0.0.4"],
                body: .init(byteBuffer: ByteBuffer(bytes: SparkTelemetry.registry.emitToBuffer()))
            )
        }
        var appLogger = logger
        appLogger[metadataKey: "listener"] = "admin"
        return Application(
            router: router,
            configuration: .init(address: .hostname(host, port: port), serverName: "sparkops-\(service.rawValue)-admin"),
            logger: appLogger
        )
    }
}
