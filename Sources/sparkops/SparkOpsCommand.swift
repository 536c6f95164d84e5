import ArgumentParser

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
}
