public import SparkExpr

/// A tool of a project, as written in YAML or JSON (docs/tools.md):
///
/// ```yaml
/// tool: fetch-page
/// kind: http
/// side_effects: none
/// input_schema: { type: object, properties: { path: { type: string } }, required: [path] }
/// http: { method: GET, url: "https://example.com/${{ input.path }}" }
/// ```
public struct ToolDefinition: Sendable, Hashable {
    public enum Kind: String, Sendable, Hashable, CaseIterable {
        case echo, http, python, node, sql, search, mcp, browser
    }

    /// What running the tool does to the world, which decides whether a run may retry it.
    public enum SideEffects: String, Sendable, Hashable, CaseIterable {
        case none
        case idempotent
        case nonIdempotent = "non_idempotent"
    }

    public struct HTTP: Sendable, Hashable {
        public var method: String = "GET"
        /// A template over `input`; interpolated values are percent-encoded.
        public var url: String
        /// Header templates, by name.
        public var headers: [String: String] = [:]
        /// Query parameter templates, by name (encoded by SparkOps).
        public var query: [String: String] = [:]
        /// A JSON body whose strings are templates; nil sends the input itself for POST, PUT and PATCH.
        public var body: ExprValue?
        public var auth: Auth?
        /// Hosts, addresses and CIDR ranges that may be reached although not public.
        public var allow: [String] = []
        public var maxResponseBytes: Int = 1 << 20
        public var followRedirects: Int = 5
    }

    public struct Auth: Sendable, Hashable {
        public enum Scheme: String, Sendable, Hashable, CaseIterable { case bearer, basic, header }
        /// The name of a secret of the project.
        public var secret: String
        public var scheme: Scheme = .bearer
        /// The header that carries the secret for scheme `header`.
        public var header: String = ""
    }

    /// A python or node program: input as JSON on stdin, output as JSON on stdout.
    public struct Code: Sendable, Hashable {
        public var source: String
        /// pip distributions or npm packages that must already be on the host; never installed.
        public var packages: [String] = []
        public var memoryMB: Int = 256
        public var cpuSeconds: Int = 10
        public var processes: Int = 64
        public var fileMB: Int = 16
    }

    /// A read-only query of a PostgreSQL or SQLite database whose connection string is a secret.
    public struct SQL: Sendable, Hashable {
        /// The secret holding `postgres://user:password@host:5432/db` or `sqlite:///path/to/file.db`.
        public var connection: String
        /// One SELECT (or WITH … SELECT, VALUES, TABLE); `$1`, `$2` … (PostgreSQL) or `?1`, `?2` …
        /// (SQLite) stand for the parameters.
        public var query: String
        /// Templates over `input`, bound in order, never spliced into the query.
        public var parameters: [String] = []
        public var maxRows: Int = 1000
    }

    /// Full-text search of the project's documents, or a SearXNG-compatible JSON API.
    public struct Search: Sendable, Hashable {
        public enum Provider: String, Sendable, Hashable, CaseIterable { case documents, searxng }
        public var provider: Provider
        /// A template over `input`: the words to search for.
        public var query: String = "${{ input.query }}"
        /// documents: only this collection.
        public var collection: String = ""
        public var limit: Int = 10
        /// searxng: the search endpoint (`https://searx.example.org/search`), through the outbound guard.
        public var url: String = ""
    }

    /// A Model Context Protocol server whose tools the tool offers: a program over stdio (inline
    /// python or node code, or a command of the host), or a streamable HTTP endpoint.
    public struct MCP: Sendable, Hashable {
        public enum Server: Sendable, Hashable {
            /// Inline code run like a python or node tool (kind python or node, and its limits).
            case code(Kind, Code)
            /// A program of the host and its arguments, run in the same sandbox.
            case command([String], Code)
            /// `https://…/mcp`, through the outbound guard.
            case url(String)
        }

        public var server: Server
        /// Only these of the server's tools; empty: all of them.
        public var tools: [String] = []
        /// url: sent as the request's credential.
        public var auth: Auth?
        /// url: hosts, addresses and CIDR ranges that may be reached although not public.
        public var allow: [String] = []
    }

