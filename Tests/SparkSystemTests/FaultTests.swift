import Foundation
import NIOHTTP1
import SparkTesting
import Synchronization
import Testing

/// The database and Redis fail under the run service: servers of the tests' own, stopped and
/// restarted while runs are in flight.
extension DistributedTests {
    /// An echo tool and a workflow of `steps` echo steps in a row, `chain`.
    static func chainProject(_ deployment: Deployment, name: String, steps: Int) async throws -> (base: String, token: String) {
        let project = try await Self.signIn(deployment, project: name)
        var workflow = "name: chain\ninputs: { n: { type: integer } }\nsteps:\n"
        for index in 0 ..< steps {
            workflow += "  - id: s\(index)\n    tool: echo\n    with: { n: \"${{ inputs.n }}\" }\n"
            if index > 0 { workflow += "    needs: [s\(index - 1)]\n" }
        }
        for (path, source) in [("tools", "tool: echo\nkind: echo\nside_effects: none\n"), ("workflows", workflow)] {
            let applied = try await deployment.gateway.send(.POST, "\(project.base)/\(path)/apply", token: project.token, json: ["source": source])
            try #require(applied.status == 200, "\(applied.text)")
        }
        return project
    }

    /// A step of a run, by its id, as the run's detail shows it.
    struct RunSteps {
        let runID: String
        let http: HTTPTestClient
        let project: (base: String, token: String)

        func callAsFunction(_ name: String) async throws -> [String: Any] {
            let detail = try await self.http.send(.GET, "\(self.project.base)/runs/\(self.runID)", token: self.project.token).json
            return (detail["steps"] as? [[String: Any]])?.first { $0["id"] as? String == name } ?? [:]
        }
    }

    /// Starts a checkout run of `order`; once its charge has reached the server (which answers
    /// after a second), kills the tool service with SIGKILL and starts it again.
    static func chargeWithToolServiceKilled(
        _ deployment: Deployment, _ processes: inout [ServiceProcess], project: (base: String, token: String), server: HTTPEchoServer, order: String
    ) async throws -> RunSteps {
        let http = deployment.gateway
        let created = try await http.send(.POST, "\(project.base)/runs", token: project.token, json: ["workflow": "checkout", "inputs": ["order": order]])
        let id = try #require((created.json["run"] as? [String: Any])?["id"] as? String, "\(created.text)")
        let charging = try await Self.eventually(within: .seconds(60)) { server.requests >= 1 }
        try #require(charging, "the charge never started:\n\(processes[7].output.suffix(3000))")
        await processes[3].kill()
        try await Task.sleep(for: .seconds(2))
        processes[3] = try await deployment.start("sparkops-tool")
        return RunSteps(runID: id, http: http, project: project)
    }

