import Foundation
import NIOHTTP1
import SQLKit
import SparkKit
import SparkTesting
import Testing

/// The sql tool against a real SQLite file and, when the suite has one, a real PostgreSQL
/// database: rows out, parameters bound (never spliced), writes refused, a row cap, a statement
/// timeout, and targets the operator did not allow refused before connecting.
@Suite("SQL tool")
struct SQLToolTests {
    static func invoke(_ cluster: TestCluster, _ token: String, project: String, _ tool: String, _ input: [String: Any] = [:]) async throws -> [String: Any] {
        let reply = try await cluster.http.send(.POST, "/api/v1/projects/\(project)/tools/\(tool)/invoke", token: token, json: ["input": input])
        try #require(reply.status == 200, "\(reply.text)")
        return reply.json
    }

    static func reason(_ reply: [String: Any]) -> String? {
        (reply["error"] as? [String: Any])?["reason"] as? String
    }

    static func rows(_ reply: [String: Any]) -> [[String: Any]] {
        ((reply["output"] as? [String: Any])?["rows"] as? [[String: Any]]) ?? []
    }

    @Test("SQLite: rows, bound parameters, a row cap; writes, other files and runaway queries refused", arguments: TestBackend.all)
    func sqlite(backend: TestBackend) async throws {
        let directory = FileManager.default.temporaryDirectory.appending(path: "sparkops-sqltool-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let database = "\(directory)/shop.db"
        let made = try await ChildProcess("/usr/bin/python3", ["-c", """
            import sqlite3, sys
            db = sqlite3.connect(sys.argv[1])
            db.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT, total REAL)")
            db.executemany("INSERT INTO orders (customer, total) VALUES (?, ?)", [("ada", 10.5), ("bob", 3.0)] + [("carol", float(i)) for i in range(50)])
            db.commit()
            """, database], environment: [:], outputPath: "\(directory)/make.log").wait(within: .seconds(60))
        try #require(made == 0)
        try await TestCluster.run(backend: backend, overrides: ["tool.sqliteDirectories": directory]) { cluster in
            let admin = try await cluster.adminToken()
            let project = try await cluster.createProject("shop", token: admin)
            let tools = "/api/v1/projects/\(project)/tools"
            let secrets = "/api/v1/projects/\(project)/secrets"
            #expect(try await cluster.http.send(.PUT, "\(secrets)/shop-db", token: admin, json: ["value": "sqlite://\(database)"]).status == 200)
            #expect(try await cluster.http.send(.PUT, "\(secrets)/elsewhere", token: admin, json: ["value": "sqlite://\(cluster.home)/data/project.sqlite"]).status == 200)
            func apply(_ name: String, _ query: String, secret: String = "shop-db", extra: String = "") async throws {
                let source = "tool: \(name)\nkind: sql\n\(extra)sql:\n  connection: \(secret)\n  query: \(ToolExecutorTests.quoted(query))\n  parameters: [\"${{ input.who }}\"]\n  max_rows: 5\n"
                let applied = try await cluster.http.send(.POST, "\(tools)/apply", token: admin, json: ["source": source])
                try #require(applied.status == 200, "\(applied.text)")
            }
            try await apply("by-customer", "SELECT id, customer, total FROM orders WHERE customer = ?1 ORDER BY id")
            let ada = try await Self.invoke(cluster, admin, project: project, "by-customer", ["who": "ada"])
            #expect(Self.reason(ada) == nil, "\(ada)")
            #expect(Self.rows(ada).map { $0["customer"] as? String } == ["ada"])
            #expect(Self.rows(ada).first?["total"] as? Double == 10.5)
            // A value that would change the query if spliced is only a value.
            #expect(Self.rows(try await Self.invoke(cluster, admin, project: project, "by-customer", ["who": "x' OR '1'='1"])).isEmpty)
            let carol = try await Self.invoke(cluster, admin, project: project, "by-customer", ["who": "carol"])
            #expect(Self.rows(carol).count == 5)
            #expect((carol["output"] as? [String: Any])?["truncated"] as? Bool == true)

            try await apply("sneaky", "WITH x AS (SELECT ?1 AS who) SELECT * FROM orders, x; DELETE FROM orders")
            #expect(Self.reason(try await Self.invoke(cluster, admin, project: project, "sneaky", ["who": "a"])) == "invalid_request")
            try await apply("other-file", "SELECT * FROM users WHERE ?1 IS NOT NULL", secret: "elsewhere")
            #expect(Self.reason(try await Self.invoke(cluster, admin, project: project, "other-file", ["who": "a"])) == "outbound_refused")
            try await apply("forever", "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) AS n FROM c WHERE ?1 IS NOT NULL", extra: "timeout: 1s\n")
            #expect(Self.reason(try await Self.invoke(cluster, admin, project: project, "forever", ["who": "a"])) == "timeout")
            // Still 52 orders: nothing wrote.
            try await apply("count", "SELECT count(*) AS n FROM orders WHERE ?1 IS NOT NULL")
            #expect(Self.rows(try await Self.invoke(cluster, admin, project: project, "count", ["who": "a"])).first?["n"] as? Int == 52)

            // A write is refused when it is written.
            let write = try await cluster.http.send(.POST, "\(tools)/apply", token: admin, json: ["source": "tool: w\nkind: sql\nsql: { connection: shop-db, query: 'DELETE FROM orders' }"])
            #expect(write.errorField == "source")
            #expect(write.errorMessage?.contains("sql.query: must be one SELECT") == true, "\(write.text)")
        }
    }

    @Test("PostgreSQL: rows as JSON, bound parameters, read-only, a statement timeout, a row cap; a private address not allowed is refused")
    func postgres() async throws {
        guard let backend = TestBackend.all.first(where: { if case .postgres = $0 { true } else { false } }) else { return }
        try await backend.withDatabase { databaseURL in
            let url = try #require(databaseURL)
            // The shop's table, in a schema of its own in the test's database.
            let seed = try SparkStore(service: "shop", location: .postgres(url: url, maxConnections: 2))
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await seed.run() }
                defer { group.cancelAll() }
                try await seed.sql { db in
                    try await db.raw("CREATE SCHEMA IF NOT EXISTS shop").run()
                    try await db.raw("CREATE TABLE shop.orders (id SERIAL PRIMARY KEY, customer TEXT NOT NULL, total NUMERIC(10,2) NOT NULL, placed TIMESTAMPTZ NOT NULL DEFAULT now(), meta JSONB)").run()
                    try await db.raw("INSERT INTO shop.orders (customer, total, meta) SELECT 'c' || (i % 3), i, jsonb_build_object('n', i) FROM generate_series(1, 30) AS i").run()
                }
            }
            let port = URLComponents(string: url)?.port ?? 5432
            try await TestCluster.run(backend: .sqlite, overrides: ["tool.outboundAllow": "127.0.0.1:\(port)"]) { cluster in
                let admin = try await cluster.adminToken()
                let project = try await cluster.createProject("pg", token: admin)
                let tools = "/api/v1/projects/\(project)/tools"
                #expect(try await cluster.http.send(.PUT, "/api/v1/projects/\(project)/secrets/shop-db", token: admin, json: ["value": url + "?sslmode=disable"]).status == 200)
                let elsewhere = url.replacingOccurrences(of: "127.0.0.1", with: "10.0.0.1")
                #expect(try await cluster.http.send(.PUT, "/api/v1/projects/\(project)/secrets/far-db", token: admin, json: ["value": elsewhere]).status == 200)
                func apply(_ name: String, _ query: String, secret: String = "shop-db", extra: String = "") async throws {
                    let source = "tool: \(name)\nkind: sql\n\(extra)sql:\n  connection: \(secret)\n  query: \(ToolExecutorTests.quoted(query))\n  parameters: [\"${{ input.who }}\"]\n  max_rows: 4\n"
                    let applied = try await cluster.http.send(.POST, "\(tools)/apply", token: admin, json: ["source": source])
                    try #require(applied.status == 200, "\(applied.text)")
                }
                try await apply("by-customer", "SELECT id, customer, total, meta FROM shop.orders WHERE customer = $1 ORDER BY id;")
                let c1 = try await Self.invoke(cluster, admin, project: project, "by-customer", ["who": "c1"])
                #expect(Self.reason(c1) == nil, "\(c1)")
                let rows = Self.rows(c1)
                #expect(rows.count == 4)
                #expect((c1["output"] as? [String: Any])?["truncated"] as? Bool == true)
                #expect(rows.first?["id"] as? Int == 1)
                #expect((rows.first?["meta"] as? [String: Any])?["n"] as? Int == 1)
                #expect(Self.rows(try await Self.invoke(cluster, admin, project: project, "by-customer", ["who": "c1' OR 'x'='x"])).isEmpty)

                try await apply("deleter", "WITH gone AS (DELETE FROM shop.orders WHERE customer = $1 RETURNING id) SELECT * FROM gone")
                // PostgreSQL refuses the nested write outright; a write through a function meets the
                // read-only transaction.
                let deleter = Self.reason(try await Self.invoke(cluster, admin, project: project, "deleter", ["who": "c1"]))
                #expect(deleter == "sql_error" || deleter == "read_only")
                try await apply("bumper", "SELECT nextval('shop.orders_id_seq') AS n, $1::text AS who")
                let bumped = try await Self.invoke(cluster, admin, project: project, "bumper", ["who": "a"])
                #expect(Self.reason(bumped) == "read_only", "\(bumped)")
                #expect(((bumped["error"] as? [String: Any])?["message"] as? String)?.contains("read-only transaction") == true)
                try await apply("sleepy", "SELECT pg_sleep(30)::text AS slept, $1::text AS who", extra: "timeout: 1s\n")
                #expect(Self.reason(try await Self.invoke(cluster, admin, project: project, "sleepy", ["who": "a"])) == "timeout")
                try await apply("count", "SELECT count(*) AS n FROM shop.orders WHERE $1::text IS NOT NULL")
                #expect(Self.rows(try await Self.invoke(cluster, admin, project: project, "count", ["who": "a"])).first?["n"] as? Int == 30)

                try await apply("far", "SELECT 1 AS one WHERE $1::text IS NOT NULL", secret: "far-db")
                let far = try await Self.invoke(cluster, admin, project: project, "far", ["who": "a"])
                #expect(Self.reason(far) == "outbound_refused", "\(far)")
            }
        }
    }
}