    /// A page loaded by headless Chromium, every connection through the outbound guard.
    public struct Browser: Sendable, Hashable {
        public enum Format: String, Sendable, Hashable, CaseIterable { case text, html, screenshot }
        /// A template over `input`.
        public var url: String = "${{ input.url }}"
        public var format: Format = .text
        public var width: Int = 1280
        public var height: Int = 800
        /// How long scripts may run after the page loads (Chromium's virtual time budget).
        public var wait: WorkflowDuration = WorkflowDuration(milliseconds: 0)
        /// Hosts, addresses and CIDR ranges that may be reached although not public; with any
        /// entry, only those hosts are reached.
        public var allow: [String] = []

        public init() {}
    }

    public var name: String
    public var description: String = ""
    public var kind: Kind
    public var sideEffects: SideEffects
    public var costMicros: Int64 = 0
    public var inputSchema: ExprValue = .map(["type": .string("object")])
    public var timeout: WorkflowDuration = .seconds(30)
    public var maxOutputBytes: Int = 1 << 20
    public var http: HTTP?
    public var code: Code?
    public var sql: SQL?
    public var search: Search?
    public var mcp: MCP?
    public var browser: Browser?

    public init(name: String, kind: Kind, sideEffects: SideEffects) {
        self.name = name
        self.kind = kind
        self.sideEffects = sideEffects
    }

    /// A browser tool's input unless it declares one: the page.
    public static let browserInputSchema: ExprValue = .map([
        "type": "object",
        "properties": .map(["url": .map(["type": "string", "minLength": .int(1)])]),
        "required": .list(["url"]),
    ])

    /// The input of every mcp tool: which of the server's tools, and its arguments.
    public static let mcpInputSchema: ExprValue = .map([
        "type": "object",
        "properties": .map(["tool": .map(["type": "string", "minLength": .int(1)]), "arguments": .map(["type": "object"])]),
        "required": .list(["tool"]),
        "additionalProperties": .bool(false),
    ])

    /// The input schema, compiled; valid for every definition ``read(_:limits:)`` returned.
    public var schema: JSONSchema {
        (try? JSONSchema(self.inputSchema)) ?? (try! JSONSchema(.bool(true)))
    }

    /// Reads a tool definition from YAML or JSON, every problem with its line, column and field.
    public static func read(_ source: String, limits: WorkflowLimits = .default) throws(WorkflowValidationError) -> ToolDefinition {
        var tree = SourceTreeReader(limits: limits)
        guard let root = tree.read(source) else { throw WorkflowValidationError(problems: tree.problems) }
        var reader = WorkflowReader(limits: limits)
        reader.problems = tree.problems
        let definition = reader.tool(root)
        guard reader.problems.isEmpty, let definition else { throw WorkflowValidationError(problems: reader.problems) }
        return definition
    }

    // MARK: Canonical form