    @Test(
        "PostgreSQL restarts under load: every run it accepted finishes, and none is created twice",
        .enabled(if: TestBackend.all.count > 1 && LocalPostgres.binaries != nil, "needs SPARKOPS_TEST_DATABASE_URL and the postgresql package")
    )
    func postgresRestarts() async throws {
        let postgres = try await LocalPostgres.start()
        do {
            try await Self.withRunDeployment(settings: ["run.leaseSeconds=3", "run.workers=8", "tool.abandonGraceSeconds=3"], database: postgres.url) { deployment, processes in
                let http = deployment.gateway
                let project = try await Self.chainProject(deployment, name: "restarts", steps: 3)
                // A client that starts 40 runs, one every 50 ms, each retried under its key until
                // accepted, as a client should when the service answers 5xx or not at all.
                let acceptedSoFar = Atomic<Int>(0)
                let driver = Task { () -> (accepted: [Int: String], refusals: Int) in
                    var accepted: [Int: String] = [:]
                    var refusals = 0
                    for index in 0 ..< 40 {
                        let deadline = ContinuousClock.now + .seconds(120)
                        while accepted[index] == nil, ContinuousClock.now < deadline {
                            let reply = try? await http.send(.POST, "\(project.base)/runs", token: project.token, json: ["workflow": "chain", "inputs": ["n": index], "idempotencyKey": "load-\(index)"])
                            if let reply, reply.status == 201, let id = (reply.json["run"] as? [String: Any])?["id"] as? String {
                                accepted[index] = id
                                acceptedSoFar.add(1, ordering: .relaxed)
                            } else {
                                refusals += 1
                                try await Task.sleep(for: .milliseconds(200))
                            }
                        }
                        try await Task.sleep(for: .milliseconds(50))
                    }
                    return (accepted, refusals)
                }
                // Once some runs are in, the database crashes, stays down 2 s and comes back.
                let settled = try await Self.eventually(within: .seconds(60)) { try await Self.runs(project, via: http).count >= 8 }
                try #require(settled, "no runs were created:\n\(processes[7].output.suffix(3000))")
                try await postgres.crash()
                let atCrash = acceptedSoFar.load(ordering: .relaxed)
                try await Task.sleep(for: .seconds(3))
                try await postgres.startServer()
                let (accepted, refusals) = try await driver.value
                try #require(accepted.count == 40, "only \(accepted.count) of 40 runs were accepted in the end:\n\(processes[1].output.suffix(3000))")
                #expect(atCrash < 40, "the crash came after the client had started every run")

                var runs: [[String: Any]] = []
                let finished = try await Self.eventually(within: .seconds(240)) {
                    runs = try await Self.runs(project, via: http)
                    return runs.count >= 40 && runs.allSatisfy { ["succeeded", "failed", "cancelled"].contains($0["status"] as? String ?? "") }
                }
                if !finished { try? FileManager.default.copyItem(atPath: processes[7].logPath, toPath: "/tmp/pg-restart-run-\(UUID().uuidString.prefix(6)).log") }
                #expect(finished, "not every run finished:\n\(runs.map { "\($0["id"] ?? "") \($0["status"] ?? "")" })\n\(processes[7].output.suffix(4000))")
                // Each accepted run is there, once, and succeeded: nothing accepted was lost, and a
                // create retried under its key did not start a second run.
                #expect(runs.count == 40, "\(runs.count) runs for 40 keys")
                let byID = Dictionary(runs.map { ($0["id"] as? String ?? "", $0) }) { first, _ in first }
                for (index, id) in accepted.sorted(by: { $0.key < $1.key }) {
                    #expect(byID[id]?["status"] as? String == "succeeded", "run \(index) (\(id)): \(byID[id] ?? [:])")
                }
                if accepted.values.contains(where: { byID[$0]?["status"] as? String != "succeeded" }) {
                    // What each service logged about the calls that failed, to say which gave up.
                    let failures = processes.map { process in
                        "\(process.name):\n" + process.output.split(separator: "\n").filter { ($0.contains("rpc failed") || $0.contains("\"level\":\"error\"") || $0.contains("task failed") || $0.contains("call failed")) && !$0.contains("Connection creation failed") }.suffix(20).joined(separator: "\n")
                    }
                    Issue.record("the services' failed calls:\n\(failures.joined(separator: "\n"))")
                }
                print("PostgreSQL crashed with \(atCrash) of 40 runs accepted, down 3 s: every run accepted and succeeded, \(refusals) creates refused and sent again")
            }
        } catch {
            await postgres.destroy()
            throw error
        }
        await postgres.destroy()
    }

    @Test(
        "kill -9 of the tool service mid-call: the run service sends the call again once it is back, and a non_idempotent call that may have run waits for a human",
        .enabled(if: TestBackend.all.count > 1, "needs SPARKOPS_TEST_DATABASE_URL")
    )
    func killedToolService() async throws {
        let server = try await HTTPEchoServer.start()
        defer { Task { try? await server.stop() } }
        // The killed service's call counts as lost 3 s past the tool's timeout (of 30 s), not a minute.
        try await Self.withRunDeployment(settings: ["tool.outboundAllow=127.0.0.1:\(server.port)", "tool.abandonGraceSeconds=3"]) { deployment, processes in
            let http = deployment.gateway
            let project = try await Self.chargeProject(deployment, server: server)
            let step = try await Self.chargeWithToolServiceKilled(deployment, &processes, project: project, server: server, order: "o-1")
            let id = step.runID
            let attention = try await Self.eventually(within: .seconds(120)) { try await step("charge")["status"] as? String == "needs_attention" }
            let charge = try await step("charge")
            try #require(attention, "the charge did not wait for a human: \(charge)\n\(processes[7].output.suffix(3000))")
            #expect(try await step("reserve")["status"] as? String == "succeeded")
            let resolved = try await http.send(.POST, "\(project.base)/runs/\(id)/steps/charge/resolve", token: project.token, json: ["action": "skip"])
            #expect(resolved.status == 200, "\(resolved.text)")
            let done = try await Self.eventually(within: .seconds(60)) {
                try await http.send(.GET, "\(project.base)/runs/\(id)", token: project.token).json["status"] as? String == "succeeded"
            }
            #expect(done, "the run did not finish after the skip")
            // A skipped step's dependents are skipped (confirm has no `when` of its own).
            #expect(try await step("confirm")["status"] as? String == "skipped")
            let attempts = try await step("charge")["attempts"] as? [[String: Any]] ?? []
            #expect(attempts.map { $0["status"] as? String ?? "" } == ["lost"], "\(attempts)")
            #expect(server.requestsByURI["/slow?ms=1000&order=o-1"] == 1, "\(server.requestsByURI)")
        }
    }

