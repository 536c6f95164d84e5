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

/// The session `sparkops login` saves: `~/.sparkops/credentials.json`, readable by the user only.
struct SavedSession: Codable {
    var url: String
    var accessToken: String
    var refreshToken: String

    static var path: URL {
        let home = ProcessInfo.processInfo.environment["SPARKOPS_CREDENTIALS"].map { URL(filePath: $0) }
        return home ?? FileManager.default.homeDirectoryForCurrentUser.appending(path: ".sparkops/credentials.json")
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

    var description: String {
        "\(self.code) (HTTP \(self.status)): \(self.field.map { "\($0): " } ?? "")\(self.message)"
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

    func call(_ method: HTTPMethod, _ path: String, body: [String: Any]? = nil, authenticated: Bool = true, timeout: TimeAmount = .seconds(30)) async throws -> [String: Any] {
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

    func send(_ method: HTTPMethod, _ path: String, body: [String: Any]?, credential: String?, timeout: TimeAmount = .seconds(30)) async throws -> (Int, [String: Any]) {
        var request = HTTPClientRequest(url: self.options.baseURL + path)
        request.method = method
        if let credential { request.headers.add(name: "Authorization", value: "Bearer \(credential)") }
        if let body {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(data: try JSONSerialization.data(withJSONObject: body)))
        }
        let response: HTTPClientResponse
        do {
            response = try await Self.http.execute(request, timeout: timeout)
        } catch {
            throw APICallError(status: 0, code: "UNAVAILABLE", message: "cannot reach \(self.options.baseURL): \(error)")
        }
        let bytes = try await response.body.collect(upTo: 16 << 20)
        let object = (try? JSONSerialization.jsonObject(with: Data(buffer: bytes))) as? [String: Any] ?? [:]
        return (Int(response.status.code), object)
    }
}

import ArgumentParser
