import AsyncHTTPClient
import Foundation
import NIOCore
import NIOFoundationCompat
import NIOHTTP1

/// How the CLI reaches the gateway and who it is there.
struct ClientOptions: ParsableArguments {
    @Option(help: "The gateway (SPARKOPS_URL; default http://localhost:8000).")
    var url: String?

    @Option(help: "An API key to call with instead of the login session (SPARKOPS_API_KEY).")
    var apiKey: String?

    @Option(help: "json or table.")
    var output: OutputFormat = .table

    var baseURL: String {
        (self.url ?? ProcessInfo.processInfo.environment["SPARKOPS_URL"] ?? "http://localhost:8000").trimmingCharacters(in: CharacterSet(charactersIn: "/"))
    }

    var explicitKey: String? {
        self.apiKey ?? ProcessInfo.processInfo.environment["SPARKOPS_API_KEY"]
    }
}

enum OutputFormat: String, ExpressibleByArgument {
    case json, table
}

/// Where the CLI keeps what it saves: `$XDG_CONFIG_HOME/sparkops` when that is set, otherwise
/// `$HOME/.sparkops` (the user's home from the password database only when `HOME` is unset).
enum CLIFiles {
    static var directory: URL {
        let environment = ProcessInfo.processInfo.environment
        if let xdg = environment["XDG_CONFIG_HOME"], xdg.hasPrefix("/") {
            return URL(filePath: xdg).appending(path: "sparkops")
        }
        if let home = environment["HOME"], !home.isEmpty {
            return URL(filePath: home).appending(path: ".sparkops")
        }
        return FileManager.default.homeDirectoryForCurrentUser.appending(path: ".sparkops")
    }
}

/// The project a command acts on when `--project` is not given: `SPARKOPS_PROJECT`, else the one
/// `sparkops project use NAME` saved (`config.json` beside the session).
enum ProjectDefault {
    static let help: ArgumentHelp = "The project: its name or prj_… id (default: SPARKOPS_PROJECT, or the project `sparkops project use` saved)."

    static var path: URL { CLIFiles.directory.appending(path: "config.json") }

    /// The project to use, or "" when none is set (a call then says how to set one).
    static var current: String { Self.saved ?? "" }

    static var saved: String? {
        if let project = ProcessInfo.processInfo.environment["SPARKOPS_PROJECT"], !project.isEmpty { return project }
        guard let data = try? Data(contentsOf: Self.path),
            let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
            let project = object["project"] as? String, !project.isEmpty
        else { return nil }
        return project
    }

    static func save(_ projectID: String) throws {
        try FileManager.default.createDirectory(at: CLIFiles.directory, withIntermediateDirectories: true)
        let data = try JSONSerialization.data(withJSONObject: ["project": projectID], options: [.sortedKeys])
        guard FileManager.default.createFile(atPath: Self.path.path, contents: data, attributes: [.posixPermissions: 0o600]) else {
            throw APICallError(status: 0, code: "LOCAL", message: "cannot write \(Self.path.path)")
        }
    }
}

/// The session `sparkops login` saves: `credentials.json` in ``CLIFiles/directory``
/// (`~/.sparkops/credentials.json` unless `XDG_CONFIG_HOME` is set), or the file
/// `SPARKOPS_CREDENTIALS` names; readable by the user only.
struct SavedSession: Codable {
    var url: String
    var accessToken: String
    var refreshToken: String

    static var path: URL {
        let explicit = ProcessInfo.processInfo.environment["SPARKOPS_CREDENTIALS"].flatMap { $0.isEmpty ? nil : URL(filePath: $0) }
        return explicit ?? CLIFiles.directory.appending(path: "credentials.json")
    }

    static func load() -> SavedSession? {
        guard let data = try? Data(contentsOf: self.path) else { return nil }
        return try? JSONDecoder().decode(SavedSession.self, from: data)
    }

    func save() throws {
        let directory = Self.path.deletingLastPathComponent()
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let data = try JSONEncoder().encode(self)
        guard FileManager.default.createFile(atPath: Self.path.path, contents: data, attributes: [.posixPermissions: 0o600]) else {
            throw APICallError(status: 0, code: "LOCAL", message: "cannot write the session to \(Self.path.path)")
        }
    }

    static func remove() {
        try? FileManager.default.removeItem(at: self.path)
    }
}

/// A failed API call, as the gateway explained it.
struct APICallError: Error, CustomStringConvertible {
    var status: Int
    var code: String
    var message: String
    /// The request field the error is about, when the gateway named one.
    var field: String? = nil

    /// The API's names of fields a command takes under another option name.
    static let optionNames = ["createdAfter": "--since", "created_after": "--since"]

    var description: String {
        // The field once: the gateway's message starts with it already when it names one.
        var message = self.message
        var field = self.field
        if let named = field, let option = Self.optionNames[named] {
            if message.hasPrefix(named + ":") { message = option + message.dropFirst(named.count) }
            field = option
        }
        let prefix = field.map { message.hasPrefix($0 + ":") ? "" : "\($0): " } ?? ""
        return "\(self.code) (HTTP \(self.status)): \(prefix)\(message)"
    }
}