    @Test(
        "a non_idempotent step whose timeout is shorter than its tool's, with its tool service killed mid-call, waits for a human, with and without retry",
        .enabled(if: TestBackend.all.count > 1, "needs SPARKOPS_TEST_DATABASE_URL"),
        arguments: [false, true]
    )
    func killedToolServiceShortTimeout(retry: Bool) async throws {
        let server = try await HTTPEchoServer.start()
        defer { Task { try? await server.stop() } }
        // The step gives up after 3 s, long before the restarted tool service would count the
        // first call as lost (the tool's 30 s timeout plus 3 s): the key stays busy until then.
        try await Self.withRunDeployment(settings: ["tool.outboundAllow=127.0.0.1:\(server.port)", "tool.abandonGraceSeconds=3"]) { deployment, processes in
            let http = deployment.gateway
            var chargeStep = "    timeout: 3s"
            if retry { chargeStep += "\n    retry: { max_attempts: 3, initial: 100ms }" }
            let project = try await Self.chargeProject(deployment, server: server, chargeStep: chargeStep)
            let step = try await Self.chargeWithToolServiceKilled(deployment, &processes, project: project, server: server, order: "o-2")
            let attention = try await Self.eventually(within: .seconds(120)) {
                let status = try await step("charge")["status"] as? String
                return status == "needs_attention" || status == "failed" || status == "succeeded"
            }
            let charge = try await step("charge")
            try #require(attention, "the charge never settled: \(charge)\n\(processes[7].output.suffix(3000))")
            #expect(charge["status"] as? String == "needs_attention", "\(charge)")
            // Give a wrongly scheduled retry the time to happen before counting.
            try await Task.sleep(for: .seconds(2))
            #expect(server.requestsByURI["/slow?ms=1000&order=o-2"] == 1, "the charge was sent \(server.requestsByURI)")
            let attempts = try await step("charge")["attempts"] as? [[String: Any]] ?? []
            #expect(attempts.map { $0["status"] as? String ?? "" } == ["lost"], "\(attempts)")
        }
    }

    @Test(
        "SIGTERM to a run replica serving a watch ends the stream at once and the replica exits within run.drainSeconds; the watcher resumes without a gap",
        .enabled(if: TestBackend.all.count > 1, "needs SPARKOPS_TEST_DATABASE_URL")
    )
    func runReplicaDrainsWatches() async throws {
        try await Self.withRunDeployment(settings: ["run.drainSeconds=3"]) { deployment, processes in
            let http = deployment.gateway
            let project = try await Self.chainProject(deployment, name: "drain", steps: 1)
            let projectID = String(project.base.split(separator: "/").last ?? "")
            let ticket = try #require(try await http.send(.POST, "/api/v1/ws/tickets", token: project.token).json["ticket"] as? String)
            var sequences: [Int64] = []
            _ = try await WebSocketTestClient.converse(port: deployment.gatewayPort, path: "/api/v1/ws?ticket=\(ticket)") { socket in
                #expect(try await socket.receive()["type"] as? String == "ready")
                try await socket.send(["type": "subscribe", "topic": "runs", "projectId": projectID, "afterSequence": 0])
                #expect(try await socket.receive()["type"] as? String == "subscribed")
                func awaitRun() async throws {
                    // Sent again under its key while the run service is (re)starting (503).
                    let key = "drain-\(sequences.count)"
                    var created = try await http.send(.POST, "\(project.base)/runs", token: project.token, json: ["workflow": "chain", "inputs": ["n": 1], "idempotencyKey": key])
                    let deadline = ContinuousClock.now + .seconds(60)
                    while created.status == 503, ContinuousClock.now < deadline {
                        try await Task.sleep(for: .milliseconds(200))
                        created = try await http.send(.POST, "\(project.base)/runs", token: project.token, json: ["workflow": "chain", "inputs": ["n": 1], "idempotencyKey": key])
                    }
                    try #require(created.status == 201, "\(created.text)")
                    while true {
                        let event = try #require(try await socket.receive()["event"] as? [String: Any])
                        if let sequence = (event["sequence"] as? String).flatMap(Int64.init) { sequences.append(sequence) }
                        if event["kind"] as? String == "run.succeeded" { return }
                    }
                }
                try await awaitRun()
                // The run service stops with the watch open: it is gone within its drain time.
                let signalled = ContinuousClock.now
                processes[7].signal(SIGTERM)
                let status = await processes[7].exit(within: .seconds(25))
                let elapsed = ContinuousClock.now - signalled
                #expect(status == 0, "\(processes[7].output.suffix(3000))")
                #expect(elapsed < .seconds(10), "the run service took \(elapsed) to exit")
                processes[7] = try await deployment.start("sparkops-run")
                // The gateway's watch resumes on the new process after the last event it passed on.
                try await awaitRun()
            }
            #expect(sequences == Array(1 ... Int64(max(sequences.count, 1))), "missed or repeated: \(sequences)")
        }
    }

