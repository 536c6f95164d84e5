import Foundation
import SwiftProtobuf
import SwiftProtobufPluginLibrary

/// Renders the OpenAPI 3.1 document of the HTTP routes: paths from the route table, schemas from
/// the messages following protobuf's canonical JSON mapping (lowerCamelCase names, int64 as string,
/// enums as their names, Timestamp as RFC 3339).
struct OpenAPIWriter {
    let routes: [HTTPRoute]

    func render() throws -> String {
        var schemas: [String: Any] = [:]
        var pending: [Descriptor] = []
        var visited: Set<String> = []
        func reference(_ message: Descriptor) -> [String: Any] {
            if let known = Self.wellKnown(message.fullName) { return known }
            if visited.insert(message.fullName).inserted { pending.append(message) }
            return ["$ref": "#/components/schemas/\(message.fullName)"]
        }

        var paths: [String: [String: Any]] = [:]
        for route in self.routes {
            var operation: [String: Any] = [
                "operationId": route.operationID,
                "summary": route.rule.summary,
                "tags": [route.serviceName],
                "x-sparkops-rpc": "/\(route.method.service.fullName)/\(route.method.name)",
            ]
            if !route.rule.permission.isEmpty {
                operation["x-sparkops-permission"] = route.rule.permission
            }
            if route.rule.adminOnly {
                operation["x-sparkops-admin-only"] = true
            }
            var parameters: [[String: Any]] = route.pathFields.map {
                ["name": $0.name, "in": "path", "required": true, "schema": ["type": "string"]]
            }
            for (field, _) in route.queryFields {
                parameters.append(["name": field.name, "in": "query", "required": false, "schema": self.schema(for: field, reference: reference)])
            }
            if !parameters.isEmpty { operation["parameters"] = parameters }
            if route.hasBody {
                operation["requestBody"] = [
                    "required": true,
                    "description": "Content-Type: application/json (otherwise 415). A missing body is 400.",
                    "content": ["application/json": ["schema": reference(route.method.inputType)]],
                ]
                if route.rule.callTimeoutSeconds > 0 {
                    operation["x-sparkops-call-timeout-seconds"] = Int(route.rule.callTimeoutSeconds)
                }
                if route.rule.maxBodyBytes > 0 {
                    operation["x-sparkops-max-body-bytes"] = Int(route.rule.maxBodyBytes)
                }
            }
            if route.verb == .patch {
                operation["description"] = "Changes only the fields the body names, or those listed in `updateMask` (AIP-134); `{}` changes nothing."
            }
            let status = route.rule.successStatus == 0 ? 200 : Int(route.rule.successStatus)
            operation["responses"] = [
                "\(status)": [
                    "description": "Success",
                    "content": ["application/json": ["schema": reference(route.method.outputType)]],
                ],
                "default": [
                    "description": "An error: the status follows the gRPC code (400 INVALID_ARGUMENT, 401 UNAUTHENTICATED, 403 PERMISSION_DENIED, 404 NOT_FOUND, 409 ALREADY_EXISTS, 429 RESOURCE_EXHAUSTED, …)",
                    "content": ["application/json": ["schema": ["$ref": "#/components/schemas/Error"]]],
                ],
            ]
            operation["security"] = route.rule.public ? [] as [Any] : [["bearer": [] as [Any]]]
            let path = route.path
            paths[path, default: [:]][route.verb.rawValue.lowercased()] = operation
        }

        while let message = pending.popLast() {
            var properties: [String: Any] = [:]
            for field in message.fields {
                var schema = self.schema(for: field, reference: reference)
                if field.realContainingOneof != nil {
                    schema["description"] = "One of \(field.realContainingOneof!.name)."
                }
                properties[field.canonicalJSONName] = schema
            }
            schemas[message.fullName] = ["type": "object", "properties": properties, "additionalProperties": false]
        }
        Self.addGatewayEndpoints(to: &paths, schemas: &schemas)
        schemas["Error"] = [
            "type": "object",
            "required": ["error"],
            "properties": [
                "error": [
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": [
                        "code": ["type": "string", "examples": ["NOT_FOUND"]],
                        "message": ["type": "string"],
                        "details": ["type": "array", "items": ["type": "object"]],
                    ],
                ]
            ],
        ]

        let document: [String: Any] = [
            "openapi": "3.1.0",
            "info": [
                "title": "SparkOps API",
                "version": "1",
                "description": "HTTP/JSON API of the SparkOps gateway. Authenticate with `Authorization: Bearer <access token or API key>`. Request bodies are `application/json` (415 otherwise); unknown JSON fields are rejected with 400; a known path with another method gets 405 and `Allow`; every 429 carries `Retry-After`. Error `field` names are the JSON (lowerCamelCase) names.",
            ],
            "paths": paths,
            "components": [
                "schemas": schemas,
                "securitySchemes": [
                    "bearer": ["type": "http", "scheme": "bearer", "description": "A JWT access token from /api/v1/auth/login, or an API key (spk_…)"]
                ],
            ],
        ]
        let data = try JSONSerialization.data(withJSONObject: document, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
        return String(decoding: data, as: UTF8.self) + "\n"
    }

