public import Configuration
public import Foundation
import SystemPackage

/// Builds the configuration every SparkOps process reads, in layers:
/// command-line overrides > environment variables (`SPARKOPS_…`) > a JSON file > defaults in code.
///
/// Keys are dotted and lowerCamelCase; the environment spells them upper snake case behind
/// `SPARKOPS_`: the key `gateway.port` is `SPARKOPS_GATEWAY_PORT`, `database.url` is
/// `SPARKOPS_DATABASE_URL`. The file is JSON with the same nesting (`{"gateway": {"port": 8000}}`),
/// named by `--config` or `SPARKOPS_CONFIG`. docs/configuration.md lists every key.
public enum SparkConfiguration {
    /// The layered reader.
    ///
    /// - Parameters:
    ///   - overrides: values from the command line, by key (`"gateway.port": "8080"`).
    ///   - file: a JSON file; nil reads `SPARKOPS_CONFIG` if set.
    ///   - environment: the process environment (tests pass their own).
    public static func reader(
        overrides: [String: String] = [:],
        file: String? = nil,
        environment: [String: String] = ProcessInfo.processInfo.environment
    ) async throws -> ConfigReader {
        // Command-line values are read like environment variables, so that "8080" reads as an int
        // and "a,b" as a list, exactly as SPARKOPS_… variables do.
        var commandLine: [String: String] = [:]
        for (key, value) in overrides {
            commandLine[Self.environmentName(key)] = value
        }
        var providers: [any ConfigProvider] = [
            EnvironmentVariablesProvider(
                environmentVariables: commandLine,
                secretsSpecifier: .dynamic { key, _ in key.contains("PASSWORD") || key.contains("SECRET") || key.contains("URL") }
            ).prefixKeys(with: "sparkops"),
            EnvironmentVariablesProvider(
                environmentVariables: environment,
                secretsSpecifier: .dynamic { key, _ in key.contains("PASSWORD") || key.contains("SECRET") || key.contains("URL") }
            ).prefixKeys(with: "sparkops"),
        ]
        if let path = file ?? environment["SPARKOPS_CONFIG"] {
            guard FileManager.default.fileExists(atPath: path) else {
                throw SparkConfigurationError("configuration file \(path) does not exist")
            }
            providers.append(try await FileProvider<JSONSnapshot>(filePath: FilePath(path)))
        }
        return ConfigReader(providers: providers)
    }

    /// The environment variable of a key: `gateway.corsOrigins` is `SPARKOPS_GATEWAY_CORS_ORIGINS`.
    public static func environmentName(_ key: String) -> String {
        var name = "SPARKOPS"
        for component in key.split(separator: ".") {
            name += "_"
            var previous: Character?
            for character in component {
                if let previous, previous.isLowercase || previous.isNumber, character.isUppercase { name += "_" }
                name += character.uppercased()
                previous = character
            }
        }
        return name
    }
}

/// Configuration that cannot be used, naming the key.
public struct SparkConfigurationError: Error, CustomStringConvertible, Sendable {
    public var description: String

    public init(_ description: String) {
        self.description = description
    }
}

extension ConfigReader {
    /// An integer setting, or `default` when it is not set. A value that is set but is not an
    /// integer (`--set project.port=eighty`) is an error naming the key, never a silent default.
    /// With `range`, a value outside it is an error too.
    public func integer(forKey key: String, default defaultValue: Int, in range: ClosedRange<Int>? = nil) throws -> Int {
        let value = try self.integer(forKey: key) ?? defaultValue
        if let range, !range.contains(value) {
            throw SparkConfigurationError("\(key) (\(SparkConfiguration.environmentName(key))) must be in \(range.lowerBound)...\(range.upperBound), not \(value)")
        }
        return value
    }

    /// The range of a TCP port setting (0 picks a free port).
    public static var portRange: ClosedRange<Int> { 0...65_535 }

    /// An integer setting, or nil when it is not set; a value that is not an integer is an error.
    public func integer(forKey key: String) throws -> Int? {
        let configKey = ConfigKey(key)
        if let value = self.int(forKey: configKey) { return value }
        guard let text = self.string(forKey: configKey) else { return nil }
        throw SparkConfigurationError("\(key) (\(SparkConfiguration.environmentName(key))) must be an integer, not \(text.debugDescription)")
    }
}
