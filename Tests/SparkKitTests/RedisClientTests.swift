import Foundation
import ServiceLifecycle
import SparkKit
import SparkTesting
import Synchronization
import Testing

/// The Redis client against a real `redis-server` of the test's own.
@Suite("Redis client")
struct RedisClientTests {
    /// Runs `body` with a client of `url`, the client's connection loop running beside it.
    func withClient(_ url: String, replyTimeout: Duration = .seconds(10), _ body: (RedisClient) async throws -> Void) async throws {
        let client = try RedisClient(url: url, replyTimeout: replyTimeout)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await client.run() }
            defer { group.cancelAll() }
            try await body(client)
        }
    }

    @Test("a subscriber gets each published message whole and in order, binary payloads included", .enabled(if: LocalRedis.isInstalled, "needs redis-server"))
    func publishSubscribe() async throws {
        let redis = try await LocalRedis.start()
        defer { Task { await redis.stop() } }
        try await self.withClient(redis.url) { client in
            let received = Mutex<[[UInt8]]>([])
            let (ready, subscribed) = AsyncStream<Void>.makeStream()
            let subscriber = Task {
                try await client.subscribe(to: ["news", "other"]) {
                    subscribed.yield()
                } message: { channel, payload in
                    if channel == "news" { received.withLock { $0.append(payload) } }
                }
            }
            defer { subscriber.cancel() }
            var iterator = ready.makeAsyncIterator()
            _ = await iterator.next()
            // Bytes a text protocol would mangle: a NUL, CR LF, bars, invalid UTF-8.
            let payloads: [[UInt8]] = (0 ..< 50).map { [0, 13, 10, 0x7C, 0xFF, UInt8($0)] + Array("message \($0)".utf8) }
            for payload in payloads {
                let listeners = try await client.publish(payload, on: "news")
                #expect(listeners == 1)
            }
            _ = try await client.publish(Array("elsewhere".utf8), on: "unheard")
            let deadline = ContinuousClock.now + .seconds(30)
            while received.withLock({ $0.count }) < payloads.count, ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(10))
            }
            #expect(received.withLock { $0 } == payloads)
            // Commands still work on the client's own connection beside the subscription.
            #expect(try await client.send(["SET", "k", "v"]).string == "OK")
            #expect(try await client.send(["GET", "k"]).string == "v")
        }
    }

    @Test("when Redis goes away, calls fail as connection failures and a subscription throws; Redis's own errors are not connection failures", .enabled(if: LocalRedis.isInstalled, "needs redis-server"))
    func connectionFailures() async throws {
        let redis = try await LocalRedis.start()
        try await self.withClient(redis.url) { client in
            do {
                _ = try await client.send(["NOSUCHCOMMAND"])
                Issue.record("an unknown command succeeded")
            } catch let error as RedisError {
                #expect(!error.isConnectionFailure, "\(error)")
            }
            let (ready, subscribed) = AsyncStream<Void>.makeStream()
            let subscriber = Task { try await client.subscribe(to: ["news"]) { subscribed.yield() } message: { _, _ in } }
            var iterator = ready.makeAsyncIterator()
            _ = await iterator.next()
            await redis.stop()
            let ended = await subscriber.result
            #expect(throws: RedisError.self) { try ended.get() }
            #expect((try? ended.get()) == nil)
            if case .failure(let error as RedisError) = ended { #expect(error.isConnectionFailure, "\(error)") }
            let deadline = ContinuousClock.now + .seconds(30)
            var failure: RedisError?
            while failure == nil, ContinuousClock.now < deadline {
                do {
                    _ = try await client.send(["PING"])
                    try await Task.sleep(for: .milliseconds(50))
                } catch let error as RedisError {
                    failure = error
                }
            }
            #expect(failure?.isConnectionFailure == true, "\(String(describing: failure))")
        }
    }

    @Test("a command Redis does not answer fails within the reply timeout, and the client reconnects once Redis answers again", .enabled(if: LocalRedis.isInstalled, "needs redis-server"))
    func replyTimeout() async throws {
        let redis = try await LocalRedis.start()
        defer { Task { await redis.stop() } }
        try await self.withClient(redis.url, replyTimeout: .seconds(1)) { client in
            #expect(try await client.send(["SET", "k", "before"]).string == "OK")
            redis.pause()
            // Bounds the test should the commands wait on: Redis answering makes them succeed.
            let watchdog = Task {
                try await Task.sleep(for: .seconds(60))
                redis.resume()
            }
            let started = ContinuousClock.now
            // Several commands in flight on the one pipelined connection: each fails, none hangs.
            let outcomes = await withTaskGroup(of: RedisError?.self) { group in
                for index in 0 ..< 4 {
                    group.addTask {
                        do {
                            _ = try await client.send(["SET", "k\(index)", "v"])
                            return nil
                        } catch let error as RedisError {
                            return error
                        } catch {
                            return RedisError("\(error)")
                        }
                    }
                }
                return await group.reduce(into: []) { $0.append($1) }
            }
            let waited = ContinuousClock.now - started
            watchdog.cancel()
            redis.resume()
            #expect(outcomes.count == 4)
            for outcome in outcomes {
                #expect(outcome?.isConnectionFailure == true, "\(String(describing: outcome))")
            }
            #expect(waited < .seconds(60), "the commands waited \(waited)")
            // The timed-out connection was closed; a new one serves the next commands.
            let deadline = ContinuousClock.now + .seconds(60)
            var value: String?
            while value == nil, ContinuousClock.now < deadline {
                value = try? await client.send(["GET", "k"]).string
                if value == nil { try await Task.sleep(for: .milliseconds(100)) }
            }
            #expect(value == "before")
        }
    }
}
