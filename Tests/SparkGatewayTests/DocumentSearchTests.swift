import Foundation
import NIOHTTP1
import SparkKit
import SparkTesting
import Testing

/// The documents API and search tools: full-text search with ranking and snippets on SQLite
/// (FTS5) and PostgreSQL (tsvector), and the searxng provider against a loopback SearXNG-shaped
/// server.
@Suite("Documents and search")
struct DocumentSearchTests {
    static let handbook: [(id: String, title: String, text: String)] = [
        ("leave", "Annual leave", "Every employee gets 25 days of annual leave. Leave requests go to your manager two weeks ahead."),
        ("expenses", "Expenses", "Travel expenses are paid back within a month when the receipts are attached."),
        ("security", "Security", "Report a lost laptop to security at once. Laptops are encrypted; leave them locked."),
        ("remote", "Remote work", "Remote work is possible three days a week, with the manager's agreement."),
    ]

    @Test("documents are written, read, listed and deleted; search ranks, snippets and filters by collection; bad input is refused", arguments: TestBackend.all)
    func documents(backend: TestBackend) async throws {
        try await TestCluster.run(backend: backend) { cluster in
            let admin = try await cluster.adminToken()
            let project = try await cluster.createProject("kb", token: admin)
            let base = "/api/v1/projects/\(project)/documents"
            for document in Self.handbook {
                let put = try await cluster.http.send(.PUT, "\(base)/\(document.id)", token: admin, json: [
                    "collection": "handbook", "title": document.title, "text": document.text, "metadata": ["owner": "hr"],
                ])
                try #require(put.status == 200, "\(put.text)")
            }
            _ = try await cluster.http.send(.PUT, "\(base)/memo", token: admin, json: ["collection": "memos", "title": "Memo", "text": "The manager meeting moved to Friday."])

            let got = try await cluster.http.send(.GET, "\(base)/leave", token: admin)
            #expect(got.json["text"] as? String == Self.handbook[0].text)
            let listed = try await cluster.http.send(.GET, "\(base)?collection=handbook", token: admin)
            #expect((listed.json["documents"] as? [[String: Any]])?.compactMap { $0["id"] as? String } == ["expenses", "leave", "remote", "security"])
            #expect((listed.json["documents"] as? [[String: Any]])?.allSatisfy { $0["text"] == nil } == true)

            // "leave" is in the title and twice in the text of one document, once in another's.
            let leave = try await cluster.http.send(.POST, "\(base)/search", token: admin, json: ["query": "Leave"])
            let hits = leave.json["hits"] as? [[String: Any]] ?? []
            #expect(hits.compactMap { $0["documentId"] as? String } == ["leave", "security"], "\(leave.text)")
            #expect((hits.first?["snippet"] as? String)?.contains("[leave]") == true || (hits.first?["snippet"] as? String)?.contains("[Leave]") == true, "\(hits)")
            #expect((hits.first?["metadata"] as? [String: Any])?["owner"] as? String == "hr")
            let scores = hits.compactMap { $0["score"] as? Double }
            #expect(scores.count == 2 && scores[0] > scores[1], "\(scores)")

            // Every word must be there; a phrase matches as a phrase; collections filter.
            let both = try await cluster.http.send(.POST, "\(base)/search", token: admin, json: ["query": "manager leave"])
            #expect((both.json["hits"] as? [[String: Any]])?.compactMap { $0["documentId"] as? String } == ["leave"])
            let phrase = try await cluster.http.send(.POST, "\(base)/search", token: admin, json: ["query": "\"annual leave\""])
            #expect((phrase.json["hits"] as? [[String: Any]])?.compactMap { $0["documentId"] as? String } == ["leave"])
            let memos = try await cluster.http.send(.POST, "\(base)/search", token: admin, json: ["query": "manager", "collection": "memos"])
            #expect((memos.json["hits"] as? [[String: Any]])?.compactMap { $0["documentId"] as? String } == ["memo"])
            // Query syntax of either engine is only text.
            let syntax = try await cluster.http.send(.POST, "\(base)/search", token: admin, json: ["query": "leave OR NOT* (expenses) -- ; DROP"])
            #expect(syntax.status == 200, "\(syntax.text)")

            // A document of another project is not found, nor searched.
            let other = try await cluster.createProject("elsewhere", token: admin)
            #expect(try await cluster.http.send(.GET, "/api/v1/projects/\(other)/documents/leave", token: admin).status == 404)
            #expect((try await cluster.http.send(.POST, "/api/v1/projects/\(other)/documents/search", token: admin, json: ["query": "leave"]).json["hits"] as? [Any])?.isEmpty != false)

            // Replacing and deleting keep the index in step.
            _ = try await cluster.http.send(.PUT, "\(base)/leave", token: admin, json: ["collection": "handbook", "title": "Holidays", "text": "Holidays are agreed with the team."])
            #expect((try await cluster.http.send(.POST, "\(base)/search", token: admin, json: ["query": "annual"]).json["hits"] as? [Any])?.isEmpty != false)
            #expect(try await cluster.http.send(.DELETE, "\(base)/security", token: admin).status == 200)
            #expect(try await cluster.http.send(.DELETE, "\(base)/security", token: admin).status == 404)
            #expect((try await cluster.http.send(.POST, "\(base)/search", token: admin, json: ["query": "laptop"]).json["hits"] as? [Any])?.isEmpty != false)

            let bad: [(HTTPMethod, String, [String: Any], String)] = [
                (.PUT, "\(base)/x", ["title": "no text"], "text"),
                (.PUT, "\(base)/bad%20id", ["text": "t"], "documentId"),
                (.PUT, "\(base)/x", ["text": "t", "collection": String(repeating: "c", count: 101)], "collection"),
                (.POST, "\(base)/search", ["query": "  ;;  "], "query"),
                (.POST, "\(base)/search", ["query": String(repeating: "word ", count: 40)], "query"),
                (.POST, "\(base)/search", ["query": "x", "limit": 1000], "limit"),
            ]
            for (method, path, body, field) in bad {
                let refused = try await cluster.http.send(method, path, token: admin, json: body)
                #expect(refused.status == 400, "\(path) \(body): \(refused.text)")
                #expect(refused.errorField == field, "\(path) \(body): \(refused.text)")
            }
        }
    }

