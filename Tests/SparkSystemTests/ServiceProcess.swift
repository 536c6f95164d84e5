import Foundation
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
final class ServiceProcess: Sendable {
    let name: String
    let logPath: String
    private let child: ChildProcess

    /// Starts `executable` with `arguments` and only PATH and HOME from the environment, so that
    /// a developer's `SPARKOPS_*` variables do not leak in. `input`, when given, is what the
    /// process reads on stdin.
    init(_ executable: String, _ arguments: [String], logDirectory: String, environment: [String: String] = [:], input: String? = nil) async throws {
        self.name = executable
        self.logPath = "\(logDirectory)/\(executable)-\(UUID().uuidString.prefix(6)).log"
        var inherited = ProcessInfo.processInfo.environment.filter { $0.key == "PATH" || $0.key == "HOME" }
        inherited.merge(environment) { _, new in new }
        self.child = try await ChildProcess(try Executables.path(executable), arguments, environment: inherited, input: input, outputPath: self.logPath)
    }

    var isRunning: Bool { self.child.isRunning }

    var output: String { self.child.output }

    /// Sends SIGTERM and waits (bounded) for the process to exit; returns its exit status, or nil
    /// when it had to be killed.
    func stop(within limit: Duration = .seconds(20)) async -> Int32? {
        await self.child.stop(within: limit)
    }

    var pid: Int32 { self.child.processID ?? -1 }

    /// Waits, at most `limit`, for the process to exit by itself; its status, or nil if it still runs.
    func exit(within limit: Duration) async -> Int32? {
        await self.child.wait(within: limit)
    }

    /// Sends `signal` (SIGSTOP, SIGCONT, SIGTERM, …) and returns at once.
    func signal(_ signal: Int32) {
        self.child.signal(signal)
    }

    /// Sends SIGKILL, as a crash or an out-of-memory kill would, and waits (bounded) until the
    /// process is gone.
    func kill() async {
        self.child.signal(SIGKILL)
        _ = await self.child.wait(within: .seconds(20))
    }

    /// Runs `executable` to completion (bounded by 60 s) and returns its exit status and output.
    static func run(_ executable: String, _ arguments: [String], environment: [String: String] = [:], input: String? = nil) async throws -> (status: Int32, output: String) {
        let directory = FileManager.default.temporaryDirectory.path
        let process = try await ServiceProcess(executable, arguments, logDirectory: directory, environment: environment, input: input)
        defer {
            try? FileManager.default.removeItem(atPath: process.logPath)
            try? FileManager.default.removeItem(atPath: process.logPath + ".stdin")
        }
        guard let status = await process.child.wait(within: .seconds(60)) else {
            _ = await process.stop(within: .seconds(1))
            throw TestSetupError(description: "\(executable) \(arguments.joined(separator: " ")) did not finish within 60 s:\n\(process.output)")
        }
        return (status, process.output)
    }
}
