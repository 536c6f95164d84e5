import GRPCCore
import SparkKit
import SparkProto
import SparkWire
import SwiftProtobuf

/// The names of a project's tools, asked of the tool service on behalf of the caller, for
/// checking the tools a workflow's steps name when it is written.
struct ToolDirectory: Sendable {
    let client: Sparkops_Tool_V1_ToolService.Client<SparkWireClientTransport>

    init(client: GRPCClient<SparkWireClientTransport>) {
        self.client = .init(wrapping: client)
    }

    func names(projectID: String, principal: Sparkops_Common_V1_Principal) async throws -> Set<String> {
        var names: Set<String> = []
        var token = ""
        repeat {
            let page = try await self.client.listTools(.with {
                $0.projectID = projectID
                $0.pageSize = 500
                $0.pageToken = token
            }, metadata: principal.metadata)
            names.formUnion(page.tools.map(\.name))
            token = page.nextPageToken
        } while !token.isEmpty
        return names
    }
}
