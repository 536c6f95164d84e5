import Foundation
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

/// A PostgreSQL server of a test's own, on a loopback port, in a temporary data directory: for
/// tests that stop and restart the database under load, which the shared test server must not
/// do. Needs the Debian `postgresql` package (its binaries under `/usr/lib/postgresql/<version>`);
/// as root, the server runs as the `postgres` user, as PostgreSQL requires.
public final class LocalPostgres: Sendable {
    public let port: Int
    public let directory: String
    private let binaries: String

    /// `postgres://sparkops@127.0.0.1:<port>/postgres` (trust authentication, loopback only).
    public var url: String { "postgres://sparkops@127.0.0.1:\(self.port)/postgres" }

    /// The binaries' directory, or nil when PostgreSQL is not installed.
    public static var binaries: String? {
        let root = "/usr/lib/postgresql"
        let versions = (try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []
        return versions.sorted { $0.compare($1, options: .numeric) == .orderedAscending }
            .map { "\(root)/\($0)/bin" }
            .last { FileManager.default.isExecutableFile(atPath: "\($0)/pg_ctl") }
    }

    /// Creates the cluster and starts it.
    public static func start() async throws -> LocalPostgres {
        guard let binaries = Self.binaries else { throw TestSetupError(description: "PostgreSQL is not installed (/usr/lib/postgresql/*/bin)") }
        let directory = FileManager.default.temporaryDirectory.appending(path: "sparkops-pg-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        if getuid() == 0 { try FileManager.default.setAttributes([.ownerAccountName: "postgres"], ofItemAtPath: directory) }
        let server = LocalPostgres(port: try await FreePort.allocate(), directory: directory, binaries: binaries)
        try await server.command("initdb", ["-D", "\(directory)/data", "-U", "sparkops", "--auth=trust", "-E", "UTF8", "--no-sync"])
        try await server.startServer()
        return server
    }

    private init(port: Int, directory: String, binaries: String) {
        self.port = port
        self.directory = directory
        self.binaries = binaries
    }

    /// Starts the server and waits (bounded) until it accepts connections.
    public func startServer() async throws {
        let options = "-p \(self.port) -k \(self.directory) -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off -c full_page_writes=off"
        try await self.command("pg_ctl", ["-D", "\(self.directory)/data", "-l", "\(self.directory)/server.log", "-o", options, "-w", "-t", "60", "start"])
    }

    /// Stops the server at once, as a crash would (`pg_ctl stop -m immediate`): in-flight
    /// transactions are lost, committed ones come back by WAL recovery at the next start.
    public func crash() async throws {
        try await self.command("pg_ctl", ["-D", "\(self.directory)/data", "-m", "immediate", "-w", "-t", "60", "stop"])
    }

    /// Stops the server and removes its data.
    public func destroy() async {
        try? await self.crash()
        try? FileManager.default.removeItem(atPath: self.directory)
    }

    /// The server's log, for failure messages.
    public var log: String {
        (try? String(contentsOfFile: "\(self.directory)/server.log", encoding: .utf8)) ?? ""
    }

    private func command(_ name: String, _ arguments: [String]) async throws {
        var executable = "\(self.binaries)/\(name)"
        var arguments = arguments
        if getuid() == 0 {
            arguments = ["-u", "postgres", "--", executable] + arguments
            executable = "/usr/sbin/runuser"
        }
        let output = FileManager.default.temporaryDirectory.appending(path: "sparkops-pg-\(name)-\(UUID().uuidString.prefix(6)).log").path
        defer { try? FileManager.default.removeItem(atPath: output) }
        let environment = ProcessInfo.processInfo.environment.filter { $0.key == "PATH" }
        let process = try await ChildProcess(executable, arguments, environment: environment, directory: "/", outputPath: output)
        guard let status = await process.wait(within: .seconds(120)) else {
            _ = await process.stop(within: .seconds(1))
            throw TestSetupError(description: "\(name) did not finish within 120 s:\n\(process.output)")
        }
        guard status == 0 else { throw TestSetupError(description: "\(name) \(arguments.joined(separator: " ")) exited \(status):\n\(process.output)\n\(self.log)") }
    }
}

/// A Redis server of a test's own, on a loopback port, nothing persisted: for tests that stop it.
public final class LocalRedis: Sendable {
    public let port: Int
    private let process: ChildProcess
    private let logPath: String

    public var url: String { "redis://127.0.0.1:\(self.port)/0" }

    public static var isInstalled: Bool { FileManager.default.isExecutableFile(atPath: "/usr/bin/redis-server") }

    /// Starts `redis-server` and waits (bounded) until it accepts connections.
    public static func start() async throws -> LocalRedis {
        let port = try await FreePort.allocate()
        let logPath = FileManager.default.temporaryDirectory.appending(path: "sparkops-redis-\(port).log").path
        let process = try await ChildProcess(
            "/usr/bin/redis-server", ["--bind", "127.0.0.1", "--port", "\(port)", "--save", "", "--appendonly", "no"],
            environment: [:], directory: "/", outputPath: logPath
        )
        let server = LocalRedis(port: port, process: process, logPath: logPath)
        let deadline = ContinuousClock.now + .seconds(30)
        while !(await Self.accepts(port)) {
            guard process.isRunning, ContinuousClock.now < deadline else {
                await server.stop()
                throw TestSetupError(description: "redis-server did not start within 30 s:\n\(process.output)")
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        return server
    }

    private static func accepts(_ port: Int) async -> Bool {
        guard let channel = try? await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton).connect(host: "127.0.0.1", port: port).get() else {
            return false
        }
        try? await channel.close()
        return true
    }

    private init(port: Int, process: ChildProcess, logPath: String) {
        self.port = port
        self.process = process
        self.logPath = logPath
    }

    /// Freezes the server (SIGSTOP): its connections stay open and nothing is answered.
    public func pause() {
        self.process.signal(SIGSTOP)
    }

    /// Lets a paused server go on (SIGCONT).
    public func resume() {
        self.process.signal(SIGCONT)
    }

    /// Kills the server (SIGKILL): its clients see their connections drop and new ones refused.
    public func stop() async {
        self.process.signal(SIGCONT)
        self.process.signal(SIGKILL)
        _ = await self.process.wait(within: .seconds(20))
        try? FileManager.default.removeItem(atPath: self.logPath)
    }
}
