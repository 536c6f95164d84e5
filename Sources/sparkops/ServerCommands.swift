import ArgumentParser
import AsyncHTTPClient
import NIOCore
import NIOHTTP1
import Configuration
import Foundation
import Logging
import SparkKit
import SparkRuntime

/// Options every server command shares.
struct ServerOptions: ParsableArguments {
    @Option(help: "A JSON configuration file (also SPARKOPS_CONFIG).")
    var config: String?

    @Option(name: .customLong("set"), help: "Set a configuration key, such as --set gateway.port=8080 (repeatable).")
    var settings: [String] = []

    func reader(extra: [String: String] = [:]) async throws -> ConfigReader {
        var overrides = extra
        for setting in self.settings {
            guard let equals = setting.firstIndex(of: "=") else {
                throw ValidationError("--set takes key=value, not \(setting.debugDescription)")
            }
            overrides[String(setting[..<equals])] = String(setting[setting.index(after: equals)...])
        }
        return try await SparkConfiguration.reader(overrides: overrides, file: self.config)
    }
}

struct DevCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dev",
        abstract: "Run every SparkOps service and the gateway in one process (SQLite, local certificates).",
        discussion: """
            Data, certificates and SQLite files live under --home (default ./.sparkops). On the first \
            start it creates certificates and an administrator, whose password it prints once (or \
            takes from SPARKOPS_ADMIN_PASSWORD). Services still talk to each other over SparkWire \
            with mutual TLS on loopback. Stop with Ctrl-C.
            """
    )

    @Option(help: "Where data and certificates live (SPARKOPS_HOME).")
    var home: String?

    @Option(help: "The gateway's HTTP port (SPARKOPS_GATEWAY_PORT).")
    var port: Int?

    @OptionGroup var options: ServerOptions

    func run() async throws {
        var extra: [String: String] = [:]
        if let home = self.home { extra["home"] = home }
        if let port = self.port { extra["gateway.port"] = "\(port)" }
        let config = try await self.options.reader(extra: extra)
        let logger = SparkRuntime.bootstrapTelemetry(config: config, defaultFormat: "text")
        let host = try HostConfig(config: config)
        try SparkRuntime.ensureCertificates(host: host, logger: logger)
        let gateway = try SparkRuntime.gatewayAddresses(config: config)
        Console.say("SparkOps dev: starting every service, data in \(host.home)")
        // The API line comes once the gateway reports ready (its services answer), so that a
        // request sent as soon as it appears is served rather than answered 503.
        let announcer = Task {
            await Self.announceWhenReady(
                readyz: gateway.readyz,
                message: "SparkOps dev: API on http://localhost:\(gateway.apiPort) (OpenAPI: /api/v1/openapi.json)"
            )
        }
        defer { announcer.cancel() }
        try await SparkRuntime.run(ServiceName.available, host: host, config: config, logger: logger)
    }

    /// Polls the gateway's `/readyz` until it answers 200, then prints `message`; says so if that
    /// takes longer than 30 seconds.
    private static func announceWhenReady(readyz: String, message: String) async {
        let started = ContinuousClock.now
        var warned = false
        while !Task.isCancelled {
            var request = HTTPClientRequest(url: readyz)
            request.method = .GET
            if let response = try? await HTTPClient.shared.execute(request, timeout: .seconds(2)), response.status == .ok {
                Console.say(message)
                return
            }
            if !warned && ContinuousClock.now - started > .seconds(30) {
                warned = true
                Console.say("SparkOps dev: the gateway is not ready after 30 s; its log says why (\(readyz))")
            }
            try? await Task.sleep(for: .milliseconds(100))
        }
    }
}

struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Run one service (as the sparkops-<service> executable does)."
    )

    @Argument(help: "The service: \(ServiceName.available.map(\.rawValue).joined(separator: ", ")).")
    var service: String

    @OptionGroup var options: ServerOptions

    func run() async throws {
        guard let name = ServiceName(rawValue: self.service) else {
            throw ValidationError("unknown service \(self.service.debugDescription); one of \(ServiceName.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        let config = try await self.options.reader()
        let logger = SparkRuntime.bootstrapTelemetry(config: config)
        try await SparkRuntime.run([name], host: try HostConfig(config: config), config: config, logger: logger)
    }
}

struct MigrateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "migrate",
        abstract: "Apply pending database migrations and exit (services also apply them when they start)."
    )

    @Option(help: "Only this service.")
    var service: String?

    @OptionGroup var options: ServerOptions

    func run() async throws {
        let names = try self.service.map { name -> [ServiceName] in
            guard let service = ServiceName(rawValue: name) else { throw ValidationError("unknown service \(name.debugDescription)") }
            return [service]
        } ?? ServiceName.available
        let config = try await self.options.reader()
        let logger = SparkRuntime.bootstrapTelemetry(config: config, defaultFormat: "text")
        let applied = try await SparkRuntime.migrate(names, host: try HostConfig(config: config), config: config, logger: logger)
        for (service, ids) in applied.sorted(by: { $0.key < $1.key }) {
            print("\(service): \(ids.isEmpty ? "up to date" : "applied \(ids.joined(separator: ", "))")")
        }
    }
}
