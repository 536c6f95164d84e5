import Foundation
import SQLKit
import SparkKit

struct DocumentRow: Sendable {
    var projectID: String
    var id: String
    var collection: String
    var title: String
    var body: String
    /// JSON object text.
    var metadata: String
    var createdAt: Int64
    var updatedAt: Int64
}

struct SearchRow: Sendable {
    var id: String
    var collection: String
    var title: String
    var snippet: String
    var score: Double
    var metadata: String
}

extension ToolMigrations {
    /// The documents search tools find: full text in SQLite FTS5 (unicode61, BM25) or in a
    /// PostgreSQL tsvector (`simple`, the title weighted A and the text B, GIN-indexed).
    static let documents = SparkMigration("0002_documents") { dialect in
        let table = """
            CREATE TABLE documents (
                project_id TEXT NOT NULL,
                id TEXT NOT NULL,
                collection TEXT NOT NULL DEFAULT '',
                title TEXT NOT NULL DEFAULT '',
                body TEXT NOT NULL,
                metadata TEXT NOT NULL DEFAULT '{}',
                created_at BIGINT NOT NULL,
                updated_at BIGINT NOT NULL,
                PRIMARY KEY (project_id, id)
            )
            """
        switch dialect {
        case .sqlite:
            return [
                table,
                "CREATE VIRTUAL TABLE documents_fts USING fts5(project_id UNINDEXED, id UNINDEXED, collection UNINDEXED, title, body, tokenize = 'unicode61 remove_diacritics 2')",
            ]
        case .postgres:
            return [
                table,
                "ALTER TABLE documents ADD COLUMN search tsvector GENERATED ALWAYS AS (setweight(to_tsvector('simple', title), 'A') || setweight(to_tsvector('simple', body), 'B')) STORED",
                "CREATE INDEX documents_search ON documents USING GIN (search)",
            ]
        }
    }
}

extension ToolStore {
    /// Writes the document and its index entry; true when it is new.
    func put(_ document: DocumentRow, on db: any SQLDatabase) async throws -> Bool {
        let existing = try await self.document(projectID: document.projectID, id: document.id, on: db)
        if existing == nil {
            try await db.raw("""
                INSERT INTO documents (project_id, id, collection, title, body, metadata, created_at, updated_at)
                VALUES (\(bind: document.projectID), \(bind: document.id), \(bind: document.collection), \(bind: document.title),
                        \(bind: document.body), \(bind: document.metadata), \(bind: document.createdAt), \(bind: document.updatedAt))
                """).run()
        } else {
            try await db.raw("""
                UPDATE documents SET collection = \(bind: document.collection), title = \(bind: document.title), body = \(bind: document.body),
                    metadata = \(bind: document.metadata), updated_at = \(bind: document.updatedAt)
                WHERE project_id = \(bind: document.projectID) AND id = \(bind: document.id)
                """).run()
        }
        if self.store.dialect == .sqlite {
            try await db.raw("DELETE FROM documents_fts WHERE project_id = \(bind: document.projectID) AND id = \(bind: document.id)").run()
            try await db.raw("""
                INSERT INTO documents_fts (project_id, id, collection, title, body)
                VALUES (\(bind: document.projectID), \(bind: document.id), \(bind: document.collection), \(bind: document.title), \(bind: document.body))
                """).run()
        }
        return existing == nil
    }

    func document(projectID: String, id: String, on db: any SQLDatabase) async throws -> DocumentRow? {
        try await db.raw("""
            SELECT project_id, id, collection, title, body, metadata, created_at, updated_at FROM documents
            WHERE project_id = \(bind: projectID) AND id = \(bind: id)
            """).first().map(Self.documentRow)
    }

    func documents(projectID: String, collection: String, after: String, limit: Int, on db: any SQLDatabase) async throws -> [DocumentRow] {
        try await db.raw("""
            SELECT project_id, id, collection, title, '' AS body, metadata, created_at, updated_at FROM documents
            WHERE project_id = \(bind: projectID) AND id > \(bind: after) AND (\(bind: collection) = '' OR collection = \(bind: collection))
            ORDER BY id LIMIT \(bind: limit)
            """).all().map(Self.documentRow)
    }

    func deleteDocument(projectID: String, id: String, on db: any SQLDatabase) async throws -> Bool {
        guard try await self.document(projectID: projectID, id: id, on: db) != nil else { return false }
        try await db.raw("DELETE FROM documents WHERE project_id = \(bind: projectID) AND id = \(bind: id)").run()
        if self.store.dialect == .sqlite {
            try await db.raw("DELETE FROM documents_fts WHERE project_id = \(bind: projectID) AND id = \(bind: id)").run()
        }
        return true
    }

    /// The documents holding every word of `words` and every phrase of `phrases`, best first.
    func search(projectID: String, words: [String], phrases: [String], collection: String, limit: Int, on db: any SQLDatabase) async throws -> [SearchRow] {
        switch self.store.dialect {
        case .sqlite:
            // Each word and phrase quoted, so that nothing in the query is FTS5 syntax.
            let match = (words + phrases).map { "\"" + $0.replacingOccurrences(of: "\"", with: "\"\"") + "\"" }.joined(separator: " AND ")
            return try await db.raw("""
                SELECT f.id AS id, f.collection AS collection, f.title AS title,
                       snippet(documents_fts, 4, '[', ']', '…', 16) AS snippet, -bm25(documents_fts, 0, 0, 0, 2.0, 1.0) AS score, d.metadata AS metadata
                FROM documents_fts f JOIN documents d ON d.project_id = f.project_id AND d.id = f.id
                WHERE documents_fts MATCH \(bind: match) AND f.project_id = \(bind: projectID)
                    AND (\(bind: collection) = '' OR f.collection = \(bind: collection))
                ORDER BY score DESC, f.id LIMIT \(bind: limit)
                """).all().map(Self.searchRow)
        case .postgres:
            let text = (words + phrases.map { "\"\($0)\"" }).joined(separator: " ")
            return try await db.raw("""
                SELECT id, collection, title,
                       ts_headline('simple', body, q, 'StartSel=[, StopSel=], MaxWords=24, MinWords=8, MaxFragments=1, FragmentDelimiter=…') AS snippet,
                       ts_rank_cd(search, q)::float8 AS score, metadata
                FROM documents, websearch_to_tsquery('simple', \(bind: text)) AS q
                WHERE project_id = \(bind: projectID) AND search @@ q AND (\(bind: collection) = '' OR collection = \(bind: collection))
                ORDER BY score DESC, id LIMIT \(bind: limit)
                """).all().map(Self.searchRow)
        }
    }

    static func documentRow(_ row: any SQLRow) throws -> DocumentRow {
        DocumentRow(
            projectID: try row.decode(column: "project_id", as: String.self),
            id: try row.decode(column: "id", as: String.self),
            collection: try row.decode(column: "collection", as: String.self),
            title: try row.decode(column: "title", as: String.self),
            body: try row.decode(column: "body", as: String.self),
            metadata: try row.decode(column: "metadata", as: String.self),
            createdAt: try row.decode(column: "created_at", as: Int64.self),
            updatedAt: try row.decode(column: "updated_at", as: Int64.self)
        )
    }

    static func searchRow(_ row: any SQLRow) throws -> SearchRow {
        SearchRow(
            id: try row.decode(column: "id", as: String.self),
            collection: try row.decode(column: "collection", as: String.self),
            title: try row.decode(column: "title", as: String.self),
            snippet: try row.decode(column: "snippet", as: String.self),
            score: try row.decode(column: "score", as: Double.self),
            metadata: try row.decode(column: "metadata", as: String.self)
        )
    }
}
