import Foundation
public import GRPCCore
import SQLKit
import SparkExpr
import SparkKit
public import SparkProto
import SwiftProtobuf

extension ToolService {
    public func putDocument(
        request: ServerRequest<Sparkops_Tool_V1_PutDocumentRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Tool_V1_Document> {
        let message = request.message
        let principal = try await self.access.require(request.metadata, projectID: message.projectID, permission: "tool.write")
        try Self.validateDocumentID(message.documentID)
        guard message.collection.utf8.count <= 100 else { throw SparkError.invalid("collection", "is longer than 100 bytes") }
        guard message.title.utf8.count <= 1000 else { throw SparkError.invalid("title", "is longer than 1000 bytes") }
        guard !message.text.isEmpty else { throw SparkError.invalid("text", "is required") }
        guard message.text.utf8.count <= 2 << 20 else { throw SparkError.invalid("text", "is longer than 2 MiB") }
        guard message.metadata.text.utf8.count <= 64 * 1024 else { throw SparkError.invalid("metadata", "is larger than 64 KiB") }
        let metadataValue = try message.metadata.value(field: "metadata", absent: .map([:]))
        guard case .map = metadataValue else { throw SparkError.invalid("metadata", "must be a JSON object") }
        let metadata = metadataValue.jsonText
        guard metadata.utf8.count <= 64 * 1024 else { throw SparkError.invalid("metadata", "is larger than 64 KiB") }
        let now = ToolStore.now()
        let (row, created) = try await self.store.store.transaction { db -> (DocumentRow, Bool) in
            let existing = try await self.store.document(projectID: message.projectID, id: message.documentID, on: db)
            let row = DocumentRow(
                projectID: message.projectID, id: message.documentID, collection: message.collection, title: message.title,
                body: message.text, metadata: metadata, createdAt: existing?.createdAt ?? now, updatedAt: now
            )
            return (row, try await self.store.put(row, on: db))
        }
        await self.audit(principal, projectID: message.projectID, action: created ? "document.create" : "document.update", target: message.documentID, metadata: request.metadata)
        var document = try Self.message(row)
        document.text = ""
        return ServerResponse(message: document)
    }

    public func getDocument(
        request: ServerRequest<Sparkops_Tool_V1_GetDocumentRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Tool_V1_Document> {
        try await self.access.require(request.metadata, projectID: request.message.projectID, permission: "tool.read")
        try Self.validateDocumentID(request.message.documentID)
        guard let row = try await self.store.store.sql({ try await self.store.document(projectID: request.message.projectID, id: request.message.documentID, on: $0) }) else {
            throw SparkError.notFound("document")
        }
        return ServerResponse(message: try Self.message(row))
    }

    public func listDocuments(
        request: ServerRequest<Sparkops_Tool_V1_ListDocumentsRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Tool_V1_ListDocumentsResponse> {
        let message = request.message
        try await self.access.require(request.metadata, projectID: message.projectID, permission: "tool.read")
        let (limit, after) = try Paging.parse(size: message.pageSize, token: message.pageToken)
        let rows = try await self.store.store.sql { try await self.store.documents(projectID: message.projectID, collection: message.collection, after: after, limit: limit, on: $0) }
        return ServerResponse(message: try .with {
            $0.documents = try rows.map(Self.message)
            $0.nextPageToken = Paging.token(lastID: rows.last?.id, count: rows.count, limit: limit)
        })
    }

    public func deleteDocument(
        request: ServerRequest<Sparkops_Tool_V1_DeleteDocumentRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Tool_V1_DeleteDocumentResponse> {
        let message = request.message
        let principal = try await self.access.require(request.metadata, projectID: message.projectID, permission: "tool.write")
        try Self.validateDocumentID(message.documentID)
        let deleted = try await self.store.store.transaction { try await self.store.deleteDocument(projectID: message.projectID, id: message.documentID, on: $0) }
        guard deleted else { throw SparkError.notFound("document") }
        await self.audit(principal, projectID: message.projectID, action: "document.delete", target: message.documentID, metadata: request.metadata)
        return ServerResponse(message: .init())
    }

    public func searchDocuments(
        request: ServerRequest<Sparkops_Tool_V1_SearchDocumentsRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Sparkops_Tool_V1_SearchDocumentsResponse> {
        let message = request.message
        try await self.access.require(request.metadata, projectID: message.projectID, permission: "tool.read")
        guard message.limit >= 0, message.limit <= 100 else { throw SparkError.invalid("limit", "must be from 1 to 100 (0: 10)") }
        let rows = try await self.search(projectID: message.projectID, query: message.query, collection: message.collection, limit: message.limit == 0 ? 10 : Int(message.limit))
        return ServerResponse(message: try .with {
            $0.hits = try rows.map { row in
                let metadata = Sparkops_Common_V1_Json.with { $0.text = row.metadata }
                return .with {
                    $0.documentID = row.id
                    $0.collection = row.collection
                    $0.title = row.title
                    $0.snippet = row.snippet
                    $0.score = row.score
                    $0.metadata = metadata
                }
            }
        })
    }

    /// The project's documents matching `query` (every word, and every "quoted phrase"), best
    /// first; INVALID_ARGUMENT on `query` when it holds no word.
    func search(projectID: String, query: String, collection: String, limit: Int) async throws -> [SearchRow] {
        let (words, phrases) = try Self.terms(query)
        return try await self.store.store.sql {
            try await self.store.search(projectID: projectID, words: words, phrases: phrases, collection: collection, limit: limit, on: $0)
        }
    }

    /// The words and phrases of a query: at most 1000 characters and 32 terms; punctuation is not
    /// syntax.
    static func terms(_ query: String) throws -> (words: [String], phrases: [String]) {
        guard query.count <= 1000 else { throw SparkError.invalid("query", "is longer than 1000 characters") }
        var words: [String] = []
        var phrases: [String] = []
        for (index, part) in query.split(separator: "\"", omittingEmptySubsequences: false).enumerated() {
            let tokens = part.split { !($0.isLetter || $0.isNumber) }.map { $0.lowercased() }
            if index % 2 == 1 {
                if !tokens.isEmpty { phrases.append(tokens.joined(separator: " ")) }
            } else {
                words += tokens
            }
        }
        guard !words.isEmpty || !phrases.isEmpty else { throw SparkError.invalid("query", "holds no word to search for") }
        guard words.count + phrases.count <= 32 else { throw SparkError.invalid("query", "holds more than 32 words and phrases") }
        return (words, phrases)
    }

    static func validateDocumentID(_ id: String) throws {
        guard !id.isEmpty else { throw SparkError.invalid("document_id", "is required") }
        guard id.utf8.count <= 200, id != "search", id.unicodeScalars.allSatisfy({ $0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0) || "_.-:@".unicodeScalars.contains($0)) }) else {
            throw SparkError.invalid("document_id", "must be 1–200 letters, digits, _ . - : @ (and not \"search\")")
        }
    }

    static func message(_ row: DocumentRow) throws -> Sparkops_Tool_V1_Document {
        let metadata = Sparkops_Common_V1_Json.with { $0.text = row.metadata }
        return .with {
            $0.id = row.id
            $0.projectID = row.projectID
            $0.collection = row.collection
            $0.title = row.title
            $0.text = row.body
            $0.metadata = metadata
            $0.createTime = .init(microseconds: row.createdAt)
            $0.updateTime = .init(microseconds: row.updatedAt)
        }
    }
}
