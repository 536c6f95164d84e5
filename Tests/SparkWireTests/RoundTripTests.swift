import Foundation
import GRPCCore
import NIOCore
import SparkProto
import SparkTesting
import SparkWire
import SwiftProtobuf
import Testing

@Suite("SparkWire round trips over mutual TLS")
struct RoundTripTests {
    let certificates: TestCertificates

    init() throws {
        self.certificates = try TestCertificates.make()
    }

    @Test("unary call returns the request's text and payload")
    func unary() async throws {
        try await withEchoPair(certificates: self.certificates) { echo, _, _ in
            let response = try await echo.get(.with {
                $0.text = "hello"
                $0.payload = Data([1, 2, 3])
            })
            #expect(response.text == "hello")
            #expect(response.payload == Data([1, 2, 3]))
        }
    }

    @Test("an empty message survives the trip")
    func emptyMessage() async throws {
        try await withEchoPair(certificates: self.certificates) { echo, _, _ in
            let response = try await echo.get(Sparkops_Testing_V1_EchoRequest())
            #expect(response == Sparkops_Testing_V1_EchoResponse())
        }
    }

    @Test("server streaming sends one response per word, in order")
    func serverStreaming() async throws {
        try await withEchoPair(certificates: self.certificates) { echo, _, _ in
            let words = try await echo.expand(.with { $0.text = "alpha beta gamma delta" }) { response in
                var words: [String] = []
                for try await message in response.messages {
                    words.append("\(message.index):\(message.text)")
                }
                return words
            }
            #expect(words == ["0:alpha", "1:beta", "2:gamma", "3:delta"])
        }
    }

    @Test("server streaming past the flow-control window delivers every message")
    func serverStreamingBeyondWindow() async throws {
        try await withEchoPair(certificates: self.certificates) { echo, _, _ in
            let count = try await echo.expand(.with {
                $0.count = 5000
                $0.payload = Data(repeating: 7, count: 256)
            }) { response in
                var count = 0
                var lastIndex: UInt32 = 0
                for try await message in response.messages {
                    #expect(message.index == UInt32(count))
                    lastIndex = message.index
                    count += 1
                }
                #expect(lastIndex == 4999)
                return count
            }
            #expect(count == 5000)
        }
    }

    @Test("client streaming joins what the client sent")
    func clientStreaming() async throws {
        try await withEchoPair(certificates: self.certificates) { echo, _, _ in
            let response = try await echo.collect(
                request: StreamingClientRequest { writer in
                    for index in 0 ..< 300 {
                        try await writer.write(.with { $0.text = "m\(index)" })
                    }
                }
            )
            #expect(response.index == 300)
            #expect(response.text.hasPrefix("m0 m1 m2"))
            #expect(response.text.hasSuffix("m299"))
        }
    }

    @Test("bidirectional streaming answers each message in turn")
    func bidirectional() async throws {
        try await withEchoPair(certificates: self.certificates) { echo, _, _ in
            let (stream, continuation) = AsyncStream.makeStream(of: String.self)
            let answers = try await echo.update(
                request: StreamingClientRequest { writer in
                    // Ping-pong: each message is sent only after the previous answer arrived.
                    try await writer.write(.with { $0.text = "first" })
                    var iterator = stream.makeAsyncIterator()
                    for next in ["second", "third"] {
                        _ = await iterator.next()
                        try await writer.write(.with { $0.text = next })
                    }
                    _ = await iterator.next()
                }
            ) { response in
                var answers: [String] = []
                for try await message in response.messages {
                    answers.append(message.text)
                    continuation.yield(message.text)
                }
                continuation.finish()
                return answers
            }
            #expect(answers == ["first", "second", "third"])
        }
    }

    @Test("the handler sees the caller's certificate identity")
    func identity() async throws {
        try await withEchoPair(certificates: self.certificates) { echo, _, _ in
            let response = try await echo.get(.with { $0.text = "?" }, metadata: ["echo-whoami": "1"])
            #expect(response.text == "client")
        }
    }

    @Test("many concurrent calls share one connection")
    func concurrentCalls() async throws {
        try await withEchoPair(certificates: self.certificates) { echo, server, _ in
            try await withThrowingTaskGroup { group in
                for index in 0 ..< 500 {
                    group.addTask {
                        let response = try await echo.get(.with { $0.text = "call \(index)" })
                        #expect(response.text == "call \(index)")
                    }
                }
                try await group.waitForAll()
            }
            #expect(server.connectionCount == 1)
        }
    }
}