/// Calls the gateway's HTTP/JSON API, refreshing the saved session once when its access token expired.
struct APIClient {
    let options: ClientOptions

    /// Fails fast when the gateway is down: one connection attempt, bounded by 5 s, instead of
    /// retrying until the request's deadline. Lives as long as the process.
    static let http: HTTPClient = {
        var configuration = HTTPClient.Configuration()
        configuration.timeout.connect = .seconds(5)
        configuration.connectionPool.retryConnectionEstablishment = false
        return HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: configuration)
    }()

    func call(_ method: HTTPMethod, _ given: String, body: [String: Any]? = nil, authenticated: Bool = true, timeout: TimeAmount = .seconds(30)) async throws -> [String: Any] {
        let path = try await self.resolvingProject(in: given)
        var session = SavedSession.load()
        if authenticated && self.options.explicitKey == nil && session == nil {
            throw APICallError(status: 401, code: "UNAUTHENTICATED", message: "not logged in: run `sparkops login` or pass --api-key")
        }
        let credential = self.options.explicitKey ?? session?.accessToken
        var (status, object) = try await self.send(method, path, body: body, credential: authenticated ? credential : nil, timeout: timeout)
        if status == 401, authenticated, self.options.explicitKey == nil, let saved = session {
            // The access token expired: trade the refresh token for a new session, once.
            let (refreshStatus, refreshed) = try await self.send(.POST, "/api/v1/auth/refresh", body: ["refreshToken": saved.refreshToken], credential: nil)
            if refreshStatus == 200, let access = refreshed["accessToken"] as? String, let refresh = refreshed["refreshToken"] as? String {
                session = SavedSession(url: saved.url, accessToken: access, refreshToken: refresh)
                try session!.save()
                (status, object) = try await self.send(method, path, body: body, credential: access, timeout: timeout)
            }
        }
        guard (200 ..< 300).contains(status) else {
            let error = object["error"] as? [String: Any]
            let details = error?["details"] as? [[String: Any]] ?? []
            throw APICallError(
                status: status,
                code: error?["code"] as? String ?? "HTTP_\(status)",
                message: error?["message"] as? String ?? "",
                field: details.lazy.compactMap { $0["field"] as? String }.first
            )
        }
        return object
    }

    /// A path under `/api/v1/projects/<project>` with the project as a name (or none at all)
    /// turned into its id: commands take `--project` as a name or an id.
    func resolvingProject(in path: String) async throws -> String {
        let prefix = "/api/v1/projects/"
        guard path.hasPrefix(prefix) else { return path }
        let rest = path.dropFirst(prefix.count)
        let segment = String(rest.prefix { $0 != "/" && $0 != "?" })
        if segment.hasPrefix("prj_") { return path }
        guard !segment.isEmpty else {
            throw APICallError(status: 0, code: "INVALID_ARGUMENT", message: "no project: pass --project NAME, set SPARKOPS_PROJECT, or run `sparkops project use NAME`", field: "project")
        }
        let id = try await self.projectID(named: segment.removingPercentEncoding ?? segment)
        return prefix + id + rest.dropFirst(segment.count)
    }

    /// The id of the caller's project named `name`.
    func projectID(named name: String) async throws -> String {
        if name.hasPrefix("prj_") { return name }
        var token = ""
        repeat {
            let page = try await self.call(.GET, "/api/v1/projects?page_size=500" + (token.isEmpty ? "" : "&page_token=\(token)"))
            if let found = (page["projects"] as? [[String: Any]] ?? []).first(where: { $0["name"] as? String == name }), let id = found["id"] as? String {
                return id
            }
            token = page["nextPageToken"] as? String ?? ""
        } while !token.isEmpty
        throw APICallError(status: 404, code: "NOT_FOUND", message: "you have no project named \(name.debugDescription) (`sparkops project list` shows yours)", field: "project")
    }

    func send(_ method: HTTPMethod, _ path: String, body: [String: Any]?, credential: String?, timeout: TimeAmount = .seconds(30)) async throws -> (Int, [String: Any]) {
        var request = HTTPClientRequest(url: self.options.baseURL + path)
        request.method = method
        if let credential { request.headers.add(name: "Authorization", value: "Bearer \(credential)") }
        if let body {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(data: CLIJSON.data(body)))
        }
        let response: HTTPClientResponse
        do {
            response = try await Self.http.execute(request, timeout: timeout)
        } catch {
            throw APICallError(status: 0, code: "UNAVAILABLE", message: "cannot reach \(self.options.baseURL): \(error)")
        }
        let bytes = try await response.body.collect(upTo: 16 << 20)
        let object = (try? CLIJSON.parse(bytes.readableBytesView)) as? [String: Any] ?? [:]
        return (Int(response.status.code), object)
    }
}

import ArgumentParser