    @Test("search tools: provider documents finds the project's documents; provider searxng calls the allowed API and nothing else", arguments: TestBackend.all)
    func tools(backend: TestBackend) async throws {
        let server = try await HTTPEchoServer.start()
        defer { Task { try? await server.stop() } }
        try await TestCluster.run(backend: backend, overrides: ["tool.outboundAllow": "127.0.0.1:\(server.port)"]) { cluster in
            let admin = try await cluster.adminToken()
            let project = try await cluster.createProject("searching", token: admin)
            for document in Self.handbook {
                _ = try await cluster.http.send(.PUT, "/api/v1/projects/\(project)/documents/\(document.id)", token: admin, json: ["collection": "handbook", "title": document.title, "text": document.text])
            }
            let tools = "/api/v1/projects/\(project)/tools"
            for source in [
                "tool: kb\nkind: search\nsearch: { provider: documents, collection: handbook, limit: 1 }",
                "tool: web\nkind: search\nsearch: { provider: searxng, url: \"\(server.baseURL)/searxng\", limit: 2 }",
                "tool: web-private\nkind: search\nsearch: { provider: searxng, url: \"http://10.0.0.1/search\" }",
            ] {
                let applied = try await cluster.http.send(.POST, "\(tools)/apply", token: admin, json: ["source": source])
                try #require(applied.status == 200, "\(applied.text)")
            }
            let kb = try await cluster.http.send(.POST, "\(tools)/kb/invoke", token: admin, json: ["input": ["query": "expenses receipts"]])
            let kbHits = (kb.json["output"] as? [String: Any])?["hits"] as? [[String: Any]] ?? []
            #expect(kbHits.compactMap { $0["document_id"] as? String } == ["expenses"], "\(kb.text)")

            let web = try await cluster.http.send(.POST, "\(tools)/web/invoke", token: admin, json: ["input": ["query": "swift actors"]])
            let webHits = (web.json["output"] as? [String: Any])?["hits"] as? [[String: Any]] ?? []
            #expect(webHits.compactMap { $0["title"] as? String } == ["swift actors 1", "swift actors 2"], "\(web.text)")
            #expect(webHits.first?["url"] as? String == "https://example.org/1")
            #expect(server.requests == 1)

            let refused = try await cluster.http.send(.POST, "\(tools)/web-private/invoke", token: admin, json: ["input": ["query": "x"]])
            #expect((refused.json["error"] as? [String: Any])?["reason"] as? String == "outbound_refused", "\(refused.text)")
            #expect(server.requests == 1)

            let empty = try await cluster.http.send(.POST, "\(tools)/kb/invoke", token: admin, json: ["input": ["query": "  "]])
            #expect((empty.json["error"] as? [String: Any])?["reason"] as? String == "invalid_request", "\(empty.text)")
        }
    }
}
