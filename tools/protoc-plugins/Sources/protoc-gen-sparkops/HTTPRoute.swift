import SwiftProtobuf
import SwiftProtobufPluginLibrary

/// One RPC exposed over HTTP, read from its `(sparkops.api.v1.http)` option.
struct HTTPRoute {
    enum Verb: String { case get = "GET", post = "POST", put = "PUT", patch = "PATCH", delete = "DELETE" }

    enum QueryKind: String { case string, integer, boolean, enumeration }

    let method: MethodDescriptor
    let rule: Sparkops_Api_V1_HttpRule
    let verb: Verb
    let path: String
    /// `{segment}` names in the path and the request fields they fill.
    let pathFields: [FieldDescriptor]
    /// Request fields a query parameter may fill (routes without a body).
    let queryFields: [(field: FieldDescriptor, kind: QueryKind)]
    /// The service's short name: `project` for `sparkops.project.v1.ProjectService`.
    let serviceName: String

    var hasBody: Bool { self.rule.body == "*" }

    static func collect(from services: [ServiceDescriptor]) throws -> [HTTPRoute] {
        var routes: [HTTPRoute] = []
        var seen: Set<String> = []
        for service in services {
            for method in service.methods where method.options.hasSparkops_Api_V1_http {
                let route = try HTTPRoute(method: method, rule: method.options.Sparkops_Api_V1_http)
                let key = "\(route.verb.rawValue) \(route.path)"
                guard seen.insert(key).inserted else {
                    throw PluginError(description: "\(method.fullName): route \(key) is declared twice")
                }
                routes.append(route)
            }
        }
        return routes
    }

    init(method: MethodDescriptor, rule: Sparkops_Api_V1_HttpRule) throws {
        self.method = method
        self.rule = rule
        guard !method.clientStreaming && !method.serverStreaming else {
            throw PluginError(description: "\(method.fullName): only unary methods can have an HTTP route")
        }
        switch rule.pattern {
        case .get(let path): (self.verb, self.path) = (.get, path)
        case .post(let path): (self.verb, self.path) = (.post, path)
        case .put(let path): (self.verb, self.path) = (.put, path)
        case .patch(let path): (self.verb, self.path) = (.patch, path)
        case .delete(let path): (self.verb, self.path) = (.delete, path)
        case .none: throw PluginError(description: "\(method.fullName): the http option names no verb and path")
        }
        guard rule.body == "" || rule.body == "*" else {
            throw PluginError(description: "\(method.fullName): body must be \"*\" or empty")
        }
        if rule.body == "*" && (self.verb == .get || self.verb == .delete) {
            throw PluginError(description: "\(method.fullName): \(self.verb.rawValue) routes take no body")
        }
        let input = method.inputType!
        if self.verb == .patch {
            guard rule.body == "*",
                let mask = input.fields.first(where: { $0.name == "update_mask" }), mask.type == .string, mask.isRepeated
            else {
                throw PluginError(description: "\(method.fullName): a PATCH route takes body \"*\" and its request needs `repeated string update_mask`")
            }
        }
        var pathFields: [FieldDescriptor] = []
        for segment in self.path.split(separator: "/") where segment.hasPrefix("{") {
            guard segment.hasSuffix("}") else {
                throw PluginError(description: "\(method.fullName): malformed path segment \(segment)")
            }
            let name = String(segment.dropFirst().dropLast())
            guard let field = input.fields.first(where: { $0.name == name }), field.type == .string, !field.isRepeated else {
                throw PluginError(description: "\(method.fullName): path field {\(name)} is not a string field of \(input.fullName)")
            }
            pathFields.append(field)
        }
        self.pathFields = pathFields
        var queryFields: [(FieldDescriptor, QueryKind)] = []
        if rule.body.isEmpty {
            for field in input.fields where !pathFields.contains(where: { $0 === field }) && !field.isRepeated {
                switch field.type {
                case .string: queryFields.append((field, .string))
                case .int32, .int64, .uint32, .uint64, .sint32, .sint64: queryFields.append((field, .integer))
                case .bool: queryFields.append((field, .boolean))
                case .enum: queryFields.append((field, .enumeration))
                default: continue
                }
            }
        }
        self.queryFields = queryFields
        let package = method.service.file.package.split(separator: ".")
        self.serviceName = package.count >= 2 ? String(package[1]) : method.service.name
    }

    /// The method's name in lower camel case, as the OpenAPI operation id.
    var operationID: String {
        let name = self.method.name
        return name.prefix(1).lowercased() + name.dropFirst()
    }
}

extension FieldDescriptor {
    /// The JSON name protobuf's canonical mapping uses.
    var canonicalJSONName: String {
        if let jsonName = self.jsonName, !jsonName.isEmpty { return jsonName }
        var out = ""
        var upper = false
        for character in self.name {
            if character == "_" {
                upper = true
            } else {
                out.append(upper ? Character(character.uppercased()) : character)
                upper = false
            }
        }
        return out
    }
}