    public var canonicalValue: ExprValue {
        var fields: [String: ExprValue] = [
            "tool": .string(self.name),
            "description": .string(self.description),
            "kind": .string(self.kind.rawValue),
            "side_effects": .string(self.sideEffects.rawValue),
            "cost_micros": .int(self.costMicros),
            "input_schema": self.inputSchema,
            "timeout": .string(self.timeout.description),
            "max_output_bytes": .int(Int64(self.maxOutputBytes)),
        ]
        if let http = self.http {
            var spec: [String: ExprValue] = [
                "method": .string(http.method),
                "url": .string(http.url),
                "headers": .map(http.headers.mapValues(ExprValue.string)),
                "query": .map(http.query.mapValues(ExprValue.string)),
                "allow": .list(http.allow.map(ExprValue.string)),
                "max_response_bytes": .int(Int64(http.maxResponseBytes)),
                "follow_redirects": .int(Int64(http.followRedirects)),
            ]
            if let body = http.body { spec["body"] = body }
            if let auth = http.auth {
                spec["auth"] = .map(["secret": .string(auth.secret), "scheme": .string(auth.scheme.rawValue), "header": .string(auth.header)])
            }
            fields["http"] = .map(spec)
        }
        if let search = self.search {
            fields["search"] = .map([
                "provider": .string(search.provider.rawValue),
                "query": .string(search.query),
                "collection": .string(search.collection),
                "limit": .int(Int64(search.limit)),
                "url": .string(search.url),
            ])
        }
        if let browser = self.browser {
            fields["browser"] = .map([
                "url": .string(browser.url), "format": .string(browser.format.rawValue), "width": .int(Int64(browser.width)),
                "height": .int(Int64(browser.height)), "wait": .string(browser.wait.description), "allow": .list(browser.allow.map(ExprValue.string)),
            ])
        }
        if let mcp = self.mcp {
            var spec: [String: ExprValue] = ["tools": .list(mcp.tools.map(ExprValue.string)), "allow": .list(mcp.allow.map(ExprValue.string))]
            func codeValue(_ code: Code) -> ExprValue {
                .map([
                    "memory_mb": .int(Int64(code.memoryMB)), "cpu_seconds": .int(Int64(code.cpuSeconds)),
                    "processes": .int(Int64(code.processes)), "file_mb": .int(Int64(code.fileMB)),
                ])
            }
            switch mcp.server {
            case .code(let kind, let code):
                spec[kind.rawValue] = .string(code.source)
                spec["limits"] = codeValue(code)
            case .command(let command, let limits):
                spec["command"] = .list(command.map(ExprValue.string))
                spec["limits"] = codeValue(limits)
            case .url(let url):
                spec["url"] = .string(url)
            }
            if let auth = mcp.auth {
                spec["auth"] = .map(["secret": .string(auth.secret), "scheme": .string(auth.scheme.rawValue), "header": .string(auth.header)])
            }
            fields["mcp"] = .map(spec)
        }
        if let sql = self.sql {
            fields["sql"] = .map([
                "connection": .string(sql.connection),
                "query": .string(sql.query),
                "parameters": .list(sql.parameters.map(ExprValue.string)),
                "max_rows": .int(Int64(sql.maxRows)),
            ])
        }
        if let code = self.code {
            fields[self.kind.rawValue] = .map([
                "code": .string(code.source),
                "packages": .list(code.packages.map(ExprValue.string)),
                "limits": .map([
                    "memory_mb": .int(Int64(code.memoryMB)),
                    "cpu_seconds": .int(Int64(code.cpuSeconds)),
                    "processes": .int(Int64(code.processes)),
                    "file_mb": .int(Int64(code.fileMB)),
                ]),
            ])
        }
        return .map(fields)
    }

    /// Compact JSON of the canonical value, numbers as written: what is stored and shown.
    public var canonicalJSON: String { self.canonicalValue.jsonText }

    /// Over the value's stable text (``ExprValue/stableJSONText``), which has not changed since
    /// the first version: a definition keeps its hash.
    public var contentHash: String { ContentHash.of(self.canonicalValue.stableJSONText) }
}

extension WorkflowReader {
    static let toolFields = ["tool", "description", "kind", "side_effects", "cost_micros", "input_schema", "timeout", "max_output_bytes", "http", "python", "node", "sql", "search", "mcp", "browser"]
    /// What a tool's templates may name.
    static let toolTemplateSchema = ExprSchema.object(["input": .any])