    /// The endpoints the gateway serves itself, not from an RPC: WebSocket tickets and the socket.
    /// OpenAPI has no WebSocket operation; the socket is described as its upgrade `GET`, and its
    /// messages as schemas (`x-sparkops-websocket` names which way each travels).
    private static func addGatewayEndpoints(to paths: inout [String: [String: Any]], schemas: inout [String: Any]) {
        let error: [String: Any] = [
            "description": "An error",
            "content": ["application/json": ["schema": ["$ref": "#/components/schemas/Error"]]],
        ]
        paths["/api/v1/ws/tickets"] = [
            "post": [
                "operationId": "createWebSocketTicket",
                "summary": "A single-use ticket (valid 30 s) to open /api/v1/ws from a browser",
                "tags": ["gateway"],
                "security": [["bearer": [] as [Any]]],
                "responses": [
                    "201": [
                        "description": "The ticket; pass it as /api/v1/ws?ticket=…",
                        "content": ["application/json": ["schema": ["$ref": "#/components/schemas/sparkops.gateway.WebSocketTicket"]]],
                    ],
                    "default": error,
                ],
            ]
        ]
        paths["/api/v1/ws"] = [
            "get": [
                "operationId": "openWebSocket",
                "summary": "Live events over WebSocket",
                "description": """
                    Upgrade to a WebSocket. Authenticate with `?ticket=` (from POST /api/v1/ws/tickets) or, \
                    from a client that is not a browser, with an `auth` message first, within \
                    `gateway.webSocketAuthTimeoutSeconds`. Credentials never go in the URL. A browser's \
                    Origin must be one of `gateway.corsOrigins`. A refused handshake gets an `error` message \
                    and close code 1008. Client messages: WebSocketClientMessage; server messages: \
                    WebSocketServerMessage.
                    """,
                "tags": ["gateway"],
                "parameters": [["name": "ticket", "in": "query", "required": false, "schema": ["type": "string"]]],
                "security": [] as [Any],
                "responses": ["101": ["description": "Switching Protocols: the socket is open"], "default": error],
                "x-sparkops-websocket": [
                    "client": ["$ref": "#/components/schemas/sparkops.gateway.WebSocketClientMessage"],
                    "server": ["$ref": "#/components/schemas/sparkops.gateway.WebSocketServerMessage"],
                ],
            ]
        ]
        schemas["sparkops.gateway.WebSocketTicket"] = [
            "type": "object",
            "required": ["ticket", "expireTime"],
            "properties": ["ticket": ["type": "string", "pattern": "^wst_"], "expireTime": ["type": "string", "format": "date-time"]],
        ]
        let topic: [String: Any] = ["type": "string", "enum": ["runs", "approvals"]]
        let project: [String: Any] = ["type": "string", "pattern": "^prj_"]
        func message(_ type: String, _ properties: [String: Any] = [:], required: [String] = []) -> [String: Any] {
            var all = properties
            all["type"] = ["const": type]
            return ["type": "object", "required": ["type"] + required, "properties": all]
        }
        schemas["sparkops.gateway.WebSocketClientMessage"] = [
            "x-sparkops-websocket": "client to server",
            "oneOf": [
                message("auth", ["token": ["type": "string", "description": "An access token or API key"]], required: ["token"]),
                message("subscribe", ["topic": topic, "projectId": project], required: ["topic", "projectId"]),
                message("unsubscribe", ["topic": topic, "projectId": project], required: ["topic", "projectId"]),
                message("ping"),
            ],
        ]
        schemas["sparkops.gateway.WebSocketServerMessage"] = [
            "x-sparkops-websocket": "server to client",
            "oneOf": [
                message("ready"),
                message("subscribed", ["topic": topic, "projectId": project]),
                message("unsubscribed"),
                message("pong"),
                message("error", ["code": ["type": "string"], "message": ["type": "string"], "field": ["type": "string"]], required: ["code", "message"]),
            ],
        ]
    }

    private func schema(for field: FieldDescriptor, reference: (Descriptor) -> [String: Any]) -> [String: Any] {
        if field.isMap, let (_, value) = field.messageType.mapKeyAndValue {
            return ["type": "object", "additionalProperties": self.scalarSchema(value, reference: reference)]
        }
        let item = self.scalarSchema(field, reference: reference)
        return field.isRepeated ? ["type": "array", "items": item] : item
    }

    private func scalarSchema(_ field: FieldDescriptor, reference: (Descriptor) -> [String: Any]) -> [String: Any] {
        switch field.type {
        case .string: return ["type": "string"]
        case .bytes: return ["type": "string", "contentEncoding": "base64"]
        case .bool: return ["type": "boolean"]
        case .int32, .sint32, .sfixed32: return ["type": "integer", "format": "int32"]
        case .uint32, .fixed32: return ["type": "integer", "format": "int64", "minimum": 0]
        case .int64, .sint64, .sfixed64, .uint64, .fixed64: return ["type": "string", "format": "int64", "pattern": "^-?[0-9]+$"]
        case .double, .float: return ["type": "number"]
        case .enum: return ["type": "string", "enum": field.enumType.values.map(\.name)]
        case .message, .group: return reference(field.messageType)
        }
    }

    private static func wellKnown(_ name: String) -> [String: Any]? {
        switch name {
        case "google.protobuf.Timestamp": return ["type": "string", "format": "date-time"]
        case "google.protobuf.Duration": return ["type": "string", "pattern": "^-?[0-9]+(\\.[0-9]+)?s$"]
        // Free-form JSON: any JSON value, kept as sent (the gateway splices the text in).
        case "sparkops.common.v1.Json": return ["description": "Any JSON value, kept exactly as sent: integers of any size, decimals as written."]
        case "google.protobuf.FieldMask": return ["type": "string"]
        case "google.protobuf.Empty": return ["type": "object"]
        default: return nil
        }
    }
}
