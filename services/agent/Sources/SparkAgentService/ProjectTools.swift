import GRPCCore
import SparkKit
import SparkProto
import SparkWire
import SwiftProtobuf

/// The tool service, as the agent service uses it on behalf of the caller: the project's tools,
/// invoking them, and the API keys of model providers (secrets only this service may read).
struct ProjectTools: Sendable {
    let client: Sparkops_Tool_V1_ToolService.SparkWireClient

    init(client: SparkWireChannel) {
        self.client = .init(wrapping: client)
    }

    func list(projectID: String, principal: Sparkops_Common_V1_Principal) async throws -> [Sparkops_Tool_V1_Tool] {
        var tools: [Sparkops_Tool_V1_Tool] = []
        var token = ""
        repeat {
            let page = try await self.client.listTools(.with {
                $0.projectID = projectID
                $0.pageSize = 500
                $0.pageToken = token
            }, metadata: principal.metadata)
            tools += page.tools
            token = page.nextPageToken
        } while !token.isEmpty
        return tools
    }

    /// An mcp tool's server's tools.
    func functions(of tool: String, projectID: String, principal: Sparkops_Common_V1_Principal) async throws -> [Sparkops_Tool_V1_ToolFunction] {
        var options = CallOptions.defaults
        options.timeout = .seconds(120)
        return try await self.client.listToolFunctions(.with {
            $0.projectID = projectID
            $0.tool = tool
        }, metadata: principal.metadata, options: options).functions
    }

    func invoke(_ request: Sparkops_Tool_V1_InvokeToolRequest, principal: Sparkops_Common_V1_Principal, timeout: Duration) async throws -> Sparkops_Tool_V1_InvokeToolResponse {
        var options = CallOptions.defaults
        options.timeout = timeout + .seconds(5)
        return try await self.client.invokeTool(request, metadata: principal.metadata, options: options)
    }

    /// The secret's value, for sending to `host`; nil when the project has no such secret.
    /// PERMISSION_DENIED when the secret may not be sent there.
    func secret(_ name: String, host: String, projectID: String, principal: Sparkops_Common_V1_Principal) async throws -> String? {
        do {
            return try await self.client.revealSecret(.with {
                $0.projectID = projectID
                $0.name = name
                $0.host = host
            }, metadata: principal.metadata).value
        } catch let error as RPCError where error.code == .notFound {
            return nil
        }
    }
}
