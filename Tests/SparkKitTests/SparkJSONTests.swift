import Foundation
import SparkExpr
import SparkKit
import SparkProto
import SwiftProtobuf
import Testing

/// SparkOps' JSON form of messages: free-form JSON fields spliced in and out of protobuf's JSON
/// mapping, byte for byte.
@Suite("SparkJSON splicing")
struct SparkJSONTests {
    static let inputs = #"""
        {"id": 9007199254740993, "big": 123456789012345678901234567890, "neg": -0, "far": 1e400, "price": 1.50,
         "deep": [[[[{"n": 18446744073709551617}]]]], "text": "ünï 😀 \"q\" \u00e9"}
        """#

    @Test("a request's JSON fields take any JSON value, passed on as its text exactly; the rest is protobuf's mapping")
    func wrap() throws {
        let body = #"{"workflow": "numbers", "inputs": \#(Self.inputs), "idempotencyKey": "k"}"#
        let wrapped = try SparkJSON.wrap(Array(body.utf8), shape: Sparkops_Run_V1_CreateRunRequest.sparkJSONShape)
        let request = try Sparkops_Run_V1_CreateRunRequest(jsonUTF8Bytes: wrapped)
        // What the gateway reads next: Foundation's reader takes the wrapped body.
        #expect((try? JSONSerialization.jsonObject(with: Data(wrapped))) != nil, "\(String(decoding: wrapped, as: UTF8.self))")
        #expect(request.workflow == "numbers")
        #expect(request.idempotencyKey == "k")
        #expect(request.inputs.text == Self.inputs)
        // Both spellings of a field name, nested messages and lists of them.
        let run = #"{"run": {"id": "run_1", "inputs": {"a": 1.0}, "steps": [{"id": "s", "output": [1, 2E3]}, {"id": "t", "output": null}]}}"#
        let response = try Sparkops_Run_V1_CreateRunResponse(sparkJSON: run)
        #expect(response.run.inputs.text == #"{"a": 1.0}"#)
        #expect(response.run.steps.map(\.output.text) == ["[1, 2E3]", "null"])
        #expect(try response.sparkJSONString() == #"{"run":{"id":"run_1","inputs":{"a": 1.0},"steps":[{"id":"s","output":[1, 2E3]},{"id":"t","output":null}]}}"#)
        let policy = try Sparkops_Policy_V1_EvaluateRequest(sparkJSON: #"{"context": {"tool": {"arguments": {"n": 12345678901234567890}}}}"#)
        #expect(policy.context.tool.arguments.text == #"{"n": 12345678901234567890}"#)
        let snake = try Sparkops_Agent_V1_AgentExecution(sparkJSON: #"{"tool_calls": [{"arguments": -0}]}"#)
        #expect(snake.toolCalls.first?.arguments.text == "-0")
    }

    @Test("a response's JSON fields are spliced in as the text; an empty one is null; text that is not JSON is refused")
    func unwrap() throws {
        var run = Sparkops_Run_V1_Run()
        run.id = "run_1"
        run.inputs = Sparkops_Common_V1_Json(try ExprValue(jsonText: Self.inputs))
        run.outputs = .init()
        let text = try Sparkops_Run_V1_CreateRunResponse.with { $0.run = run }.sparkJSONString()
        #expect(text.contains(#""inputs":{"big":123456789012345678901234567890,"deep":[[[[{"n":18446744073709551617}]]]],"far":1e400,"id":9007199254740993,"neg":-0,"price":1.50,"text":"ünï 😀 \"q\" é"}"#), "\(text)")
        #expect(text.contains(#""outputs":null"#), "\(text)")
        run.outputs.text = "{\"a\": "
        #expect(throws: SparkJSON.Failure.self) { try Sparkops_Run_V1_CreateRunResponse.with { $0.run = run }.sparkJSONString() }
    }

    @Test("broken JSON and nesting past 512 are refused, naming where")
    func refusals() throws {
        let shape = Sparkops_Run_V1_CreateRunRequest.sparkJSONShape
        for body in [#"{"inputs": {"a": 01}}"#, #"{"inputs": [1,]}"#, #"{"inputs": 1e}"#, #"{"inputs": "\ud800"}"#, #"{"inputs": NaN}"#, #"{"inputs": {}} x"#, #"{"inputs" 1}"#] {
            #expect(throws: SparkJSON.Failure.self, "\(body)") { try SparkJSON.wrap(Array(body.utf8), shape: shape) }
        }
        do {
            _ = try SparkJSON.wrap(Array(#"{"inputs": {"a": [1, tru]}}"#.utf8), shape: shape)
        } catch {
            #expect(error.field == "inputs")
        }
        let deep = #"{"inputs": "# + String(repeating: "[", count: 600) + String(repeating: "]", count: 600) + "}"
        #expect(throws: SparkJSON.Failure.self) { try SparkJSON.wrap(Array(deep.utf8), shape: shape) }
    }
}
