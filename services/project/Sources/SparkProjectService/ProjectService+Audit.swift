import Foundation
public import GRPCCore
import SQLKit
import SparkKit
public import SparkProto
import SwiftProtobuf

/// The append-only audit log.
extension ProjectService {
    public func listAuditEvents(
        request: ServerRequest<Sparkops_Project_V1_ListAuditEventsRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Project_V1_ListAuditEventsResponse> {
        let principal = try Sparkops_Common_V1_Principal.required(request.metadata)
        let message = request.message
        try Validate.id(message.projectID, prefix: "prj", field: "project_id")
        let (limit, before) = try Validate.page(size: message.pageSize, token: message.pageToken)
        let events = try await self.store.store.sql { db in
            _ = try await self.requireRole(principal, projectID: message.projectID, permission: "audit.read", on: db)
            return try await self.store.auditEvents(projectID: message.projectID, action: message.action, before: before, limit: limit, on: db)
        }
        return ServerResponse(message: .with {
            $0.events = events
            $0.nextPageToken = Validate.pageToken(lastID: events.last?.id, count: events.count, limit: limit)
        })
    }

    public func recordAuditEvent(
        request: ServerRequest<Sparkops_Project_V1_RecordAuditEventRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Project_V1_RecordAuditEventResponse> {
        let event = request.message.event
        guard !event.action.isEmpty else { throw SparkError.invalid("event.action", "is required") }
        guard ["success", "denied", "failed"].contains(event.outcome) else {
            throw SparkError.invalid("event.outcome", "must be success, denied or failed")
        }
        try await self.store.store.sql { try await self.store.appendAudit(event, on: $0) }
        return ServerResponse(message: .init())
    }
}
