import Foundation
import Subprocess
import SparkWorkflow
import Synchronization
#if canImport(System)
import System
#else
import SystemPackage
#endif

extension CodeSandbox {
    /// Lines to and from a sandboxed program that stays up while a conversation lasts (an MCP
    /// server over stdio).
    struct LineChannel: Sendable {
        /// Writes one line (a new line is added).
        let send: @Sendable ([UInt8]) async throws -> Void
        /// The lines the program writes on stdout, each without its new line.
        let lines: AsyncThrowingStream<[UInt8], any Error>
    }

    /// Starts `program` (inline code, or a command of the host) in the sandbox, with the same
    /// limits as a python or node tool, and runs `body` while it is up; the program is killed
    /// when `body` returns, throws, or runs past the timeout. A line longer than `limits.maxStdout`
    /// ends the session with `output_limit`.
    func session<T: Sendable>(_ server: ToolDefinition.MCP.Server, limits: Limits, _ body: @escaping @Sendable (LineChannel) async throws -> T) async throws(Failure) -> T {
        if case .command(let command, _) = server, !(command.first.map { FileManager.default.isExecutableFile(atPath: $0) } ?? false) {
            throw Failure(reason: "sandbox", message: "\(command.first ?? "") is not a program of this host", logs: "")
        }
        if case .url = server {
            throw Failure(reason: "sandbox", message: "a url server is not run here", logs: "")
        }
        return try await self.slots.run { (slot) async throws(Failure) -> T in
            var directory: String?
            let tail: [String]
            var binding: (host: String, inside: String)?
            let owner = self.dropTo.map { uid_t($0.firstUID + slot) }
            defer {
                if let owner { ProcessSweep.kill(uid: owner) }
                if let directory { try? FileManager.default.removeItem(atPath: directory) }
            }
            switch server {
            case .code(let kind, let code):
                // The call's own folder, 0700 and the slot's user's alone, as for a python tool.
                let created: String
                do { created = try Self.makeDirectory(owner: owner) } catch {
                    throw Failure(reason: "sandbox", message: "cannot prepare the program's directory: \(error)", logs: "")
                }
                directory = created
                let fileName = kind == .python ? "server.py" : "server.js"
                let hostFile = "\(created)/\(fileName)"
                guard FileManager.default.createFile(atPath: hostFile, contents: Data(code.source.utf8), attributes: [.posixPermissions: 0o400]),
                    owner.map({ chown(hostFile, $0, $0) == 0 }) ?? true
                else {
                    throw Failure(reason: "sandbox", message: "cannot write the program", logs: "")
                }
                let inside = self.isolation == .bubblewrap ? "/tmp/\(fileName)" : hostFile
                binding = self.isolation == .bubblewrap ? (hostFile, inside) : nil
                tail = self.interpreter(kind: kind, programPath: inside, limits: limits)
            case .command(let command, _):
                tail = command
            case .url:
                throw Failure(reason: "sandbox", message: "a url server is not run here", logs: "")
            }
            let arguments = self.command(tail, binding: binding, slot: slot, limits: limits)
            let result: Swift.Result<T, Failure>
            do throws(Failure) {
                result = .success(try await self.converse(arguments, limits: limits, body))
            } catch {
                result = .failure(error)
            }
            if self.isolation == .bubblewrap {
                await OrphanReaper.reap(uid: self.dropTo.map { $0.firstUID + slot })
            }
            return try result.get()
        }
    }

    private func converse<T: Sendable>(_ arguments: [String], limits: Limits, _ body: @escaping @Sendable (LineChannel) async throws -> T) async throws(Failure) -> T {
        let state = RunState()
        let outcome = Mutex<Swift.Result<T, any Error>?>(nil)
        do {
            _ = try await Subprocess.run(Self.configuration(arguments), input: .inputWriter, output: .sequence, error: .sequence) { execution in
                let (lines, continuation) = AsyncThrowingStream<[UInt8], any Error>.makeStream()
                await withTaskGroup(of: Void.self) { group in
                    group.addTask {
                        var pending: [UInt8] = []
                        do {
                            for try await buffer in execution.standardOutput {
                                pending += buffer.withUnsafeBytes { Array($0) }
                                while let end = pending.firstIndex(of: 10) {
                                    continuation.yield(Array(pending[..<end]))
                                    pending.removeSubrange(...end)
                                }
                                if pending.count > limits.maxStdout {
                                    if state.kill(Failure(reason: "output_limit", message: "the server wrote a message longer than \(limits.maxStdout) bytes", logs: "")) {
                                        try? execution.send(signal: .kill, toProcessGroup: true)
                                    }
                                    break
                                }
                            }
                        } catch {}
                        continuation.finish()
                    }
                    group.addTask {
                        do {
                            for try await buffer in execution.standardError {
                                let bytes = buffer.withUnsafeBytes { Array($0) }
                                state.stderr.withLock { collected in
                                    if collected.count < limits.maxStderr { collected += bytes.prefix(limits.maxStderr - collected.count) }
                                }
                            }
                        } catch {}
                    }
                    let timer = Task {
                        try? await Task.sleep(for: limits.timeout)
                        guard !Task.isCancelled else { return }
                        if state.kill(Failure(reason: "timeout", message: "the server did not answer within \(limits.timeout)", logs: "")) {
                            try? execution.send(signal: .kill, toProcessGroup: true)
                        }
                    }
                    let channel = LineChannel(
                        send: { bytes in _ = try await execution.standardInputWriter.write(bytes + [10]) },
                        lines: lines
                    )
                    do {
                        let value = try await body(channel)
                        outcome.withLock { $0 = .success(value) }
                    } catch {
                        outcome.withLock { $0 = .failure(error) }
                    }
                    timer.cancel()
                    try? await execution.standardInputWriter.finish()
                    try? execution.send(signal: .kill, toProcessGroup: true)
                    await group.waitForAll()
                }
            }
        } catch {
            throw Failure(reason: "sandbox", message: "the server could not start: \(error)", logs: "")
        }
        let logs = String(decoding: state.stderr.withLock { $0 }, as: UTF8.self)
        if var failure = state.killedFor.withLock({ $0 }) {
            failure.logs = logs
            throw failure
        }
        switch outcome.withLock({ $0 }) {
        case .success(let value): return value
        case .failure(let error as Failure):
            var failure = error
            failure.logs = logs
            throw failure
        case .failure(let error):
            throw Failure(reason: "mcp_error", message: "\(error)", logs: logs)
        case nil:
            throw Failure(reason: "mcp_error", message: "the server ended the conversation", logs: logs)
        }
    }
}