    mutating func tool(_ root: SourceNode) -> ToolDefinition? {
        guard let top = self.fields(root, "", allowed: Self.toolFields) else { return nil }
        var name = self.name(top["tool"]?.0, "tool", pattern: Self.isResourceName, rule: "1–100 letters, digits, _ . -, starting with a letter or digit", at: root.location)
        // Names the tool routes use for themselves (`…/tools/apply`), ids' prefix, and the
        // agents' built-in memory tools.
        if let taken = name, ["apply", "validate"].contains(taken) || taken.hasPrefix("tool_") || taken.hasPrefix(AgentDefinition.memoryToolPrefix) {
            self.problem("tool", "\(taken.debugDescription) is reserved; choose another name", at: top["tool"]?.0.location ?? root.location)
            name = nil
        }
        var kind: ToolDefinition.Kind?
        if let node = top["kind"]?.0 {
            let text = self.string(node, "kind") ?? ""
            kind = ToolDefinition.Kind(rawValue: text)
            if kind == nil {
                self.problem("kind", "unknown kind \(text.debugDescription); one of \(ToolDefinition.Kind.allCases.map(\.rawValue).joined(separator: ", "))", at: node.location)
            }
        } else {
            self.problem("kind", "is required: one of \(ToolDefinition.Kind.allCases.map(\.rawValue).joined(separator: ", "))", at: root.location)
        }
        // echo has none; sql runs read-only, so it has none either; a search or a page load
        // reads (a browser tool may say otherwise).
        let readsOnly = kind == .echo || kind == .sql || kind == .search || kind == .browser
        var sideEffects: ToolDefinition.SideEffects? = readsOnly ? ToolDefinition.SideEffects.none : nil
        if let node = top["side_effects"]?.0 {
            let text = self.string(node, "side_effects") ?? ""
            sideEffects = ToolDefinition.SideEffects(rawValue: text)
            if sideEffects == nil {
                self.problem("side_effects", "must be none, idempotent or non_idempotent", at: node.location)
            }
        } else if kind != nil, !readsOnly {
            self.problem("side_effects", "is required: none, idempotent or non_idempotent (whether a run may retry the tool)", at: root.location)
        }
        if kind == .sql || kind == .search, let node = top["side_effects"]?.0, sideEffects != ToolDefinition.SideEffects.none {
            self.problem("side_effects", "a \(kind!.rawValue) tool only reads: its side_effects are none", at: node.location)
        }
        guard let name, let kind else { return nil }
        var tool = ToolDefinition(name: name, kind: kind, sideEffects: sideEffects ?? .nonIdempotent)
        tool.description = self.string(top["description"]?.0, "description") ?? ""
        if let node = top["cost_micros"]?.0 {
            if case .int(let cost) = node.value, cost >= 0, cost <= 1_000_000_000_000 { tool.costMicros = cost } else {
                self.problem("cost_micros", "must be a whole number of micro-dollars, from 0 to 10^12", at: node.location)
            }
        }
        if let node = top["input_schema"]?.0 {
            self.recordLocations(of: node, at: "input_schema")
            do {
                _ = try JSONSchema(node.value)
                tool.inputSchema = node.value
            } catch {
                for problem in error.problems {
                    let field = problem.path.isEmpty ? "input_schema" : "input_schema.\(problem.path)"
                    self.problem(field, problem.message, at: self.nearest(field, fallback: node.location))
                }
            }
        }
        if let timeout = self.duration(top["timeout"]?.0, "timeout") {
            if timeout.milliseconds < 100 || timeout > .seconds(3600) {
                self.problem("timeout", "must be from 100ms to 1h", at: top["timeout"]!.0.location)
            } else {
                tool.timeout = timeout
            }
        }
        if let node = top["max_output_bytes"]?.0 {
            if case .int(let bytes) = node.value, (1 ... 64 << 20).contains(bytes) { tool.maxOutputBytes = Int(bytes) } else {
                self.problem("max_output_bytes", "must be from 1 to 67108864 (64 MiB)", at: node.location)
            }
        }
        // The kind's own section, and no other kind's.
        for other in ["http", "python", "node", "sql", "search", "mcp", "browser"] where other != kind.rawValue {
            if let entry = top[other] {
                self.problem(other, "a \(kind.rawValue) tool takes no \(other) section", at: entry.1)
            }
        }
        switch kind {
        case .echo: break
        case .http:
            if let node = top["http"]?.0 {
                tool.http = self.httpSpec(node)
            } else {
                self.problem("http", "is required for an http tool: at least its url", at: root.location)
            }
        case .python, .node:
            if let node = top[kind.rawValue]?.0 {
                tool.code = self.codeSpec(node, kind.rawValue)
            } else {
                self.problem(kind.rawValue, "is required for a \(kind.rawValue) tool: at least its code", at: root.location)
            }
        case .search:
            if let node = top["search"]?.0 {
                tool.search = self.searchSpec(node)
            } else {
                self.problem("search", "is required for a search tool: at least its provider", at: root.location)
            }
        case .sql:
            if let node = top["sql"]?.0 {
                tool.sql = self.sqlSpec(node)
            } else {
                self.problem("sql", "is required for a sql tool: its connection secret and query", at: root.location)
            }
        case .browser:
            if top["input_schema"] == nil { tool.inputSchema = ToolDefinition.browserInputSchema }
            tool.browser = top["browser"].flatMap { self.browserSpec($0.0) } ?? ToolDefinition.Browser()
        case .mcp:
            // The canonical form writes the fixed schema out; anything else is refused.
            if let node = top["input_schema"]?.0, node.value != ToolDefinition.mcpInputSchema {
                self.problem("input_schema", "an mcp tool's input is {tool, arguments}: each of the server's tools has its own schema", at: node.location)
            }
            tool.inputSchema = ToolDefinition.mcpInputSchema
            if let node = top["mcp"]?.0 {
                tool.mcp = self.mcpSpec(node)
            } else {
                self.problem("mcp", "is required for an mcp tool: the server's command, code or url", at: root.location)
            }
        }
        return tool
    }

