import AsyncHTTPClient
public import Foundation
import NIOCore
import SparkExpr
import NIOFoundationCompat
public import NIOHTTP1

/// A small HTTP client for tests: real requests over loopback, JSON in and out.
public struct HTTPTestClient: Sendable {
    public struct Reply: Sendable {
        public var status: Int
        public var headers: HTTPHeaders
        public var text: String

        /// The body as a JSON object (empty when it is not one). A number Foundation cannot read
        /// (`1e400`) or would round is its text, a `String`; read ``text`` to see numbers as sent.
        public var json: [String: Any] { Self.object(self.text) }

        /// JSON text as an object, as ``json`` reads it (empty when it is not one).
        public static func object(_ text: String) -> [String: Any] {
            if let object = (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any] { return object }
            return (try? ExprValue(jsonText: text)).map(Self.foundation) as? [String: Any] ?? [:]
        }

        static func foundation(_ value: ExprValue) -> Any {
            switch value {
            case .null: return NSNull()
            case .bool(let flag): return flag
            case .int(let number): return Int(number)
            case .double(let number): return number
            case .number(let text): return text
            case .string(let text): return text
            case .list(let items): return items.map(Self.foundation)
            case .map(let fields): return fields.mapValues(Self.foundation)
            }
        }

        /// `error.code` of an error body.
        public var errorCode: String? { (self.json["error"] as? [String: Any])?["code"] as? String }
        public var errorMessage: String? { (self.json["error"] as? [String: Any])?["message"] as? String }
        public var errorField: String? {
            ((self.json["error"] as? [String: Any])?["details"] as? [[String: Any]])?.first?["field"] as? String
        }
    }

    public let baseURL: String

    public init(baseURL: String) {
        self.baseURL = baseURL
    }

    public func send(
        _ method: HTTPMethod,
        _ path: String,
        token: String? = nil,
        json: [String: Any]? = nil,
        body: String? = nil,
        headers: [(String, String)] = []
    ) async throws -> Reply {
        var request = HTTPClientRequest(url: self.baseURL + path)
        request.method = method
        if let token { request.headers.add(name: "Authorization", value: "Bearer \(token)") }
        for (name, value) in headers { request.headers.add(name: name, value: value) }
        if let json {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(data: try JSONSerialization.data(withJSONObject: json)))
        } else if let body {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(string: body))
        }
        // Generous: on a loaded 2-core machine an agent step of several calls has taken over 30 s.
        // A request that hangs still fails, after two minutes.
        let response = try await HTTPClient.shared.execute(request, timeout: .seconds(120))
        let bytes = try await response.body.collect(upTo: 32 << 20)
        return Reply(status: Int(response.status.code), headers: response.headers, text: String(buffer: bytes))
    }
}
