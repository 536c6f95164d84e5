import Foundation
import Logging
import SparkKit
import SparkWorkflow
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

/// Runs python and node tool programs as subprocesses: the input as JSON on stdin, the output as
/// JSON on stdout.
///
/// Each run gets, through util-linux's `prlimit`, limits on CPU time, data memory, processes and
/// file size; a wall-clock timeout; and caps on stdout and stderr. When the service runs as root,
/// `setpriv` first drops the program to an unprivileged uid of its own (`tool.sandboxFirstUID` +
/// the program's slot), which is also what makes the process limit count, and count only that
/// program's processes. When bubblewrap is installed (or
/// `tool.sandbox=bubblewrap`), the program runs under it: no network and no other namespace
/// shared (`--unshare-all`), its own user (`--unshare-user --uid 65534`), killed with the service
/// (`--die-with-parent`), no terminal (`--new-session`), the system directories read-only and
/// nothing else of the host (not SparkOps's home, data or keys), and a private writable /tmp.
struct CodeSandbox: Sendable {
    enum Isolation: String, Sendable {
        case bubblewrap
        case none
    }

    var isolation: Isolation
    var bubblewrapPath: String
    var pythonPath: String
    var nodePath: String
    var prlimitPath: String
    /// setpriv and the first uid to run as, when the service is root: a program in slot n runs as
    /// `firstUID + n`, so that its process limit counts its own processes only.
    var dropTo: (setpriv: String, firstUID: Int)?
    /// Host directories the sandbox sees read-only.
    var readOnlyPaths: [String]
    /// Bounds how many programs run at once, and numbers them.
    let slots: SlotPool

    struct Limits: Sendable {
        var memoryMB: Int
        var cpuSeconds: Int
        var processes: Int
        var fileMB: Int
        var timeout: Duration
        var maxStdout: Int
        var maxStderr: Int = 64 * 1024
    }

    struct Output: Sendable {
        var stdout: [UInt8]
        var logs: String
    }

    struct Failure: Error, Sendable {
        var reason: String
        var message: String
        var logs: String
    }

