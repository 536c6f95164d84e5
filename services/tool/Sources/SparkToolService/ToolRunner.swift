import Foundation
import NIOHTTP1
import SparkExpr
import SparkKit
import SparkWorkflow

/// Runs one tool call: echo, http or a python or node program. Every failure is a
/// ``ToolRunner/Failure`` with a reason the caller can act on; nothing here throws anything else.
struct ToolRunner: Sendable {
    let sandbox: CodeSandbox
    let http: GuardedHTTPClient
    let sql: SQLRunner
    let browser: BrowserRunner
    var mcp: MCPRunner { MCPRunner(sandbox: self.sandbox, http: self.http) }

    struct Failure: Error, Sendable {
        var reason: String
        var message: String
        var output: ExprValue?
        var logs: String = ""
    }

    struct Outcome: Sendable {
        var output: ExprValue
        var logs: String
    }

    /// Opens a secret of the project by name for sending to a host (nil: not sent to a host; nil
    /// back: there is no such secret); throws ``SecretRefused`` when the secret may not go there.
    typealias SecretOpener = @Sendable (_ name: String, _ host: String?) async throws -> String?

    /// A secret bound to hosts, asked for another.
    struct SecretRefused: Error, CustomStringConvertible {
        var name: String
        var host: String
        var hosts: [String]
        var description: String { "the secret \(self.name) may be sent to \(self.hosts.joined(separator: ", ")) only, not \(self.host)" }
    }

    /// What a call may use of its project: its secrets by name (nil: there is none), and a
    /// search of its documents (query, collection, limit → hits).
    struct Project: Sendable {
        var secret: ToolRunner.SecretOpener
        var search: @Sendable (String, String, Int) async throws -> [ExprValue]
    }

    func run(
        _ tool: ToolDefinition,
        input: ExprValue,
        timeout: Duration,
        maxOutputBytes: Int,
        project: Project
    ) async throws(Failure) -> Outcome {
        let secret = project.secret
        let outcome: Outcome
        switch tool.kind {
        case .echo:
            outcome = Outcome(output: input, logs: "")
        case .http:
            guard let spec = tool.http else { throw Failure(reason: "invalid_tool", message: "the http tool has no http section") }
            outcome = try await self.http(spec, input: input, timeout: timeout, maxOutputBytes: maxOutputBytes, secret: secret)
        case .python, .node:
            guard let code = tool.code else { throw Failure(reason: "invalid_tool", message: "the tool has no code") }
            outcome = try await self.code(tool.kind, code, input: input, timeout: timeout, maxOutputBytes: maxOutputBytes)
        case .sql:
            guard let spec = tool.sql else { throw Failure(reason: "invalid_tool", message: "the sql tool has no sql section") }
            outcome = try await self.sql(spec, input: input, timeout: timeout, secret: secret)
        case .search:
            guard let spec = tool.search else { throw Failure(reason: "invalid_tool", message: "the search tool has no search section") }
            outcome = try await self.search(spec, input: input, timeout: timeout, maxOutputBytes: maxOutputBytes, project: project)
        case .browser:
            let spec = tool.browser ?? ToolDefinition.Browser()
            let url = try Self.renderURL(spec.url, ["input": input])
            outcome = Outcome(output: try await self.browser.run(spec, url: url, timeout: timeout, maxBytes: maxOutputBytes), logs: "")
        case .mcp:
            guard let spec = tool.mcp else { throw Failure(reason: "invalid_tool", message: "the mcp tool has no mcp section") }
            guard case .map(let fields) = input, case .string(let name) = fields["tool"] else {
                throw Failure(reason: "invalid_request", message: "the input names the server's tool: {\"tool\": …, \"arguments\": {…}}")
            }
            do {
                let output = try await self.mcp.call(spec, tool: name, arguments: fields["arguments"] ?? .map([:]), timeout: timeout, maxBytes: maxOutputBytes, secret: secret)
                outcome = Outcome(output: output, logs: "")
            } catch {
                throw Failure(reason: error.reason, message: error.message, logs: error.logs)
            }
        }
        let size = outcome.output.jsonText.utf8.count
        guard size <= maxOutputBytes else {
            throw Failure(reason: "output_limit", message: "the output is \(size) bytes of JSON, over the cap of \(maxOutputBytes)", logs: outcome.logs)
        }
        return outcome
    }

