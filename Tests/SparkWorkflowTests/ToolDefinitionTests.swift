import Foundation
import SparkExpr
import SparkWorkflow
import Testing

@Suite("Tool definitions and JSON Schema")
struct ToolDefinitionTests {
    @Test("an http tool reads with its defaults, and equivalent YAML and JSON hash the same")
    func http() throws {
        let yaml = """
            tool: fetch
            kind: http
            side_effects: idempotent
            input_schema: { type: object, properties: { path: { type: string } }, required: [path] }
            http:
              url: "https://api.example.com/${{ input.path }}"
              headers: { X-Team: "ops" }
              auth: { secret: token }
            """
        let tool = try ToolDefinition.read(yaml)
        #expect(tool.kind == .http)
        #expect(tool.sideEffects == .idempotent)
        #expect(tool.http?.method == "GET")
        #expect(tool.http?.auth?.scheme == .bearer)
        #expect(tool.http?.maxResponseBytes == 1 << 20)
        #expect(tool.timeout == .seconds(30))
        let json = #"{"http": {"auth": {"secret": "token", "scheme": "bearer"}, "headers": {"X-Team": "ops"}, "method": "get", "url": "https://api.example.com/${{ input.path }}"}, "input_schema": {"properties": {"path": {"type": "string"}}, "required": ["path"], "type": "object"}, "kind": "http", "side_effects": "idempotent", "tool": "fetch", "timeout": "30000ms"}"#
        #expect(try ToolDefinition.read(json).contentHash == tool.contentHash)
        #expect(try ToolDefinition.read(yaml + "\ncost_micros: 5").contentHash != tool.contentHash)
    }

    @Test("problems carry line, column and field", arguments: [
        ("tool: x\nkind: echo\ncolour: red", "3:1 colour"),
        ("tool: x\nkind: http\nside_effects: none\nhttp: { url: \"https://x/${{ inputs.a }}\" }", "4:29 http.url"),
        ("tool: x\nkind: python\nside_effects: none\npython:\n  code: print(1)\n  limits: { cpu_seconds: 0 }", "6:26 python.limits.cpu_seconds"),
        ("tool: x\nkind: node\nside_effects: none\nnode: { code: 'x', packages: ['a b'] }", "4:32 node.packages[0]"),
        ("tool: x\nkind: echo\ninput_schema: { type: object, properties: { a: { type: strin } } }", "3:56 input_schema.properties.a.type"),
        ("tool: x\nkind: http\nside_effects: none\nhttp: { url: 'https://x', method: GET, body: { a: 1 } }", "4:46 http.body"),
        ("tool: x\nkind: http\nside_effects: none\nhttp: { url: 'https://x', headers: { Host: evil } }", "4:44 http.headers.Host"),
        ("kind: echo", "1:1 tool"),
        ("tool: apply\nkind: echo", "1:7 tool"),
        ("tool: tool_0123\nkind: echo", "1:7 tool"),
        ("tool: x\nkind: python\npython: { code: 'x' }", "1:1 side_effects"),
    ])
    func problems(source: String, expected: String) {
        do {
            _ = try ToolDefinition.read(source)
            Issue.record("\(source) was accepted")
        } catch {
            let found = error.problems.map { "\($0.line):\($0.column) \($0.field)" }
            #expect(found.contains(expected), "\(error.problems)")
        }
    }

    static let schema: ExprValue = .map([
        "type": .string("object"),
        "properties": .map([
            "name": .map(["type": .string("string"), "minLength": .int(1), "pattern": .string("^[a-z]+$")]),
            "tags": .map(["type": .string("array"), "items": .map(["type": .string("string")]), "maxItems": .int(2), "uniqueItems": .bool(true)]),
            "size": .map(["type": .string("integer"), "minimum": .int(1), "maximum": .int(10)]),
            "mode": .map(["enum": .list([.string("fast"), .string("slow")])]),
            "id": .map(["anyOf": .list([.map(["type": .string("string")]), .map(["type": .string("integer")])])]),
        ]),
        "required": .list([.string("name")]),
        "additionalProperties": .bool(false),
    ])

    @Test("instances are checked with a path to each problem", arguments: [
        (#"{"name": "ada"}"#, [String]()),
        (#"{"name": "ada", "size": 3.0, "id": 7}"#, []),
        (#"{}"#, ["input.name"]),
        (#"{"name": "Ada"}"#, ["input.name"]),
        (#"{"name": "ada", "tags": ["a", 1, "a"]}"#, ["input.tags", "input.tags[2]", "input.tags[1]"]),
        (#"{"name": "ada", "size": 11}"#, ["input.size"]),
        (#"{"name": "ada", "size": 2.5}"#, ["input.size"]),
        (#"{"name": "ada", "mode": "medium"}"#, ["input.mode"]),
        (#"{"name": "ada", "id": true}"#, ["input.id"]),
        (#"{"name": "ada", "nmae": 1}"#, ["input.nmae"]),
        (#"[1]"#, ["input"]),
    ])
    func instances(json: String, paths: [String]) throws {
        let schema = try JSONSchema(Self.schema)
        let problems = schema.problems(try ExprValue(jsonText: json))
        #expect(Set(problems.map(\.path)) == Set(paths), "\(problems)")
    }

    @Test("a schema with keywords SparkOps does not check is refused, not half-honoured")
    func unknownKeywords() {
        for bad: ExprValue in [
            .map(["$ref": .string("#/defs/x")]),
            .map(["type": .string("objekt")]),
            .map(["properties": .list([])]),
            .map(["pattern": .string("(")]),
            .map(["minLength": .int(-1)]),
            .string("object"),
        ] {
            #expect(throws: JSONSchemaError.self) { _ = try JSONSchema(bad) }
        }
    }
}
