import Configuration
import Foundation
import SparkKit
import Testing

@Suite("Configuration")
struct ConfigurationTests {
    @Test("command line beats environment beats file beats defaults")
    func layering() async throws {
        let file = FileManager.default.temporaryDirectory.appending(path: "sparkops-config-\(UUID().uuidString).json")
        try #"{"gateway": {"port": 7100, "maxBodyBytes": 4096}, "log": {"level": "debug"}, "home": "/from/file"}"#.write(to: file, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: file) }
        let reader = try await SparkConfiguration.reader(
            overrides: ["gateway.port": "7300"],
            file: file.path,
            environment: ["SPARKOPS_GATEWAY_PORT": "7200", "SPARKOPS_GATEWAY_MAX_BODY_BYTES": "8192", "SPARKOPS_HOME": "/from/env"]
        )
        #expect(reader.int(forKey: "gateway.port") == 7300)
        #expect(reader.int(forKey: "gateway.maxBodyBytes") == 8192)
        #expect(reader.string(forKey: "log.level") == "debug")
        #expect(reader.string(forKey: "home") == "/from/env")
        #expect(reader.int(forKey: "gateway.adminPort", default: 9000) == 9000)
    }

    @Test("keys map to SPARKOPS_ environment names")
    func environmentNames() {
        #expect(SparkConfiguration.environmentName("gateway.port") == "SPARKOPS_GATEWAY_PORT")
        #expect(SparkConfiguration.environmentName("database.url") == "SPARKOPS_DATABASE_URL")
        #expect(SparkConfiguration.environmentName("gateway.rateLimit.ipPerMinute") == "SPARKOPS_GATEWAY_RATE_LIMIT_IP_PER_MINUTE")
        #expect(SparkConfiguration.environmentName("project.address") == "SPARKOPS_PROJECT_ADDRESS")
    }

    @Test("the host configuration reads the documented variables and names the key of a bad value")
    func hostConfig() async throws {
        let reader = try await SparkConfiguration.reader(environment: [
            "SPARKOPS_HOME": "/srv/sparkops",
            "SPARKOPS_DATABASE_URL": "postgres://u:p@db:5432/sparkops",
            "SPARKOPS_PROJECT_ADDRESS": "10.0.0.5:7001,10.0.0.6:7001",
        ])
        let host = try HostConfig(config: reader)
        #expect(host.certificateDirectory == "/srv/sparkops/certs")
        #expect(host.listener(.project).address.map(\.description) == ["10.0.0.5:7001", "10.0.0.6:7001"])
        #expect(host.listener(.project).adminPort == 9001)
        guard case .postgres(let url, let maxConnections, let pool) = host.storeLocation() else {
            Issue.record("expected PostgreSQL")
            return
        }
        #expect(url.hasPrefix("postgres://"))
        #expect(maxConnections == 20)
        #expect(pool == SparkStore.PostgresPool(minConnections: 0, keepAlive: .seconds(30)))

        let bad = try await SparkConfiguration.reader(environment: ["SPARKOPS_RUN_ADDRESS": "nohost"])
        #expect {
            _ = try HostConfig(config: bad)
        } throws: { error in
            "\(error)".contains("run.address") && "\(error)".contains("SPARKOPS_RUN_ADDRESS")
        }
    }

    @Test("the PostgreSQL pool's idle connections are configurable, and a minimum above the maximum is an error naming the key")
    func databasePool() async throws {
        let url = "postgres://u:p@db:5432/sparkops"
        let tuned = try HostConfig(config: try await SparkConfiguration.reader(environment: [
            "SPARKOPS_DATABASE_URL": url,
            "SPARKOPS_DATABASE_MAX_CONNECTIONS": "8",
            "SPARKOPS_DATABASE_MIN_CONNECTIONS": "4",
            "SPARKOPS_DATABASE_KEEP_ALIVE_SECONDS": "0",
        ]))
        guard case .postgres(_, let maxConnections, let pool) = tuned.storeLocation() else {
            Issue.record("expected PostgreSQL")
            return
        }
        #expect(maxConnections == 8)
        #expect(pool == SparkStore.PostgresPool(minConnections: 4, keepAlive: nil))

        let slow = try HostConfig(config: try await SparkConfiguration.reader(environment: [
            "SPARKOPS_DATABASE_URL": url, "SPARKOPS_DATABASE_KEEP_ALIVE_SECONDS": "300",
        ]))
        #expect(slow.databasePool.keepAlive == .seconds(300))

        let tooMany = try await SparkConfiguration.reader(environment: [
            "SPARKOPS_DATABASE_URL": url, "SPARKOPS_DATABASE_MAX_CONNECTIONS": "5", "SPARKOPS_DATABASE_MIN_CONNECTIONS": "6",
        ])
        #expect {
            _ = try HostConfig(config: tooMany)
        } throws: { error in
            "\(error)".contains("database.minConnections") && "\(error)".contains("SPARKOPS_DATABASE_MIN_CONNECTIONS") && "\(error)".contains("6")
        }
        for (key, value) in [("SPARKOPS_DATABASE_KEEP_ALIVE_SECONDS", "-1"), ("SPARKOPS_DATABASE_MIN_CONNECTIONS", "-2"), ("SPARKOPS_DATABASE_KEEP_ALIVE_SECONDS", "soon")] {
            let bad = try await SparkConfiguration.reader(environment: ["SPARKOPS_DATABASE_URL": url, key: value])
            #expect {
                _ = try HostConfig(config: bad)
            } throws: { error in
                "\(error)".contains(key) && "\(error)".contains(value)
            }
        }
    }

    @Test("a number that is not one, or out of range, is an error naming the key, not a silent default")
    func integers() async throws {
        let file = FileManager.default.temporaryDirectory.appending(path: "sparkops-config-\(UUID().uuidString).json")
        try #"{"gateway": {"maxBodyBytes": 4096, "callTimeoutSeconds": "soon"}}"#.write(to: file, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: file) }
        let reader = try await SparkConfiguration.reader(
            overrides: ["project.port": "eighty", "gateway.port": "70000"],
            file: file.path,
            environment: ["SPARKOPS_PROJECT_BCRYPT_COST": "12"]
        )
        #expect(try reader.integer(forKey: "gateway.maxBodyBytes", default: 1) == 4096)
        #expect(try reader.integer(forKey: "project.bcryptCost", default: 4, in: 4...31) == 12)
        #expect(try reader.integer(forKey: "project.refreshTokenDays", default: 7) == 7)
        #expect(try reader.integer(forKey: "project.grpcPort") == nil)
        #expect {
            _ = try reader.integer(forKey: "project.port", default: 7001)
        } throws: { error in
            "\(error)".contains("project.port") && "\(error)".contains("SPARKOPS_PROJECT_PORT") && "\(error)".contains("eighty")
        }
        #expect {
            _ = try reader.integer(forKey: "gateway.callTimeoutSeconds", default: 30)
        } throws: { error in
            "\(error)".contains("gateway.callTimeoutSeconds") && "\(error)".contains("soon")
        }
        #expect {
            _ = try reader.integer(forKey: "gateway.port", default: 8000, in: ConfigReader.portRange)
        } throws: { error in
            "\(error)".contains("gateway.port") && "\(error)".contains("70000")
        }
        #expect(throws: SparkConfigurationError.self) { _ = try HostConfig(config: reader) }
    }

    @Test("a configuration file that does not exist is an error, not silence")
    func missingFile() async {
        await #expect(throws: SparkConfigurationError.self) {
            _ = try await SparkConfiguration.reader(file: "/nonexistent/sparkops.json", environment: [:])
        }
    }
}