    // MARK: python, node

    func code(_ kind: ToolDefinition.Kind, _ code: ToolDefinition.Code, input: ExprValue, timeout: Duration, maxOutputBytes: Int) async throws(Failure) -> Outcome {
        let limits = CodeSandbox.Limits(
            memoryMB: code.memoryMB, cpuSeconds: code.cpuSeconds, processes: code.processes, fileMB: code.fileMB,
            timeout: timeout, maxStdout: maxOutputBytes
        )
        let result: CodeSandbox.Output
        do {
            result = try await self.sandbox.run(kind: kind, code: code, input: Array(input.jsonText.utf8), limits: limits)
        } catch {
            throw Failure(reason: error.reason, message: error.message, logs: error.logs)
        }
        let text = String(decoding: result.stdout, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard !text.isEmpty else {
            throw Failure(reason: "invalid_output", message: "the program printed nothing; it must print its output as JSON on stdout", logs: result.logs)
        }
        guard let output = try? ExprValue(jsonText: text) else {
            throw Failure(reason: "invalid_output", message: "stdout is not JSON: \(text.prefix(200).debugDescription)", logs: result.logs)
        }
        return Outcome(output: output, logs: result.logs)
    }

    // MARK: search

    func search(_ spec: ToolDefinition.Search, input: ExprValue, timeout: Duration, maxOutputBytes: Int, project: Project) async throws(Failure) -> Outcome {
        let query = try Self.render(spec.query, ["input": input], field: "search.query").templateText
        switch spec.provider {
        case .documents:
            do {
                let hits = try await project.search(query, spec.collection, spec.limit)
                return Outcome(output: .map(["query": .string(query), "hits": .list(hits)]), logs: "")
            } catch let error as SparkError {
                throw Failure(reason: "invalid_request", message: error.message)
            } catch {
                throw Failure(reason: "search_error", message: "\(error)")
            }
        case .searxng:
            guard var components = URLComponents(string: spec.url) else { throw Failure(reason: "invalid_request", message: "search.url is not a URL") }
            components.queryItems = (components.queryItems ?? []) + [URLQueryItem(name: "q", value: query), URLQueryItem(name: "format", value: "json")]
            let url = components.string ?? spec.url
            let response: GuardedHTTPClient.Response
            do {
                response = try await self.http.send(
                    .init(method: .GET, url: url, headers: [("Accept", "application/json")], body: nil),
                    hosts: [], redirects: 3, maxBytes: max(maxOutputBytes, 1 << 20), timeout: timeout
                )
            } catch {
                switch error {
                case .refused(let refusal): throw Failure(reason: "outbound_refused", message: refusal.message)
                case .hostNotAllowed(let host): throw Failure(reason: "outbound_refused", message: "\(host) is not allowed")
                case .tooLarge(let cap): throw Failure(reason: "output_limit", message: "the search answer is larger than \(cap) bytes")
                case .timeout: throw Failure(reason: "timeout", message: "no answer from the search API within \(timeout)")
                case .tooManyRedirects(let count): throw Failure(reason: "http_error", message: "more than \(count) redirects")
                case .connection(let text): throw Failure(reason: "http_error", message: text)
                }
            }
            guard response.status == 200 else {
                throw Failure(reason: "http_status", message: "the search API answered \(response.status)")
            }
            guard case .map(let answer)? = try? ExprValue(jsonText: String(decoding: response.body, as: UTF8.self)), case .list(let results)? = answer["results"] else {
                throw Failure(reason: "invalid_output", message: "the search API's answer has no results list (is it SearXNG with format=json enabled?)")
            }
            let hits: [ExprValue] = results.prefix(spec.limit).compactMap { result in
                guard case .map(let fields) = result else { return nil }
                return .map([
                    "title": fields["title"] ?? .string(""),
                    "url": fields["url"] ?? .string(""),
                    "snippet": fields["content"] ?? .string(""),
                    "engine": fields["engine"] ?? .string(""),
                    "score": fields["score"] ?? .null,
                ])
            }
            return Outcome(output: .map(["query": .string(query), "hits": .list(hits)]), logs: "")
        }
    }

    // MARK: sql

    func sql(_ spec: ToolDefinition.SQL, input: ExprValue, timeout: Duration, secret: ToolRunner.SecretOpener) async throws(Failure) -> Outcome {
        let environment: [String: ExprValue] = ["input": input]
        var parameters: [ExprValue] = []
        for (index, template) in spec.parameters.enumerated() {
            parameters.append(try Self.render(template, environment, field: "sql.parameters[\(index)]"))
        }
        let connection: String?
        do {
            connection = try await secret(spec.connection, nil)
        } catch {
            throw Failure(reason: "secret_missing", message: "the secret \(spec.connection) cannot be opened: \(error)")
        }
        guard let connection else {
            throw Failure(reason: "secret_missing", message: "the project has no secret named \(spec.connection); set it to the connection string with `sparkops secret set \(spec.connection)`")
        }
        let result = try await self.sql.run(spec, connection: connection, parameters: parameters, timeout: timeout)
        return Outcome(output: .map(["rows": .list(result.rows), "row_count": .int(Int64(result.rows.count)), "truncated": .bool(result.truncated)]), logs: "")
    }

    // MARK: http

    /// Characters a value interpolated into a URL keeps; the rest are percent-encoded.
    static let unreserved = CharacterSet(charactersIn: "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")

    static func render(_ template: String, _ environment: [String: ExprValue], field: String) throws(Failure) -> ExprValue {
        do {
            return try ExprTemplate.parse(template).render(in: environment)
        } catch {
            throw Failure(reason: "invalid_request", message: "\(field): \(error.message)")
        }
    }

    /// The URL with every interpolated value percent-encoded, unless the whole URL is one expression.
    static func renderURL(_ template: String, _ environment: [String: ExprValue]) throws(Failure) -> String {
        let parsed: ExprTemplate
        do {
            parsed = try ExprTemplate.parse(template)
        } catch {
            throw Failure(reason: "invalid_request", message: "http.url: \(error.message)")
        }
        if parsed.parts.count == 1, case .expression = parsed.parts[0] {
            return try Self.render(template, environment, field: "http.url").templateText
        }
        var url = ""
        for part in parsed.parts {
            switch part {
            case .text(let text): url += text
            case .expression(let expr):
                let value: ExprValue
                do {
                    value = try expr.evaluate(in: environment)
                } catch {
                    throw Failure(reason: "invalid_request", message: "http.url: \(error.message)")
                }
                url += value.templateText.addingPercentEncoding(withAllowedCharacters: Self.unreserved) ?? ""
            }
        }
        return url
    }

    /// Every string in `value` rendered as a template.
    static func renderBody(_ value: ExprValue, _ environment: [String: ExprValue]) throws(Failure) -> ExprValue {
        switch value {
        case .string(let text): return try Self.render(text, environment, field: "http.body")
        case .list(let items):
            var rendered: [ExprValue] = []
            for item in items { rendered.append(try Self.renderBody(item, environment)) }
            return .list(rendered)
        case .map(let fields):
            var rendered: [String: ExprValue] = [:]
            for (key, item) in fields { rendered[key] = try Self.renderBody(item, environment) }
            return .map(rendered)
        default: return value
        }
    }

    /// The request header that carries `auth`'s secret.
    static func header(for auth: ToolDefinition.Auth, host: String, secret: ToolRunner.SecretOpener) async throws(Failure) -> (String, String) {
        let value: String?
        do {
            value = try await secret(auth.secret, host)
        } catch let refused as SecretRefused {
            // Nothing is sent: the secret is not the tool's to send there.
            throw Failure(reason: "secret_refused", message: refused.description)
        } catch {
            throw Failure(reason: "secret_missing", message: "the secret \(auth.secret) cannot be opened: \(error)")
        }
        guard let value else { throw Failure(reason: "secret_missing", message: "the project has no secret named \(auth.secret); set it with `sparkops secret set \(auth.secret)`") }
        switch auth.scheme {
        case .bearer: return ("Authorization", "Bearer \(value)")
        case .basic: return ("Authorization", "Basic \(Data(value.utf8).base64EncodedString())")
        case .header: return (auth.header, value)
        }
    }

    func http(
        _ spec: ToolDefinition.HTTP,
        input: ExprValue,
        timeout: Duration,
        maxOutputBytes: Int,
        secret: ToolRunner.SecretOpener
    ) async throws(Failure) -> Outcome {
        let environment: [String: ExprValue] = ["input": input]
        var url = try Self.renderURL(spec.url, environment)
        if !spec.query.isEmpty {
            guard var components = URLComponents(string: url) else { throw Failure(reason: "invalid_request", message: "\(url.debugDescription) is not a URL") }
            var items = components.queryItems ?? []
            for (name, template) in spec.query.sorted(by: { $0.key < $1.key }) {
                let value = try Self.render(template, environment, field: "http.query.\(name)")
                if value != .null { items.append(URLQueryItem(name: name, value: value.templateText)) }
            }
            components.queryItems = items
            components.percentEncodedQuery = components.percentEncodedQuery?.replacingOccurrences(of: "+", with: "%2B")
            url = components.string ?? url
        }
        var headers: [(String, String)] = []
        for (name, template) in spec.headers.sorted(by: { $0.key < $1.key }) {
            let value = try Self.render(template, environment, field: "http.headers.\(name)").templateText
            guard !value.contains(where: { $0 == "\r" || $0 == "\n" || $0 == "\0" }) else {
                throw Failure(reason: "invalid_request", message: "http.headers.\(name): the value holds a line break")
            }
            headers.append((name, value))
        }
        if let auth = spec.auth {
            headers.append(try await Self.header(for: auth, host: URLComponents(string: url)?.host ?? "", secret: secret))
        }
        let method = HTTPMethod(rawValue: spec.method)
        var body: [UInt8]?
        let hasContentType = headers.contains { $0.0.lowercased() == "content-type" }
        if method == .POST || method == .PUT || method == .PATCH || spec.body != nil {
            let payload = try spec.body.map { (value) throws(Failure) -> ExprValue in try Self.renderBody(value, environment) } ?? input
            if case .string(let text) = payload {
                body = Array(text.utf8)
                if !hasContentType { headers.append(("Content-Type", "text/plain; charset=utf-8")) }
            } else {
                body = Array(payload.jsonText.utf8)
                if !hasContentType { headers.append(("Content-Type", "application/json")) }
            }
        }
        if !headers.contains(where: { $0.0.lowercased() == "accept" }) { headers.append(("Accept", "application/json, */*;q=0.5")) }
        let response: GuardedHTTPClient.Response
        do {
            response = try await self.http.send(
                .init(method: method, url: url, headers: headers, body: body, sensitive: spec.auth.map { $0.scheme == .header ? [$0.header] : [] } ?? []),
                hosts: spec.allow, redirects: spec.followRedirects, maxBytes: min(spec.maxResponseBytes, max(maxOutputBytes, 1)), timeout: timeout
            )
        } catch {
            switch error {
            case .refused(let refusal): throw Failure(reason: "outbound_refused", message: refusal.message)
            case .hostNotAllowed(let host): throw Failure(reason: "outbound_refused", message: "\(host) is not among the hosts this tool may reach (http.allow)")
            case .tooLarge(let cap): throw Failure(reason: "output_limit", message: "the response body is larger than \(cap) bytes")
            case .timeout: throw Failure(reason: "timeout", message: "no full response within \(timeout)")
            case .tooManyRedirects(let count): throw Failure(reason: "http_error", message: "more than \(count) redirects")
            case .connection(let text): throw Failure(reason: "http_error", message: text)
            }
        }
        var responseHeaders: [String: ExprValue] = [:]
        for (name, value) in response.headers {
            let key = name.lowercased()
            if case .string(let earlier) = responseHeaders[key] { responseHeaders[key] = .string("\(earlier), \(value)") } else { responseHeaders[key] = .string(value) }
        }
        let contentType = response.headers.first { $0.0.lowercased() == "content-type" }?.1.lowercased() ?? ""
        let text = String(decoding: response.body, as: UTF8.self)
        var bodyValue = ExprValue.string(text)
        if contentType.contains("json"), let parsed = try? ExprValue(jsonText: text) { bodyValue = parsed }
        let output = ExprValue.map(["status": .int(Int64(response.status)), "headers": .map(responseHeaders), "body": bodyValue, "url": .string(response.url)])
        guard response.status < 400 else {
            throw Failure(reason: "http_status", message: "\(spec.method) \(response.url) answered \(response.status)", output: output)
        }
        return Outcome(output: output, logs: "")
    }
}
