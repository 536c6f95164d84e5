import GRPCCore
import Logging
import NIOCore
import NIOPosix
import SparkKit
import SparkProto
import SparkTesting
import SparkWire
import SwiftProtobuf
import Synchronization
import Testing

/// SparkWire's lean unary path against GRPCCore's executors: every scenario runs on both paths and
/// must give the caller the same answer.
@Suite("Lean unary path")
struct LeanUnaryTests {
    let certificates: TestCertificates

    init() throws {
        self.certificates = try TestCertificates.make()
    }

    /// What a caller can observe of one unary call.
    struct Outcome: Equatable, CustomStringConvertible {
        var text: String?
        var initial: [String]
        var trailing: [String]
        var code: RPCError.Code?
        var message: String?
        var errorMetadata: [String]

        var description: String {
            "text=\(self.text ?? "-") initial=\(self.initial) trailing=\(self.trailing) code=\(self.code.map { "\($0)" } ?? "-") message=\(self.message ?? "-") errorMetadata=\(self.errorMetadata)"
        }
    }

    static func pairs(_ metadata: Metadata, keys: [String]) -> [String] {
        keys.flatMap { key in metadata[stringValues: key].map { "\(key)=\($0)" } }
    }

    static func call(
        _ echo: any Sparkops_Testing_V1_EchoService.ClientProtocol,
        text: String = "hello",
        metadata: Metadata = [:],
        options: CallOptions = .defaults
    ) async -> Outcome {
        do {
            return try await echo.get(.with { $0.text = text }, metadata: metadata, options: options) { response in
                let keys = ["echo-initial", "echo-trailing"]
                switch response.accepted {
                case .success(let contents):
                    return Outcome(
                        text: try contents.message.get().text,
                        initial: Self.pairs(contents.metadata, keys: keys),
                        trailing: Self.pairs(contents.trailingMetadata, keys: keys),
                        errorMetadata: []
                    )
                case .failure(let error):
                    return Outcome(initial: [], trailing: [], code: error.code, message: error.message, errorMetadata: Self.pairs(error.metadata, keys: ["echo-reason"]))
                }
            }
        } catch let error as RPCError {
            return Outcome(initial: [], trailing: [], code: error.code, message: error.message, errorMetadata: Self.pairs(error.metadata, keys: ["echo-reason"]))
        } catch {
            return Outcome(initial: [], trailing: [], code: .unknown, message: "\(error)", errorMetadata: [])
        }
    }

    /// Makes `count` calls at once, each with its own text, and expects each answer to be its own.
    static func expectConcurrentCalls(_ count: Int, to echo: some Sparkops_Testing_V1_EchoService.ClientProtocol) async throws {
        let answers = try await withThrowingTaskGroup(of: (Int, String).self) { group in
            for index in 0 ..< count {
                group.addTask { (index, try await echo.get(.with { $0.text = "call \(index)" }).text) }
            }
            var answers: [Int: String] = [:]
            for try await (index, text) in group { answers[index] = text }
            return answers
        }
        #expect(answers.count == count)
        #expect(answers.allSatisfy { $0.value == "call \($0.key)" })
    }

    /// Runs `scenario` on both paths and returns the outcomes by path.
    func onBothPaths(
        interceptors: [any ServerInterceptor & SparkWireUnaryInterceptor] = [],
        clientIdentity: String = "client",
        _ scenario: (any Sparkops_Testing_V1_EchoService.ClientProtocol, EchoService) async throws -> [Outcome]
    ) async throws -> [WirePath: [Outcome]] {
        var outcomes: [WirePath: [Outcome]] = [:]
        for path in WirePath.allCases {
            let service = EchoService()
            outcomes[path] = try await withEchoPair(
                path: path, certificates: self.certificates, service: service,
                interceptors: interceptors, clientIdentity: clientIdentity
            ) { echo, _ in
                try await scenario(echo, service)
            }
        }
        return outcomes
    }