    mutating func browserSpec(_ node: SourceNode) -> ToolDefinition.Browser? {
        guard let fields = self.fields(node, "browser", allowed: ["url", "format", "width", "height", "wait", "allow"]) else { return nil }
        var spec = ToolDefinition.Browser()
        if let urlNode = fields["url"]?.0, let url = self.template(urlNode, "browser.url") { spec.url = url }
        if let formatNode = fields["format"]?.0 {
            let text = self.string(formatNode, "browser.format") ?? ""
            if let format = ToolDefinition.Browser.Format(rawValue: text) { spec.format = format } else {
                self.problem("browser.format", "must be text, html or screenshot", at: formatNode.location)
            }
        }
        for (key, range) in [("width", 200 ... 4096), ("height", 200 ... 4096)] {
            guard let value = fields[key]?.0 else { continue }
            if case .int(let number) = value.value, range.contains(Int(number)) {
                if key == "width" { spec.width = Int(number) } else { spec.height = Int(number) }
            } else {
                self.problem("browser.\(key)", "must be a whole number of pixels from \(range.lowerBound) to \(range.upperBound)", at: value.location)
            }
        }
        if let wait = self.duration(fields["wait"]?.0, "browser.wait") {
            if wait > .seconds(60) { self.problem("browser.wait", "must be at most 1m", at: fields["wait"]!.0.location) } else { spec.wait = wait }
        }
        spec.allow = self.stringList(fields["allow"]?.0, "browser.allow")
        return spec
    }

    mutating func mcpSpec(_ node: SourceNode) -> ToolDefinition.MCP? {
        guard let fields = self.fields(node, "mcp", allowed: ["python", "node", "command", "url", "tools", "auth", "allow", "limits"]) else { return nil }
        let given = ["python", "node", "command", "url"].filter { fields[$0] != nil }
        guard given.count == 1 else {
            self.problem("mcp", given.isEmpty ? "needs one of python, node (the server's code), command (a program of the host) or url" : "takes one of \(given.joined(separator: ", ")), not several", at: node.location)
            return nil
        }
        var limits = ToolDefinition.Code(source: "")
        if let limitsNode = fields["limits"]?.0 {
            if given[0] == "url" { self.problem("mcp.limits", "limits are for a server this service runs, not a url", at: limitsNode.location) }
            self.limits(limitsNode, "mcp.limits", into: &limits)
        }
        let server: ToolDefinition.MCP.Server
        switch given[0] {
        case "python", "node":
            guard let source = self.string(fields[given[0]]?.0, "mcp.\(given[0])", required: true) else { return nil }
            guard source.utf8.count <= 256 * 1024 else {
                self.problem("mcp.\(given[0])", "is longer than 256 KiB", at: fields[given[0]]!.0.location)
                return nil
            }
            limits.source = source
            server = .code(given[0] == "python" ? .python : .node, limits)
        case "command":
            let command = self.stringList(fields["command"]?.0, "mcp.command")
            guard let program = command.first, program.hasPrefix("/") else {
                self.problem("mcp.command", "must be a list whose first item is the absolute path of a program of the host (under /usr, /bin, /opt…)", at: fields["command"]!.0.location)
                return nil
            }
            _ = program
            limits.source = command.joined(separator: " ")
            server = .command(command, limits)
        default:
            guard let url = self.string(fields["url"]?.0, "mcp.url", required: true) else { return nil }
            guard url.lowercased().hasPrefix("http://") || url.lowercased().hasPrefix("https://") else {
                self.problem("mcp.url", "must start with http:// or https://", at: fields["url"]!.0.location)
                return nil
            }
            server = .url(url)
        }
        var spec = ToolDefinition.MCP(server: server)
        spec.tools = self.stringList(fields["tools"]?.0, "mcp.tools")
        spec.allow = self.stringList(fields["allow"]?.0, "mcp.allow")
        if let authNode = fields["auth"]?.0 {
            if case .url = server {} else { self.problem("mcp.auth", "auth is for a url server", at: authNode.location) }
            spec.auth = self.authSpec(authNode, "mcp.auth")
        }
        return spec
    }