    @Test(
        "Redis stops: runs go on, and events still reach a watcher on another replica, from the store",
        .enabled(if: TestBackend.all.count > 1 && LocalRedis.isInstalled, "needs SPARKOPS_TEST_DATABASE_URL and redis-server")
    )
    func redisStops() async throws {
        let redis = try await LocalRedis.start()
        // The gateway's run service serves the API and the watch; another replica runs every step,
        // so every event the watcher gets was committed by another process.
        let (port, admin) = (try await FreePort.allocate(), try await FreePort.allocate())
        let workers = Deployment.Replica(executable: "sparkops-run", settings: ["run.port=\(port)", "run.adminPort=\(admin)", "run.mode=workers"], adminPort: admin)
        do {
            try await Self.withRunDeployment(settings: ["run.mode=api"], replicas: [workers], redis: redis.url) { deployment, processes in
                let http = deployment.gateway
                let project = try await Self.chainProject(deployment, name: "relay", steps: 2)
                let ticket = { () async throws -> String in
                    try #require(try await http.send(.POST, "/api/v1/ws/tickets", token: project.token).json["ticket"] as? String)
                }
                let projectID = String(project.base.split(separator: "/").last ?? "")
                var sequences: [Int64] = []
                var finished: Set<String> = []
                _ = try await WebSocketTestClient.converse(port: deployment.gatewayPort, path: "/api/v1/ws?ticket=\(try await ticket())") { socket in
                    #expect(try await socket.receive()["type"] as? String == "ready")
                    try await socket.send(["type": "subscribe", "topic": "runs", "projectId": projectID])
                    #expect(try await socket.receive()["type"] as? String == "subscribed")
                    func startRuns(_ count: Int) async throws -> Set<String> {
                        var ids: Set<String> = []
                        for index in 0 ..< count {
                            let created = try await http.send(.POST, "\(project.base)/runs", token: project.token, json: ["workflow": "chain", "inputs": ["n": index]])
                            try #require(created.status == 201, "\(created.text)")
                            ids.insert(try #require((created.json["run"] as? [String: Any])?["id"] as? String))
                        }
                        return ids
                    }
                    func awaitSucceeded(_ ids: Set<String>) async throws {
                        let deadline = ContinuousClock.now + .seconds(120)
                        while !ids.isSubset(of: finished), ContinuousClock.now < deadline {
                            let message = try await socket.receive()
                            guard let event = message["event"] as? [String: Any] else {
                                Issue.record("the watch ended: \(message)")
                                return
                            }
                            if let sequence = (event["sequence"] as? String).flatMap(Int64.init) { sequences.append(sequence) }
                            if event["kind"] as? String == "run.succeeded", let id = event["runId"] as? String { finished.insert(id) }
                        }
                        #expect(ids.isSubset(of: finished), "runs did not finish: \(ids.subtracting(finished))")
                    }

                    // With Redis: the workers' commits reach the watcher through it.
                    try await awaitSucceeded(try await startRuns(3))
                    let metrics = try await HTTPTestClient(baseURL: "http://127.0.0.1:\(deployment.runAdminPort)").send(.GET, "/metrics").text
                    let received = metrics.split(separator: "\n").first { $0.hasPrefix("sparkops_run_relay_messages_total") && $0.contains("received") }
                    #expect((received?.split(separator: " ").last).flatMap { Double($0) } ?? 0 > 0, "the API replica received no commit through Redis:\n\(metrics.prefix(3000))")

                    // Without: new runs are accepted and finish, and their events come from the store.
                    await redis.stop()
                    try await awaitSucceeded(try await startRuns(3))
                }
                #expect(finished.count == 6)
                #expect(sequences == Array(1 ... Int64(max(sequences.count, 1))), "events were missed, repeated or out of order: \(sequences)")
                #expect(processes[8].output.contains("cannot publish commits on Redis"), "\(processes[8].output.suffix(3000))")
            }
        } catch {
            await redis.stop()
            throw error
        }
        await redis.stop()
    }
}
