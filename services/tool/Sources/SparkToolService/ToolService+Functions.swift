import Foundation
public import GRPCCore
import SparkExpr
import SparkKit
public import SparkProto
import SparkWorkflow
import Synchronization
import SwiftProtobuf

extension ToolService {
    /// How long an mcp server's list of tools is kept before it is asked again.
    static let functionsLifetime: Duration = .seconds(300)

    /// What a model can call of a tool: the tool itself, or each of an mcp tool's server's tools
    /// (asked of the server through the same sandbox or outbound guard as a call, and kept for
    /// five minutes per tool version).
    public func listToolFunctions(
        request: ServerRequest<Sparkops_Tool_V1_ListToolFunctionsRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Tool_V1_ListToolFunctionsResponse> {
        let message = request.message
        try await self.access.require(request.metadata, projectID: message.projectID, permission: "tool.read")
        try Self.validateReference(message.tool)
        guard let row = try await self.store.store.sql({ try await self.store.tool(message.tool, projectID: message.projectID, on: $0) }) else {
            throw SparkError.notFound("tool")
        }
        let definition = try await self.definition(of: row)
        guard definition.kind == .mcp, let spec = definition.mcp else {
            return ServerResponse(message: try .with {
                $0.functions = [try Self.function(name: definition.name, description: definition.description, schema: definition.inputSchema)]
            })
        }
        let key = "\(row.projectID)/\(row.contentHash)"
        if let (fetched, functions) = self.mcpFunctions.withLock({ $0[key] }), ContinuousClock.now - fetched < Self.functionsLifetime {
            return ServerResponse(message: try .with { $0.functions = try functions.map { try Self.function(name: $0.name, description: $0.description, schema: $0.inputSchema) } })
        }
        let projectID = message.projectID
        let functions: [MCPRunner.Function]
        do {
            functions = try await self.runner.mcp.list(
                spec, timeout: .milliseconds(definition.timeout.milliseconds), maxBytes: definition.maxOutputBytes,
                secret: { name, host in try await self.openSecret(projectID: projectID, name: name, host: host) }
            )
        } catch {
            throw SparkError(.unavailable, "the tool's MCP server could not list its tools (\(error.reason)): \(error.message)")
        }
        self.mcpFunctions.withLock { cache in
            if cache.count > 1000 { cache.removeAll() }
            cache[key] = (ContinuousClock.now, functions)
        }
        return ServerResponse(message: try .with {
            $0.functions = try functions.map { try Self.function(name: $0.name, description: $0.description, schema: $0.inputSchema) }
            $0.fetched = true
        })
    }

    static func function(name: String, description: String, schema: ExprValue) throws -> Sparkops_Tool_V1_ToolFunction {
        var structure = Sparkops_Common_V1_Json()
        if case .map = schema { structure = Sparkops_Common_V1_Json(schema) }
        return .with {
            $0.name = name
            $0.description_p = description
            $0.inputSchema = structure
        }
    }
}