    @Test("the message, initial and trailing metadata arrive as sent")
    func metadata() async throws {
        let outcomes = try await self.onBothPaths { echo, _ in
            [await Self.call(echo, text: "round trip", metadata: ["echo-metadata": "v1"]), await Self.call(echo, text: "plain")]
        }
        let expected = [
            Outcome(text: "round trip", initial: ["echo-initial=v1"], trailing: ["echo-trailing=done"], errorMetadata: []),
            Outcome(text: "plain", initial: [], trailing: [], errorMetadata: []),
        ]
        #expect(outcomes[.grpcCore] == expected)
        #expect(outcomes[.lean] == expected)
    }

    @Test("a handler's errors reach the caller as GRPCCore sends them, with and without interceptors")
    func errors() async throws {
        let kinds = ["rpc", "convertible", "plain"]
        let scenario: (any Sparkops_Testing_V1_EchoService.ClientProtocol, EchoService) async throws -> [Outcome] = { echo, _ in
            var outcomes: [Outcome] = []
            for kind in kinds {
                outcomes.append(await Self.call(echo, metadata: ["echo-throw": "\(kind)"]))
            }
            return outcomes
        }
        let bare = try await self.onBothPaths(scenario)
        #expect(bare[.lean] == bare[.grpcCore])
        #expect(bare[.lean]?.map(\.code) == [.aborted, .failedPrecondition, .unknown])
        #expect(bare[.lean]?.first?.message == "aborted on purpose")
        #expect(bare[.lean]?.first?.errorMetadata == ["echo-reason=asked"])
        #expect(bare[.lean]?[1].message == "converted on purpose")

        let allowAll = CallerAllowlistInterceptor(CallerAllowlist(defaultCallers: ["*"]))
        let intercepted = try await self.onBothPaths(interceptors: [allowAll], scenario)
        #expect(intercepted[.lean] == intercepted[.grpcCore])
        #expect(intercepted[.lean]?.map(\.code) == [.aborted, .failedPrecondition, .unknown])
    }

    @Test("the caller allowlist refuses the same calls on both paths")
    func allowlist() async throws {
        let allowlist = CallerAllowlistInterceptor(CallerAllowlist(
            methods: ["/sparkops.testing.v1.EchoService/Record": ["gateway"]],
            services: ["sparkops.testing.v1.EchoService": ["*"]],
            principalSetters: ["gateway"]
        ))
        let outcomes = try await self.onBothPaths(interceptors: [allowlist]) { echo, service in
            var outcomes: [Outcome] = []
            do {
                _ = try await echo.record(.with { $0.text = "x" })
                outcomes.append(Outcome(text: "recorded", initial: [], trailing: [], errorMetadata: []))
            } catch let error as RPCError {
                outcomes.append(Outcome(initial: [], trailing: [], code: error.code, message: error.message, errorMetadata: []))
            }
            outcomes.append(await Self.call(echo, metadata: [CallerAllowlist.principalKey: "user_1"]))
            outcomes.append(await Self.call(echo, text: "allowed"))
            // Refused calls never reached the handler.
            #expect(service.callCount("Record") == 0)
            #expect(service.callCount("Get") == 1)
            return outcomes
        }
        #expect(outcomes[.lean] == outcomes[.grpcCore])
        #expect(outcomes[.lean]?.map(\.code) == [.permissionDenied, .permissionDenied, nil])
        #expect(outcomes[.lean]?.first?.message?.contains("\"client\"") == true)
    }

    @Test("a deadline reaches the handler, and when it passes the handler's task is cancelled")
    func deadlines() async throws {
        for path in WirePath.allCases {
            let service = EchoService()
            try await withEchoPair(path: path, certificates: self.certificates, service: service) { echo, _ in
                var options = CallOptions.defaults
                options.timeout = .seconds(30)
                let reported = await Self.call(echo, metadata: ["echo-report-deadline": "1"], options: options)
                let micros = Int(reported.text ?? "") ?? -1
                #expect(micros > 0 && micros <= 30_000_000, "\(path): the handler saw \(reported)")

                options.timeout = .milliseconds(300)
                let late = await Self.call(echo, metadata: ["echo-delay-ms": "60000"], options: options)
                #expect(late.code == .deadlineExceeded, "\(path): \(late)")
                // The handler's sleep ends by cancellation, not by running its 60 s.
                try await eventually { service.cancelledCount >= 1 }
            }
        }
    }