    mutating func searchSpec(_ node: SourceNode) -> ToolDefinition.Search? {
        guard let fields = self.fields(node, "search", allowed: ["provider", "query", "collection", "limit", "url"]) else { return nil }
        var provider: ToolDefinition.Search.Provider?
        if let providerNode = fields["provider"]?.0 {
            let text = self.string(providerNode, "search.provider") ?? ""
            provider = ToolDefinition.Search.Provider(rawValue: text)
            if provider == nil { self.problem("search.provider", "must be documents or searxng", at: providerNode.location) }
        } else {
            self.problem("search.provider", "is required: documents or searxng", at: node.location)
        }
        guard let provider else { return nil }
        var spec = ToolDefinition.Search(provider: provider)
        if let queryNode = fields["query"]?.0, let query = self.template(queryNode, "search.query") { spec.query = query }
        spec.collection = self.string(fields["collection"]?.0, "search.collection") ?? ""
        if let limit = fields["limit"]?.0 {
            if case .int(let count) = limit.value, (1 ... 100).contains(count) { spec.limit = Int(count) } else {
                self.problem("search.limit", "must be from 1 to 100", at: limit.location)
            }
        }
        if let urlNode = fields["url"]?.0 {
            spec.url = self.string(urlNode, "search.url") ?? ""
            if provider == .documents {
                self.problem("search.url", "the documents provider searches the project's own documents; url is for searxng", at: urlNode.location)
            } else if !(spec.url.lowercased().hasPrefix("http://") || spec.url.lowercased().hasPrefix("https://")) {
                self.problem("search.url", "must start with http:// or https://", at: urlNode.location)
            }
        } else if provider == .searxng {
            self.problem("search.url", "is required for searxng: the search endpoint, such as https://searx.example.org/search", at: node.location)
        }
        return spec
    }

    mutating func sqlSpec(_ node: SourceNode) -> ToolDefinition.SQL? {
        guard let fields = self.fields(node, "sql", allowed: ["connection", "query", "parameters", "max_rows"]) else { return nil }
        let connection = self.name(fields["connection"]?.0, "sql.connection", pattern: Self.isSecretName, rule: "the name of a secret of the project holding the connection string", at: node.location)
        let query = self.string(fields["query"]?.0, "sql.query", required: true)
        if fields["query"] == nil { self.problem("sql.query", "is required: one SELECT", at: node.location) }
        if let query, let queryNode = fields["query"]?.0 {
            let trimmed = query.drop(while: { $0.isWhitespace || $0 == "(" })
            let first = trimmed.prefix(while: { $0.isLetter }).lowercased()
            if !["select", "with", "values", "table"].contains(first) {
                self.problem("sql.query", "must be one SELECT (or WITH … SELECT, VALUES, TABLE): a sql tool only reads", at: queryNode.location)
            } else if query.utf8.count > 64 * 1024 {
                self.problem("sql.query", "is longer than 64 KiB", at: queryNode.location)
            }
        }
        var parameters: [String] = []
        if let list = fields["parameters"]?.0 {
            if case .sequence(let items, _) = list {
                for (index, item) in items.enumerated() {
                    let field = "sql.parameters[\(index)]"
                    if case .scalar = item {
                        if let text = self.template(item, field) { parameters.append(text) }
                    } else {
                        self.problem(field, "must be a template, not \(item.kindName)", at: item.location)
                    }
                }
            } else {
                self.problem("sql.parameters", "must be a list of templates, bound in order", at: list.location)
            }
        }
        var spec = ToolDefinition.SQL(connection: connection ?? "", query: query ?? "", parameters: parameters)
        if let rows = fields["max_rows"]?.0 {
            if case .int(let count) = rows.value, (1 ... 100_000).contains(count) { spec.maxRows = Int(count) } else {
                self.problem("sql.max_rows", "must be from 1 to 100000", at: rows.location)
            }
        }
        guard connection != nil, query != nil else { return nil }
        return spec
    }

