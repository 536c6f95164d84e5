import Foundation
import Synchronization
import SparkTesting

#if canImport(Glibc)
import Glibc
#endif

/// The directory holding the built executables: the one the test bundle was built into
/// (`swift build --build-tests` builds every product), or `SPARKOPS_BIN_DIR`.
enum Executables {
    static var directory: URL {
        if let explicit = ProcessInfo.processInfo.environment["SPARKOPS_BIN_DIR"] { return URL(filePath: explicit) }
        return URL(filePath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
    }

    static func path(_ name: String) throws -> String {
        let path = self.directory.appending(path: name).path
        guard FileManager.default.isExecutableFile(atPath: path) else {
            throw TestSetupError(description: "\(path) is missing: build it first (swift build --build-tests builds every executable)")
        }
        return path
    }
}

/// A SparkOps executable running as a child process, its output kept in a log file.
final class ServiceProcess: @unchecked Sendable {
    let name: String
    let logPath: String
    private let process = Process()

    /// Starts `executable` with `arguments` and only PATH and HOME from the environment, so that
    /// a developer's `SPARKOPS_*` variables do not leak in.
    /// `input`, when given, is what the process reads on stdin.
    init(_ executable: String, _ arguments: [String], logDirectory: String, environment: [String: String] = [:], input: String? = nil) throws {
        self.name = executable
        self.logPath = "\(logDirectory)/\(executable)-\(UUID().uuidString.prefix(6)).log"
        _ = FileManager.default.createFile(atPath: self.logPath, contents: nil)
        let log = try FileHandle(forWritingTo: URL(filePath: self.logPath))
        self.process.executableURL = URL(filePath: try Executables.path(executable))
        self.process.arguments = arguments
        var inherited = ProcessInfo.processInfo.environment.filter { $0.key == "PATH" || $0.key == "HOME" }
        inherited.merge(environment) { _, new in new }
        self.process.environment = inherited
        self.process.standardOutput = log
        self.process.standardError = log
        if let input {
            let inputPath = self.logPath + ".stdin"
            _ = FileManager.default.createFile(atPath: inputPath, contents: Data(input.utf8))
            self.process.standardInput = try FileHandle(forReadingFrom: URL(filePath: inputPath))
        }
        // Foundation's Process.run is not safe to call from several threads at once on Linux
        // (seen: a crash in its memcpy while two suites launched executables together).
        try Self.launches.withLock { _ in try self.process.run() }
    }

    /// Launches one at a time in this test process.
    private static let launches = Mutex(())

    var isRunning: Bool { self.process.isRunning }

    var output: String {
        (try? String(contentsOfFile: self.logPath, encoding: .utf8)) ?? ""
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit; returns its exit status, or nil
    /// when it had to be killed.
    func stop(within limit: Duration = .seconds(20)) async -> Int32? {
        guard self.process.isRunning else { return self.process.terminationStatus }
        self.process.terminate()
        let deadline = ContinuousClock.now + limit
        while self.process.isRunning && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(50))
        }
        guard !self.process.isRunning else {
            kill(self.process.processIdentifier, SIGKILL)
            self.process.waitUntilExit()
            return nil
        }
        return self.process.terminationStatus
    }

    /// Runs `executable` to completion (bounded by 60 s) and returns its exit status and output.
    static func run(_ executable: String, _ arguments: [String], environment: [String: String] = [:], input: String? = nil) async throws -> (status: Int32, output: String) {
        let directory = FileManager.default.temporaryDirectory.path
        let process = try ServiceProcess(executable, arguments, logDirectory: directory, environment: environment, input: input)
        defer {
            try? FileManager.default.removeItem(atPath: process.logPath)
            try? FileManager.default.removeItem(atPath: process.logPath + ".stdin")
        }
        let deadline = ContinuousClock.now + .seconds(60)
        while process.isRunning && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(20))
        }
        guard !process.isRunning else {
            _ = await process.stop(within: .seconds(1))
            throw TestSetupError(description: "\(executable) \(arguments.joined(separator: " ")) did not finish within 60 s:\n\(process.output)")
        }
        return (process.process.terminationStatus, process.output)
    }
}
