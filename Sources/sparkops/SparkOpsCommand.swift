import ArgumentParser
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The `sparkops` command line.
@main
struct SparkOpsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sparkops",
        abstract: "SparkOps: a control plane for AI-agent workflows.",
        subcommands: [
            DevCommand.self, ServeCommand.self, MigrateCommand.self, CertsCommand.self, WireCommand.self,
            LoginCommand.self, LogoutCommand.self, UserCommand.self, ProjectCommand.self, MemberCommand.self, APIKeyCommand.self,
            ApplyCommand.self, WorkflowCommand.self, ToolCommand.self, AgentCommand.self, SecretCommand.self,
            PolicyCommand.self, ViolationCommand.self, BudgetCommand.self, RunCommand.self, ApprovalCommand.self,
        ]
    )

    /// As ArgumentParser's own, with standard output flushed line by line whatever it is: a
    /// pipe or a file gets each line of `run watch` or a server's announcement as it is printed.
    static func main() async {
        LineBufferedOutput.enable()
        do {
            var command = try Self.parseAsRoot()
            if var asynchronous = command as? any AsyncParsableCommand {
                try await asynchronous.run()
            } else {
                try command.run()
            }
        } catch {
            Self.exit(withError: error)
        }
    }
}

/// Standard output, line buffered. C's `stdout` is a global Swift 6 will not touch from
/// concurrent code, so its address is looked up once, here, before anything runs.
enum LineBufferedOutput {
    static func enable() {
        guard let symbol = dlsym(dlopen(nil, RTLD_NOW), "stdout") else { return }
        let stream = symbol.assumingMemoryBound(to: UnsafeMutablePointer<FILE>?.self).pointee
        setvbuf(stream, nil, _IOLBF, 0)
    }
}