    /// Where `field` or its closest recorded parent was written.
    func nearest(_ field: String, fallback: SourceLocation) -> SourceLocation {
        var path = Substring(field)
        while !path.isEmpty {
            if let found = self.locations[String(path)] { return found }
            guard let dot = path.lastIndex(of: ".") else { break }
            path = path[..<dot]
        }
        return fallback
    }

    mutating func template(_ node: SourceNode, _ field: String) -> String? {
        guard let text = self.string(node, field) else { return nil }
        do {
            let template = try ExprTemplate.parse(text, base: node.location)
            for error in template.check(against: Self.toolTemplateSchema) {
                self.problem(field, error.message, at: error.location)
            }
        } catch {
            self.problem(field, error.message, at: error.location)
        }
        return text
    }

    mutating func templateMap(_ node: SourceNode?, _ field: String) -> [String: String] {
        guard let node, node.value != .null else { return [:] }
        guard case .mapping(let pairs, _) = node else {
            self.problem(field, "must be a mapping of names to templates, not \(node.kindName)", at: node.location)
            return [:]
        }
        var map: [String: String] = [:]
        for pair in pairs {
            let path = "\(field).\(pair.key)"
            self.locations[path] = pair.value.location
            if let text = self.template(pair.value, path) { map[pair.key] = text }
        }
        return map
    }

    /// Every string under `node` checked as a template.
    mutating func checkTemplates(in node: SourceNode, _ field: String) {
        switch node {
        case .scalar(_, _, _):
            if case .string = node.value { _ = self.template(node, field) }
        case .mapping(let pairs, _):
            for pair in pairs { self.checkTemplates(in: pair.value, "\(field).\(pair.key)") }
        case .sequence(let items, _):
            for (index, item) in items.enumerated() { self.checkTemplates(in: item, "\(field)[\(index)]") }
        }
    }

    static let httpMethods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"]

