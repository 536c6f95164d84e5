import ArgumentParser

/// The `sparkops` command line.
@main
struct SparkOpsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sparkops",
        abstract: "SparkOps: a control plane for AI-agent workflows.",
        subcommands: [CertsCommand.self, WireCommand.self]
    )
}
