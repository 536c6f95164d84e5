import Foundation
import Subprocess
import Synchronization
#if canImport(Glibc)
import Glibc
#endif
#if canImport(System)
import System
#else
import SystemPackage
#endif

/// A program running as a child of the test process, started with swift-subprocess, its stdout
/// and stderr written to a file. Foundation's `Process.run` is not used: on Linux it can crash
/// (a memcpy in its file-descriptor walk) while other threads open and close descriptors, as
/// SwiftNIO and the tool service's own subprocesses do all the time.
///
/// ```swift
/// let child = try ChildProcess("/usr/bin/env", ["python3", "-c", "print(1)"], outputPath: "/tmp/out.log")
/// let status = await child.wait()
/// ```
public final class ChildProcess: Sendable {
    public let outputPath: String
    let pid = Mutex<pid_t?>(nil)
    let exitStatus = Mutex<Int32?>(nil)
    let started = Mutex<CheckedContinuation<Void, Never>?>(nil)

    /// Starts `executable` with `arguments` and exactly `environment`, in `directory`; `input`,
    /// when given, is what it reads on stdin (otherwise /dev/null).
    public init(_ executable: String, _ arguments: [String], environment: [String: String], directory: String? = nil, input: String? = nil, outputPath: String) async throws {
        self.outputPath = outputPath
        let output = try FileDescriptor.open(FilePath(outputPath), .writeOnly, options: [.create, .truncate, .append], permissions: [.ownerReadWrite, .groupRead, .otherRead])
        var inputPath = "/dev/null"
        if let input {
            inputPath = outputPath + ".stdin"
            _ = FileManager.default.createFile(atPath: inputPath, contents: Data(input.utf8))
        }
        let stdin = try FileDescriptor.open(FilePath(inputPath), .readOnly)
        var options = PlatformOptions()
        options.teardownSequence = [.send(signal: .kill, allowedDurationToNextStep: .milliseconds(100))]
        let configuration = Configuration(
            executable: .path(FilePath(executable)),
            arguments: Arguments(arguments),
            environment: .custom(Dictionary(uniqueKeysWithValues: environment.map { (Environment.Key(rawValue: $0.key)!, $0.value) })),
            workingDirectory: directory.map { FilePath($0) },
            platformOptions: options
        )
        let launched = LaunchResult()
        let state = self
        Task.detached {
            do {
                let result = try await Subprocess.run(
                    configuration,
                    input: .fileDescriptor(stdin, closeAfterSpawningProcess: true),
                    output: .fileDescriptor(output, closeAfterSpawningProcess: true),
                    error: .combinedWithOutput
                ) { execution in
                    let pid = execution.processIdentifier.value
                    state.pid.withLock { $0 = pid }
                    StartedProcesses.record(pid)
                    launched.finish(nil)
                }
                let status: Int32
                switch result.terminationStatus {
                case .exited(let code): status = code
                case .signaled(let signal): status = 128 + signal
                }
                state.exitStatus.withLock { $0 = status }
            } catch {
                state.exitStatus.withLock { $0 = 127 }
                launched.finish("\(error)")
            }
        }
        if let failure = await launched.wait() {
            throw ChildProcessError(description: "\(executable) did not start: \(failure)")
        }
    }

    public var isRunning: Bool { self.exitStatus.withLock { $0 } == nil }

    /// The exit status once it has exited (128 + the signal when a signal ended it).
    public var terminationStatus: Int32? { self.exitStatus.withLock { $0 } }

    public var output: String {
        (try? String(contentsOfFile: self.outputPath, encoding: .utf8)) ?? ""
    }

    /// The process's id once it has started.
    public var processID: Int32? { self.pid.withLock { $0 } }

    public func signal(_ signal: Int32) {
        if let pid = self.pid.withLock({ $0 }), self.isRunning { kill(pid, signal) }
    }

    /// Waits, at most `limit`, for the exit; nil if it is still running.
    public func wait(within limit: Duration = .seconds(3600)) async -> Int32? {
        let deadline = ContinuousClock.now + limit
        while self.isRunning && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(20))
        }
        return self.terminationStatus
    }

    /// SIGTERM, then SIGKILL after `limit`; the exit status, or nil when it had to be killed.
    public func stop(within limit: Duration = .seconds(20)) async -> Int32? {
        guard self.isRunning else { return self.terminationStatus }
        self.signal(SIGTERM)
        if let status = await self.wait(within: limit) { return status }
        self.signal(SIGKILL)
        _ = await self.wait(within: .seconds(10))
        return nil
    }
}

/// The processes the tests started, for `scripts/test.sh` to stop after a run that did not end
/// well, by id and never by name: each is appended to the file `SPARKOPS_TEST_PIDS` names, as its
/// id and its start time (field 22 of `/proc/<pid>/stat`), so that an id the system has since
/// given to another process is left alone.
enum StartedProcesses {
    static let path = ProcessInfo.processInfo.environment["SPARKOPS_TEST_PIDS"]
    static let lock = Mutex<Void>(())

    static func record(_ pid: pid_t) {
        guard let path, !path.isEmpty, let start = self.startTime(pid) else { return }
        self.lock.withLock { _ in
            guard let handle = FileHandle(forWritingAtPath: path) ?? {
                FileManager.default.createFile(atPath: path, contents: nil)
                return FileHandle(forWritingAtPath: path)
            }() else { return }
            defer { try? handle.close() }
            _ = try? handle.seekToEnd()
            try? handle.write(contentsOf: Data("\(pid) \(start)\n".utf8))
        }
    }

    /// Field 22 of `/proc/<pid>/stat`, after the command name in parentheses (which may hold blanks).
    static func startTime(_ pid: pid_t) -> String? {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        // After the name come the state (field 3) … the start time (field 22): index 19 here.
        return fields.count > 19 ? String(fields[19]) : nil
    }
}

/// Tells the starter whether the launch worked, once.
final class LaunchResult: Sendable {
    let state = Mutex<(done: Bool, failure: String?, waiter: CheckedContinuation<String?, Never>?)>((false, nil, nil))

    func finish(_ failure: String?) {
        let waiter = self.state.withLock { state -> CheckedContinuation<String?, Never>? in
            guard !state.done else { return nil }
            state.done = true
            state.failure = failure
            let waiter = state.waiter
            state.waiter = nil
            return waiter
        }
        waiter?.resume(returning: failure)
    }

    func wait() async -> String? {
        await withCheckedContinuation { continuation in
            let ready = self.state.withLock { state -> (Bool, String?) in
                if state.done { return (true, state.failure) }
                state.waiter = continuation
                return (false, nil)
            }
            if ready.0 { continuation.resume(returning: ready.1) }
        }
    }
}

public struct ChildProcessError: Error, CustomStringConvertible {
    public var description: String
}