    @Test("cancelling the calling task cancels the handler")
    func cancellation() async throws {
        for path in WirePath.allCases {
            let service = EchoService()
            try await withEchoPair(path: path, certificates: self.certificates, service: service) { echo, _ in
                let call = Task { await Self.call(echo, metadata: ["echo-delay-ms": "60000"]) }
                try await eventually { service.callCount("Get") >= 1 }
                call.cancel()
                let outcome = await call.value
                // GRPCCore's executor reports its own cancellation as UNKNOWN ("The transport threw
                // an unexpected error."); the lean path says CANCELLED.
                let expected: [RPCError.Code] = path == .lean ? [.cancelled] : [.cancelled, .unknown]
                #expect(outcome.code.map(expected.contains) == true, "\(path): \(outcome)")
                try await eventually { service.cancelledCount >= 1 }
            }
        }
    }

    @Test("a store's broken connection answers UNAVAILABLE through the telemetry interceptor on both paths")
    func storeUnavailable() async throws {
        let telemetry = RPCTelemetryInterceptor(service: "echo", logger: Logger(label: "test"))
        let outcomes = try await self.onBothPaths(interceptors: [telemetry]) { echo, _ in
            [await Self.call(echo, metadata: ["echo-throw": "channel"]), await Self.call(echo, metadata: ["echo-throw": "plain"])]
        }
        #expect(outcomes[.lean] == outcomes[.grpcCore])
        #expect(outcomes[.lean]?.map(\.code) == [.unavailable, .unknown])
    }

    @Test("streaming calls still go through GRPCCore beside lean unary calls, and concurrent calls keep their answers")
    func mixed() async throws {
        try await withEchoPair(path: .lean, certificates: self.certificates) { echo, _ in
            let words = try await echo.expand(.with { $0.text = "one two three" }) { response in
                var words: [String] = []
                for try await message in response.messages { words.append(message.text) }
                return words
            }
            #expect(words == ["one", "two", "three"])
            try await Self.expectConcurrentCalls(200, to: echo)
        }
    }

    @Test("calls made on the connection's event loop are sent in batches as they are written, and each keeps its answer")
    func callsOnTheEventLoop() async throws {
        let loops = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let service = EchoService()
        try await withWireServer(
            services: [service],
            security: self.certificates.security("echo"),
            configure: { $0.unaryMethods = SparkProtoMethods.unary(of: [service]) }
        ) { _, port in
            let transport = try SparkWireClientTransport(
                config: .init(
                    endpoints: [SparkWireEndpoint(host: "127.0.0.1", port: port)],
                    serverIdentity: "echo",
                    security: self.certificates.security("client"),
                    methods: SparkProtoMethods.all
                ),
                eventLoopGroup: loops
            )
            let channel = SparkWireChannel(transport: transport)
            try await withThrowingTaskGroup(of: Void.self) { runner in
                runner.addTask { try await channel.runConnections() }
                defer { channel.beginGracefulShutdown() }
                let echo = Sparkops_Testing_V1_EchoService.SparkWireClient(wrapping: channel)
                #expect(try await echo.get(.with { $0.text = "first" }).text == "first")
                #expect(transport.immediateDrainCount == 0)
                // The calls start from the loop's one thread, so all of them are queued before any
                // runs: their requests reach the outbox one after another, as handlers' calls do.
                try await withTaskExecutorPreference(EventLoopTaskExecutor(loops.next())) {
                    try await Self.expectConcurrentCalls(200, to: echo)
                }
                // 200 requests written in a row drained every 16 rather than once at the end.
                #expect(transport.immediateDrainCount >= 200 / 16 - 1)
            }
        }
        try await loops.shutdownGracefully()
    }
}
