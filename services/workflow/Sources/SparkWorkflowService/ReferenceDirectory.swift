import GRPCCore
import SparkKit
import SparkProto
import SparkWire
import SwiftProtobuf

/// The names of a project's tools and agents, asked of the tool and agent services on behalf of
/// the caller, for checking the tools and agents a workflow's steps name when it is written.
struct ReferenceDirectory: Sendable {
    let tools: Sparkops_Tool_V1_ToolService.SparkWireClient
    let agents: Sparkops_Agent_V1_AgentService.SparkWireClient

    init(tools: SparkWireChannel, agents: SparkWireChannel) {
        self.tools = .init(wrapping: tools)
        self.agents = .init(wrapping: agents)
    }

    func toolNames(projectID: String, principal: Sparkops_Common_V1_Principal) async throws -> Set<String> {
        try await Self.collect { token in
            let page = try await self.tools.listTools(.with {
                $0.projectID = projectID
                $0.pageSize = 500
                $0.pageToken = token
            }, metadata: principal.metadata)
            return (page.tools.map(\.name), page.nextPageToken)
        }
    }

    func agentNames(projectID: String, principal: Sparkops_Common_V1_Principal) async throws -> Set<String> {
        try await Self.collect { token in
            let page = try await self.agents.listAgents(.with {
                $0.projectID = projectID
                $0.pageSize = 500
                $0.pageToken = token
            }, metadata: principal.metadata)
            return (page.agents.map(\.name), page.nextPageToken)
        }
    }

    /// Every page's names.
    static func collect(_ page: (String) async throws -> ([String], String)) async throws -> Set<String> {
        var names: Set<String> = []
        var token = ""
        repeat {
            let (found, next) = try await page(token)
            names.formUnion(found)
            token = next
        } while !token.isEmpty
        return names
    }
}