    mutating func httpSpec(_ node: SourceNode) -> ToolDefinition.HTTP? {
        guard let fields = self.fields(node, "http", allowed: ["method", "url", "headers", "query", "body", "auth", "allow", "max_response_bytes", "follow_redirects"]) else { return nil }
        guard let urlNode = fields["url"]?.0 else {
            self.problem("http.url", "is required", at: node.location)
            return nil
        }
        guard let url = self.template(urlNode, "http.url") else { return nil }
        let literal = url.prefix(while: { $0 != "$" }).lowercased()
        if !(literal.hasPrefix("http://") || literal.hasPrefix("https://")) && !"http://".hasPrefix(literal) && !"https://".hasPrefix(literal) {
            self.problem("http.url", "must start with http:// or https://", at: urlNode.location)
        }
        var spec = ToolDefinition.HTTP(url: url)
        if let methodNode = fields["method"]?.0 {
            let method = (self.string(methodNode, "http.method") ?? "").uppercased()
            if Self.httpMethods.contains(method) { spec.method = method } else {
                self.problem("http.method", "must be one of \(Self.httpMethods.joined(separator: ", "))", at: methodNode.location)
            }
        }
        spec.headers = self.templateMap(fields["headers"]?.0, "http.headers")
        for name in spec.headers.keys.sorted() {
            let lowered = name.lowercased()
            if !name.unicodeScalars.allSatisfy({ $0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0) || "-_".unicodeScalars.contains($0)) }) || name.isEmpty {
                self.problem("http.headers.\(name)", "\(name.debugDescription) is not a header name", at: self.at("http.headers.\(name)"))
            } else if ["host", "content-length", "transfer-encoding", "connection"].contains(lowered) {
                self.problem("http.headers.\(name)", "\(name) is set by SparkOps", at: self.at("http.headers.\(name)"))
            }
        }
        spec.query = self.templateMap(fields["query"]?.0, "http.query")
        if let bodyNode = fields["body"]?.0 {
            self.checkTemplates(in: bodyNode, "http.body")
            spec.body = bodyNode.value
            if spec.method == "GET" || spec.method == "HEAD" {
                self.problem("http.body", "a \(spec.method) request has no body", at: bodyNode.location)
            }
        }
        if let authNode = fields["auth"]?.0 { spec.auth = self.authSpec(authNode, "http.auth") }
        spec.allow = self.stringList(fields["allow"]?.0, "http.allow")
        if let bytes = fields["max_response_bytes"]?.0 {
            if case .int(let count) = bytes.value, (1 ... 64 << 20).contains(count) { spec.maxResponseBytes = Int(count) } else {
                self.problem("http.max_response_bytes", "must be from 1 to 67108864 (64 MiB)", at: bytes.location)
            }
        }
        if let redirects = fields["follow_redirects"]?.0 {
            if case .int(let count) = redirects.value, (0 ... 20).contains(count) { spec.followRedirects = Int(count) } else {
                self.problem("http.follow_redirects", "must be from 0 to 20", at: redirects.location)
            }
        }
        return spec
    }

    /// `auth`: the secret that goes with a request, and how.
    mutating func authSpec(_ node: SourceNode, _ field: String) -> ToolDefinition.Auth? {
        guard let auth = self.fields(node, field, allowed: ["secret", "scheme", "header"]) else { return nil }
        let secret = self.name(auth["secret"]?.0, "\(field).secret", pattern: Self.isSecretName, rule: "the name of a secret of the project: letters, digits, _ . -", at: node.location)
        var value = ToolDefinition.Auth(secret: secret ?? "")
        if let schemeNode = auth["scheme"]?.0 {
            let text = self.string(schemeNode, "\(field).scheme") ?? ""
            if let scheme = ToolDefinition.Auth.Scheme(rawValue: text) { value.scheme = scheme } else {
                self.problem("\(field).scheme", "must be bearer, basic or header", at: schemeNode.location)
            }
        }
        value.header = self.string(auth["header"]?.0, "\(field).header") ?? ""
        if value.scheme == .header && value.header.isEmpty {
            self.problem("\(field).header", "is required with scheme header: the header that carries the secret", at: node.location)
        }
        return secret == nil ? nil : value
    }

    /// Secret names: like resource names.
    static func isSecretName(_ text: String) -> Bool { Self.isResourceName(text) }

    mutating func codeSpec(_ node: SourceNode, _ kind: String) -> ToolDefinition.Code? {
        guard let fields = self.fields(node, kind, allowed: ["code", "packages", "limits"]) else { return nil }
        guard let source = self.string(fields["code"]?.0, "\(kind).code", required: true) else {
            if fields["code"] == nil { self.problem("\(kind).code", "is required: the program", at: node.location) }
            return nil
        }
        guard source.utf8.count <= 256 * 1024 else {
            self.problem("\(kind).code", "is longer than 256 KiB", at: fields["code"]!.0.location)
            return nil
        }
        var code = ToolDefinition.Code(source: source)
        code.packages = self.stringList(fields["packages"]?.0, "\(kind).packages")
        for (index, package) in code.packages.enumerated() where !Self.isPackageName(package) {
            self.problem("\(kind).packages[\(index)]", "\(package.debugDescription) is not a package name", at: self.at("\(kind).packages[\(index)]"))
        }
        if let limitsNode = fields["limits"]?.0 { self.limits(limitsNode, "\(kind).limits", into: &code) }
        return code
    }

    /// A program's `limits` mapping: memory, CPU time, processes, file size.
    mutating func limits(_ node: SourceNode, _ field: String, into code: inout ToolDefinition.Code) {
        guard let limits = self.fields(node, field, allowed: ["memory_mb", "cpu_seconds", "processes", "file_mb"]) else { return }
        func bounded(_ key: String, _ range: ClosedRange<Int64>, _ assign: (Int) -> Void) {
            guard let value = limits[key]?.0 else { return }
            if case .int(let number) = value.value, range.contains(number) { assign(Int(number)) } else {
                self.problem("\(field).\(key)", "must be a whole number from \(range.lowerBound) to \(range.upperBound)", at: value.location)
            }
        }
        bounded("memory_mb", 16 ... 16384) { code.memoryMB = $0 }
        bounded("cpu_seconds", 1 ... 3600) { code.cpuSeconds = $0 }
        bounded("processes", 1 ... 4096) { code.processes = $0 }
        bounded("file_mb", 0 ... 4096) { code.fileMB = $0 }
    }

    /// pip and npm names: letters, digits, `. _ - @ /`.
    static func isPackageName(_ text: String) -> Bool {
        !text.isEmpty && text.count <= 214 && text.unicodeScalars.allSatisfy { $0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0) || "._-@/".unicodeScalars.contains($0)) }
    }
}