    static func find(_ candidates: [String]) -> String? {
        candidates.first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    /// From `tool.sandbox` (auto, bubblewrap or none), `tool.pythonPath`, `tool.nodePath`,
    /// `tool.sandboxFirstUID` and `tool.maxConcurrentPrograms`.
    static func detect(sandbox: String, pythonPath: String?, nodePath: String?, firstUID: Int, maxConcurrent: Int, logger: Logger) throws -> CodeSandbox {
        let bwrap = Self.find(["/usr/bin/bwrap", "/usr/local/bin/bwrap"])
        let isolation: Isolation
        switch sandbox {
        case "auto": isolation = bwrap == nil ? .none : .bubblewrap
        case "bubblewrap":
            guard bwrap != nil else { throw SparkConfigurationError("tool.sandbox is bubblewrap, but bwrap is not installed (Debian: apt-get install bubblewrap)") }
            isolation = .bubblewrap
        case "none": isolation = .none
        default: throw SparkConfigurationError("tool.sandbox must be auto, bubblewrap or none, not \(sandbox.debugDescription)")
        }
        if isolation == .bubblewrap && !OrphanReaper.adopted {
            logger.warning("cannot become the subreaper of the sandboxes' processes: under an init that does not reap, their zombies will pile up")
        }
        if isolation == .none {
            logger.warning("python and node tools run without bubblewrap: no network isolation and the host's files are visible (install bubblewrap, or set tool.sandbox)")
        }
        let python = pythonPath ?? Self.find(["/usr/bin/python3", "/usr/local/bin/python3"]) ?? "/usr/bin/python3"
        let node = nodePath ?? Self.find(["/usr/bin/node", "/usr/local/bin/node", "/usr/bin/nodejs"]) ?? "/usr/bin/node"
        let setpriv = Self.find(["/usr/bin/setpriv", "/bin/setpriv"])
        var readOnly = ["/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/etc"]
        for interpreter in [python, node] {
            let directory = URL(filePath: interpreter).resolvingSymlinksInPath().deletingLastPathComponent().deletingLastPathComponent().path
            if !readOnly.contains(where: { directory.hasPrefix($0 + "/") || directory == $0 }) { readOnly.append(directory) }
        }
        return CodeSandbox(
            isolation: isolation,
            bubblewrapPath: bwrap ?? "bwrap",
            pythonPath: python,
            nodePath: node,
            prlimitPath: Self.find(["/usr/bin/prlimit", "/bin/prlimit"]) ?? "prlimit",
            dropTo: getuid() == 0 ? setpriv.map { ($0, firstUID) } : nil,
            readOnlyPaths: readOnly,
            slots: SlotPool(maxConcurrent)
        )
    }

    // MARK: Running

    /// Runs `code` with `input` on stdin; the bytes it printed, or why it failed.
    func run(kind: ToolDefinition.Kind, code: ToolDefinition.Code, input: [UInt8], limits: Limits) async throws(Failure) -> Output {
        let fileName = kind == .python ? "main.py" : "main.js"
        return try await self.slots.run { (slot) async throws(Failure) -> Output in
            // A folder of the call's own, readable by the program's user alone (each slot has a
            // user of its own when the service runs as root), removed after the call.
            let uid = self.dropTo.map { uid_t($0.firstUID + slot) }
            let directory: String
            do {
                directory = try Self.makeDirectory(owner: uid)
            } catch {
                throw Failure(reason: "sandbox", message: "cannot prepare the program's directory: \(error)", logs: "")
            }
            defer { try? FileManager.default.removeItem(atPath: directory) }
            let hostFile = "\(directory)/\(fileName)"
            guard FileManager.default.createFile(atPath: hostFile, contents: Data(Self.program(kind: kind, code: code).utf8), attributes: [.posixPermissions: 0o400]),
                uid.map({ chown(hostFile, $0, $0) == 0 }) ?? true
            else {
                throw Failure(reason: "sandbox", message: "cannot write the program", logs: "")
            }
            let programPath = self.isolation == .bubblewrap ? "/tmp/\(fileName)" : hostFile
            let arguments = self.command(kind: kind, programPath: programPath, hostFile: hostFile, slot: slot, limits: limits)
            let result: Swift.Result<Output, Failure>
            do throws(Failure) {
                result = .success(try await self.execute(arguments, input: input, limits: limits, kind: kind, sweepUID: uid))
            } catch {
                result = .failure(error)
            }
            // Whatever the program left running (a child in a session of its own, a daemon) ended
            // with the call (`execute` sweeps the slot's user and the program's session); what
            // bubblewrap left to the machine's init is reaped here.
            await OrphanReaper.reap(uid: uid.map { Int($0) })
            return try result.get()
        }
    }

    /// The program as run: the code itself, or, when it declares packages, a prologue that checks
    /// each is installed first (nothing is ever installed).
    static func program(kind: ToolDefinition.Kind, code: ToolDefinition.Code) -> String {
        guard !code.packages.isEmpty else { return code.source }
        let names = code.packages.map { "\"\($0)\"" }.joined(separator: ", ")
        switch kind {
        case .python:
            return """
                import importlib.metadata as _sparkops_md, sys as _sparkops_sys
                _sparkops_missing = []
                for _sparkops_name in [\(names)]:
                    try:
                        _sparkops_md.distribution(_sparkops_name)
                    except _sparkops_md.PackageNotFoundError:
                        _sparkops_missing.append(_sparkops_name)
                if _sparkops_missing:
                    _sparkops_sys.stderr.write("sparkops: packages not installed on the host: " + ", ".join(_sparkops_missing) + "\\n")
                    _sparkops_sys.exit(97)
                del _sparkops_md, _sparkops_sys, _sparkops_missing

                """ + code.source
        default:
            return """
                { const missing = [\(names)].filter((name) => { try { require.resolve(name); return false } catch { return true } });
                  if (missing.length) { process.stderr.write("sparkops: packages not installed on the host: " + missing.join(", ") + "\\n"); process.exit(97) } }

                """ + code.source
        }
    }

    /// A new folder, 0700, owned by `owner` (the program's user) when given: no other user, and
    /// so no other tenant's program, can list it or read what is in it.
    static func makeDirectory(owner: uid_t?) throws -> String {
        let base = FileManager.default.temporaryDirectory.path
        let path = "\(base)/sparkops-tool-\(UUID().uuidString.lowercased())"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
        if let owner, chown(path, owner, owner) != 0 {
            try? FileManager.default.removeItem(atPath: path)
            throw SparkConfigurationError("cannot give \(path) to uid \(owner): errno \(errno)")
        }
        return path
    }

    func command(kind: ToolDefinition.Kind, programPath: String, hostFile: String, slot: Int, limits: Limits) -> [String] {
        self.command(self.interpreter(kind: kind, programPath: programPath, limits: limits), binding: (hostFile, programPath), slot: slot, limits: limits)
    }

    /// How python or node runs a program file.
    func interpreter(kind: ToolDefinition.Kind, programPath: String, limits: Limits) -> [String] {
        switch kind {
        case .python:
            return [self.pythonPath, "-I", "-B", programPath]
        default:
            // V8 reserves address space it never touches; its heap is held under the data limit.
            return [self.nodePath, "--max-old-space-size=\(max(8, limits.memoryMB * 3 / 4))", programPath]
        }
    }

    /// `program` under setpriv, prlimit and bubblewrap; `binding` is a host file the sandbox
    /// sees (read-only) at a path of its own.
    func command(_ program: [String], binding: (host: String, inside: String)?, slot: Int, limits: Limits) -> [String] {
        var arguments: [String] = []
        if let drop = self.dropTo {
            let uid = drop.firstUID + slot
            arguments += [drop.setpriv, "--reuid=\(uid)", "--regid=\(uid)", "--clear-groups", "--"]
        }
        let dataBytes = limits.memoryMB << 20
        arguments += [
            self.prlimitPath,
            "--cpu=\(limits.cpuSeconds):\(limits.cpuSeconds + 1)",
            "--data=\(dataBytes)",
            "--nproc=\(limits.processes)",
            "--fsize=\(limits.fileMB << 20)",
            "--core=0",
            "--",
        ]
        if self.isolation == .bubblewrap {
            arguments += [
                self.bubblewrapPath,
                "--unshare-all", "--unshare-user", "--uid", "65534", "--gid", "65534",
                // No user namespaces inside: a way around the sandbox's own, refused.
                "--disable-userns",
                "--die-with-parent", "--new-session",
            ]
            for path in self.readOnlyPaths where FileManager.default.fileExists(atPath: path) {
                arguments += ["--ro-bind", path, path]
            }
            arguments += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
            if let binding { arguments += ["--ro-bind", binding.host, binding.inside] }
            arguments += ["--chdir", "/tmp"]
        }
        return arguments + program
    }

    /// What happened to a run, besides its exit status.
    final class RunState: Sendable {
        let killedFor = Mutex<Failure?>(nil)
        let stdout = Mutex<[UInt8]>([])
        let stderr = Mutex<[UInt8]>([])
        let stderrTotal = Mutex<Int>(0)

        func kill(_ failure: Failure) -> Bool {
            self.killedFor.withLock { current in
                guard current == nil else { return false }
                current = failure
                return true
            }
        }
    }

    /// A sandboxed program's process: its own session (its group is what a kill reaches), a
    /// small environment, and SIGKILL when it is torn down.
    static func configuration(_ arguments: [String]) -> Configuration {
        var options = PlatformOptions()
        options.createSession = true
        options.teardownSequence = [.send(signal: .kill, allowedDurationToNextStep: .milliseconds(100))]
        let environment: [Environment.Key: String] = [
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": "/tmp",
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            "NODE_PATH": "/usr/local/lib/node_modules:/usr/lib/node_modules",
        ]
        return Configuration(
            executable: .path(FilePath(arguments[0])),
            arguments: Arguments(Array(arguments.dropFirst())),
            environment: .custom(environment),
            workingDirectory: nil,
            platformOptions: options
        )
    }

    /// `sweepUID`: the slot's own user, whose every process is the program's; without one, the
    /// program's session is what is swept when it ends or is killed.
    func execute(_ arguments: [String], input: [UInt8], limits: Limits, kind: ToolDefinition.Kind, sweepUID: uid_t? = nil) async throws(Failure) -> Output {
        let configuration = Self.configuration(arguments)
        let state = RunState()
        let start = ContinuousClock.now
        let status: TerminationStatus
        let leader = Mutex<pid_t?>(nil)
        /// Every process the program started, wherever it moved (another group, a session of its own).
        let sweep: @Sendable () -> Void = {
            if let sweepUID { ProcessSweep.kill(uid: sweepUID) }
            if let session = leader.withLock({ $0 }) { ProcessSweep.kill(session: session) }
        }
        defer { sweep() }
        do {
            let result = try await Subprocess.run(configuration, input: .inputWriter, output: .sequence, error: .sequence) { execution in
                leader.withLock { $0 = execution.processIdentifier.value }
                await withTaskGroup(of: Void.self) { group in
                    group.addTask {
                        _ = try? await execution.standardInputWriter.write(input)
                        try? await execution.standardInputWriter.finish()
                    }
                    group.addTask {
                        do {
                            for try await buffer in execution.standardOutput {
                                let bytes = buffer.withUnsafeBytes { Array($0) }
                                let over = state.stdout.withLock { collected -> Bool in
                                    guard collected.count + bytes.count <= limits.maxStdout else { return true }
                                    collected += bytes
                                    return false
                                }
                                if over {
                                    if state.kill(Failure(reason: "output_limit", message: "the program wrote more than \(limits.maxStdout) bytes to stdout", logs: "")) {
                                        try? execution.send(signal: .kill, toProcessGroup: true)
                                    }
                                    break
                                }
                            }
                        } catch {}
                    }
                    group.addTask {
                        do {
                            for try await buffer in execution.standardError {
                                let bytes = buffer.withUnsafeBytes { Array($0) }
                                let total = state.stderrTotal.withLock { total in
                                    total += bytes.count
                                    return total
                                }
                                state.stderr.withLock { collected in
                                    if collected.count < limits.maxStderr { collected += bytes.prefix(limits.maxStderr - collected.count) }
                                }
                                if total > 1024 * limits.maxStderr {
                                    if state.kill(Failure(reason: "output_limit", message: "the program wrote more than \(1024 * limits.maxStderr) bytes to stderr", logs: "")) {
                                        try? execution.send(signal: .kill, toProcessGroup: true)
                                    }
                                    break
                                }
                            }
                        } catch {}
                    }
                    // The wall clock: the only task that does not end by itself.
                    let timer = Task {
                        try? await Task.sleep(for: limits.timeout)
                        guard !Task.isCancelled else { return }
                        if state.kill(Failure(reason: "timeout", message: "the program ran longer than its timeout of \(limits.timeout)", logs: "")) {
                            try? execution.send(signal: .kill, toProcessGroup: true)
                            // A child outside the group may still hold the output open.
                            sweep()
                        }
                    }
                    await group.waitForAll()
                    timer.cancel()
                }
            }
            status = result.terminationStatus
        } catch {
            throw Failure(reason: "sandbox", message: "the program could not start: \(error)", logs: "")
        }
        let logs = String(decoding: state.stderr.withLock { $0 }, as: UTF8.self)
        if var failure = state.killedFor.withLock({ $0 }) {
            failure.logs = logs
            throw failure
        }
        let elapsed = ContinuousClock.now - start
        // bubblewrap reports a program killed by a signal as exit status 128 + the signal.
        var exitCode: Int32 = 0
        var signal: Int32?
        switch status {
        case .exited(let code) where self.isolation == .bubblewrap && code > 128 && code < 128 + 65: signal = code - 128
        case .exited(let code): exitCode = code
        case .signaled(let number): signal = number
        #if os(Windows)
        default: exitCode = 1
        #endif
        }
        guard let signal else {
            guard exitCode == 0 else { throw Self.classify(exitCode: Int(exitCode), logs: logs, limits: limits, kind: kind) }
            return Output(stdout: state.stdout.withLock { $0 }, logs: logs)
        }
        switch signal {
        case SIGXCPU:
            throw Failure(reason: "cpu_limit", message: "the program used more than its \(limits.cpuSeconds) s of CPU time", logs: logs)
        case SIGXFSZ:
            throw Failure(reason: "file_limit", message: "the program wrote a file larger than its \(limits.fileMB) MiB limit", logs: logs)
        case SIGKILL where elapsed >= .seconds(limits.cpuSeconds):
            throw Failure(reason: "cpu_limit", message: "the program was killed after using its \(limits.cpuSeconds) s of CPU time", logs: logs)
        case SIGSEGV, SIGABRT, SIGKILL, SIGTRAP, SIGBUS:
            throw Failure(reason: "memory_limit", message: "the program was killed by signal \(signal), most likely out of its \(limits.memoryMB) MiB of memory", logs: logs)
        default:
            throw Failure(reason: "exit_status", message: "the program was killed by signal \(signal)", logs: logs)
        }
    }

    /// A failure's reason from what the program said on its way out.
    static func classify(exitCode: Int, logs: String, limits: Limits, kind: ToolDefinition.Kind) -> Failure {
        let last = logs.split(separator: "\n").last.map(String.init) ?? ""
        func contains(_ needles: String...) -> Bool { needles.contains { logs.contains($0) } }
        if exitCode == 97, logs.contains("sparkops: packages not installed") {
            return Failure(reason: "package_missing", message: last.replacingOccurrences(of: "sparkops: ", with: ""), logs: logs)
        }
        if contains("MemoryError", "heap out of memory", "Allocation failed", "Cannot allocate memory", "std::bad_alloc", "ENOMEM") {
            return Failure(reason: "memory_limit", message: "the program ran out of its \(limits.memoryMB) MiB of memory", logs: logs)
        }
        if contains("Resource temporarily unavailable", "EAGAIN", "BlockingIOError") && contains("fork", "spawn", "Thread", "thread", "BlockingIOError", "EAGAIN", "Creating new namespace failed") {
            return Failure(reason: "process_limit", message: "the program hit its limit of \(limits.processes) processes", logs: logs)
        }
        if contains("File too large", "EFBIG") {
            return Failure(reason: "file_limit", message: "the program wrote a file larger than its \(limits.fileMB) MiB limit", logs: logs)
        }
        if contains("Network is unreachable", "ENETUNREACH", "Temporary failure in name resolution", "EAI_AGAIN", "Name or service not known") {
            return Failure(reason: "network", message: "the program tried the network, which tools of kind \(kind.rawValue) do not have", logs: logs)
        }
        return Failure(reason: "exit_status", message: "the program exited with status \(exitCode)\(last.isEmpty ? "" : ": \(last.prefix(500))")", logs: logs)
    }
}

/// At most `count` operations at once, each holding a slot number from 0 to count - 1 while it
/// runs; the others wait their turn in order.
final class SlotPool: Sendable {
    let state: Mutex<(free: [Int], waiting: [CheckedContinuation<Int, Never>])>

    init(_ count: Int) {
        self.state = Mutex((Array((0 ..< max(1, count)).reversed()), []))
    }

    func run<T: Sendable, E: Error>(_ body: (Int) async throws(E) -> T) async throws(E) -> T {
        let slot = await withCheckedContinuation { (continuation: CheckedContinuation<Int, Never>) in
            let free = self.state.withLock { state -> Int? in
                if let slot = state.free.popLast() { return slot }
                state.waiting.append(continuation)
                return nil
            }
            if let free { continuation.resume(returning: free) }
        }
        defer {
            let next = self.state.withLock { state -> CheckedContinuation<Int, Never>? in
                if state.waiting.isEmpty {
                    state.free.append(slot)
                    return nil
                }
                return state.waiting.removeFirst()
            }
            next?.resume(returning: slot)
        }
        return try await body(slot)
    }
}
