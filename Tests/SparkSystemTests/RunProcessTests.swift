import Foundation
import NIOHTTP1
import SparkTesting
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The run service as a process of its own, killed and restarted with runs in flight.
extension DistributedTests {
    /// A project with an echo tool (no side effects), a non_idempotent http tool that takes a
    /// while at a loopback server, and a workflow of the three: echo → charge → echo.
    /// `chargeStep`: more lines of the charge step (a timeout, a retry), indented as its others.
    static func chargeProject(_ deployment: Deployment, server: HTTPEchoServer, chargeStep: String = "") async throws -> (base: String, token: String) {
        let project = try await Self.signIn(deployment, project: "charges")
        let tools = [
            "tool: echo\nkind: echo\nside_effects: none\n",
            """
            tool: charge
            kind: http
            side_effects: non_idempotent
            input_schema: { type: object, properties: { order: { type: string } }, required: [order] }
            http: { method: POST, url: "\(server.baseURL)/slow?ms=1000&order=${{ input.order }}" }
            """,
        ]
        for source in tools {
            let applied = try await deployment.gateway.send(.POST, "\(project.base)/tools/apply", token: project.token, json: ["source": source])
            try #require(applied.status == 200, "\(applied.text)")
        }
        let workflow = """
            name: checkout
            inputs: { order: { type: string, required: true } }
            steps:
              - id: reserve
                tool: echo
                with: { order: "${{ inputs.order }}" }
              - id: charge
                tool: charge
                needs: [reserve]
                with: { order: "${{ inputs.order }}" }
            \(chargeStep)
              - id: confirm
                tool: echo
                needs: [charge]
                with: { order: "${{ inputs.order }}", status: "${{ steps.charge.output.status }}" }
            """
        let applied = try await deployment.gateway.send(.POST, "\(project.base)/workflows/apply", token: project.token, json: ["source": workflow])
        try #require(applied.status == 200, "\(applied.text)")
        return project
    }

    /// A deployment on a fresh PostgreSQL database (or on `database`) and the test Redis (or
    /// `redis`) with `settings` added, its certificates made and every service started (then
    /// `replicas`), for `body`.
    static func withRunDeployment(
        settings: [String], replicas: [Deployment.Replica] = [], database: String? = nil, redis: String? = nil,
        _ body: (Deployment, inout [ServiceProcess]) async throws -> Void
    ) async throws {
        let backend = try #require(TestBackend.all.first { if case .postgres = $0 { return true } else { return false } })
        func deploy(_ databaseURL: String?) async throws {
            var deployment = try await Deployment.make(databaseURL: databaseURL, redisURL: redis ?? backend.redisURL)
            defer { try? FileManager.default.removeItem(atPath: deployment.home) }
            deployment.settings += settings
            _ = try await ServiceProcess.run("sparkops", ["certs", "init", "--dir", "\(deployment.home)/certs", "--services", "gateway,project,workflow,tool,agent,policy,budget,run"])
            var processes = try await deployment.startAll(replicas: replicas)
            func stopAll() async {
                await withTaskGroup(of: Void.self) { group in
                    for process in processes { group.addTask { _ = await process.stop() } }
                }
            }
            do {
                try await body(deployment, &processes)
            } catch {
                await stopAll()
                throw error
            }
            await stopAll()
        }
        if let database {
            try await deploy(database)
        } else {
            try await backend.withDatabase { try await deploy($0) }
        }
    }

    /// Every run of the project, as the list shows them (50 at most here).
    static func runs(_ project: (base: String, token: String), via http: HTTPTestClient) async throws -> [[String: Any]] {
        try await http.send(.GET, "\(project.base)/runs?pageSize=500", token: project.token).json["runs"] as? [[String: Any]] ?? []
    }

    @Test(
        "kill -9 of the run service with 50 runs in flight: after a restart every run finishes, no step is lost, and no non_idempotent call is made twice",
        .enabled(if: TestBackend.all.count > 1, "needs SPARKOPS_TEST_DATABASE_URL")
    )
    func killedRunService() async throws {
        let server = try await HTTPEchoServer.start()
        defer { Task { try? await server.stop() } }
        try await Self.withRunDeployment(settings: ["tool.outboundAllow=127.0.0.1:\(server.port)", "run.leaseSeconds=3", "run.workers=8"]) { deployment, processes in
            let http = deployment.gateway
            let project = try await Self.chargeProject(deployment, server: server)

            var orders: [String: String] = [:]
            for index in 0 ..< 50 {
                let order = "o-\(index)"
                let created = try await http.send(.POST, "\(project.base)/runs", token: project.token, json: ["workflow": "checkout", "inputs": ["order": order], "idempotencyKey": order])
                try #require(created.status == 201, "\(created.text)")
                orders[try #require((created.json["run"] as? [String: Any])?["id"] as? String)] = order
            }
            // Some charges reached the server, and most runs are still under way: kill -9.
            let started = ContinuousClock.now
            while server.requests < 3, ContinuousClock.now < started + .seconds(120) { try await Task.sleep(for: .milliseconds(20)) }
            try #require(server.requests >= 3, "no charge was made:\n\(processes[7].output)")
            let callsAtKill = server.requests
            await processes[7].kill()
            #expect(callsAtKill < 50, "the kill came after every run had charged")

            processes[7] = try await deployment.start("sparkops-run")
            // Every run ends, or its charge waits for a human: it may have started before the kill.
            var runs: [[String: Any]] = []
            let deadline = ContinuousClock.now + .seconds(240)
            func settled(_ run: [String: Any]) -> Bool {
                ["succeeded", "failed", "cancelled"].contains(run["status"] as? String ?? "")
            }
            var attention: Set<String> = []
            repeat {
                runs = try await Self.runs(project, via: http)
                for run in runs where !settled(run) {
                    let id = run["id"] as? String ?? ""
                    let detail = try await http.send(.GET, "\(project.base)/runs/\(id)", token: project.token).json
                    let charge = (detail["steps"] as? [[String: Any]])?.first { $0["id"] as? String == "charge" }
                    if charge?["status"] as? String == "needs_attention", !attention.contains(id) {
                        // The operator checks the charge and skips the step, rather than charge twice.
                        let resolved = try await http.send(.POST, "\(project.base)/runs/\(id)/steps/charge/resolve", token: project.token, json: ["action": "skip"])
                        #expect(resolved.status == 200, "\(resolved.text)")
                        attention.insert(id)
                    }
                }
                if runs.count == 50, runs.allSatisfy(settled) { break }
                try await Task.sleep(for: .milliseconds(250))
            } while ContinuousClock.now < deadline
            try #require(runs.count == 50 && runs.allSatisfy(settled), "not every run finished:\n\(runs.map { "\($0["id"] ?? "") \($0["status"] ?? "")" })\n\(processes[7].output)")

            let calls = server.requestsByURI
            for run in runs {
                let id = try #require(run["id"] as? String)
                let order = try #require(orders[id])
                let count = calls["/slow?ms=1000&order=\(order)"] ?? 0
                #expect(run["status"] as? String == "succeeded", "\(id): \(run)")
                #expect(count <= 1, "order \(order) was charged \(count) times")
                let detail = try await http.send(.GET, "\(project.base)/runs/\(id)", token: project.token).json
                let steps = Dictionary(uniqueKeysWithValues: (detail["steps"] as? [[String: Any]] ?? []).map { ($0["id"] as? String ?? "", $0) })
                // The steps without side effects were never lost: they ran (again, if need be).
                #expect(steps["reserve"]?["status"] as? String == "succeeded", "\(id): \(steps["reserve"] ?? [:])")
                if attention.contains(id) {
                    #expect(steps["charge"]?["status"] as? String == "skipped")
                } else {
                    #expect(steps["charge"]?["status"] as? String == "succeeded", "\(id): \(steps["charge"] ?? [:])")
                    #expect(count == 1, "order \(order) succeeded without being charged")
                    #expect(steps["confirm"]?["status"] as? String == "succeeded")
                }
            }
            print("kill -9 with runs in flight: \(callsAtKill) charges before the kill, \(attention.count) charges left to a human, \(calls.values.reduce(0, +)) charges in all for 50 orders")
        }
    }
}

extension DistributedTests {
    /// A project with a tool that waits `ms` at the loopback server (no side effects), and a
    /// workflow of one step of it.
    static func slowProject(_ deployment: Deployment, server: HTTPEchoServer, ms: Int) async throws -> (base: String, token: String) {
        let project = try await Self.signIn(deployment, project: "slow")
        let tool = "tool: wait\nkind: http\nside_effects: none\nhttp: { url: \"\(server.baseURL)/slow?ms=\(ms)\" }\n"
        let workflow = "name: slow\nsteps:\n  - id: wait\n    tool: wait\n"
        for (path, source) in [("tools", tool), ("workflows", workflow)] {
            let applied = try await deployment.gateway.send(.POST, "\(project.base)/\(path)/apply", token: project.token, json: ["source": source])
            try #require(applied.status == 200, "\(applied.text)")
        }
        return project
    }

    /// Waits (bounded) until `condition` holds; false if it never did.
    static func eventually(within limit: Duration, _ condition: () async throws -> Bool) async throws -> Bool {
        let deadline = ContinuousClock.now + limit
        repeat {
            if try await condition() { return true }
            try await Task.sleep(for: .milliseconds(100))
        } while ContinuousClock.now < deadline
        return false
    }

    @Test(
        "a worker paused with SIGSTOP past its lease loses the step to another replica; resumed, its late result is refused",
        .enabled(if: TestBackend.all.count > 1, "needs SPARKOPS_TEST_DATABASE_URL")
    )
    func pausedWorkerIsFenced() async throws {
        let server = try await HTTPEchoServer.start()
        defer { Task { try? await server.stop() } }
        try await Self.withRunDeployment(settings: ["tool.outboundAllow=127.0.0.1:\(server.port)", "run.leaseSeconds=3"]) { deployment, processes in
            let http = deployment.gateway
            let project = try await Self.slowProject(deployment, server: server, ms: 6000)
            let created = try await http.send(.POST, "\(project.base)/runs", token: project.token, json: ["workflow": "slow"])
            let id = try #require((created.json["run"] as? [String: Any])?["id"] as? String, "\(created.text)")
            #expect(try await Self.eventually(within: .seconds(60)) { server.requests == 1 }, "the call did not start")
            processes[7].signal(SIGSTOP)

            // A second replica, workers only, on ports of its own, takes over once the lease expires.
            let (port, admin) = (try await FreePort.allocate(), try await FreePort.allocate())
            let second = try await ServiceProcess(
                "sparkops-run", (deployment.settings + ["run.port=\(port)", "run.adminPort=\(admin)", "run.mode=workers"]).flatMap { ["--set", $0] },
                logDirectory: deployment.home
            )
            processes.append(second)
            // Once the paused worker's lease expires, the second replica finds the attempt started
            // and sends the same attempt again, under the same key.
            let taken = try await Self.eventually(within: .seconds(90)) { second.output.contains("is sent again") }
            #expect(taken, "the second replica did not take the step:\n\(second.output.suffix(4000))")
            processes[7].signal(SIGCONT)
            let fenced = try await Self.eventually(within: .seconds(60)) { processes[7].output.contains("lease passed to another worker") }
            #expect(fenced, "the resumed worker did not find its lease gone:\n\(processes[7].output.suffix(4000))")
            let done = try await Self.eventually(within: .seconds(60)) {
                try await http.send(.GET, "\(project.base)/runs/\(id)", token: project.token).json["status"] as? String == "succeeded"
            }
            let final = try await http.send(.GET, "\(project.base)/runs/\(id)", token: project.token).text
            #expect(done, "\(final)")
            let detail = try await http.send(.GET, "\(project.base)/runs/\(id)", token: project.token).json
            let step = try #require((detail["steps"] as? [[String: Any]])?.first)
            let attempts = step["attempts"] as? [[String: Any]] ?? []
            #expect(attempts.count == 1, "\(attempts)")
            #expect(attempts.first?["status"] as? String == "succeeded")
            // The attempt was sent again after its worker stopped (whichever replica then took it),
            // and nothing the paused worker did afterwards counted.
            let events = try await http.send(.GET, "\(project.base)/events?runId=\(id)", token: project.token).json["events"] as? [[String: Any]] ?? []
            #expect(events.contains { ($0["message"] as? String)?.contains("its worker stopped; the attempt is sent again") == true }, "\(events)")
            #expect(events.filter { $0["kind"] as? String == "step.succeeded" }.count == 1)
            // The tool has no side effects: when the paused caller's connection is dropped, its call
            // is cut short and its key given back, and the second replica's call runs it again.
            #expect((1 ... 2).contains(server.requests), "the tool ran \(server.requests) times")
        }
    }

    @Test(
        "SIGTERM drains the run service: it stops claiming, the step in flight finishes within the grace period, and it exits 0",
        .enabled(if: TestBackend.all.count > 1, "needs SPARKOPS_TEST_DATABASE_URL")
    )
    func sigtermDrains() async throws {
        let server = try await HTTPEchoServer.start()
        defer { Task { try? await server.stop() } }
        try await Self.withRunDeployment(settings: ["tool.outboundAllow=127.0.0.1:\(server.port)", "run.drainSeconds=20"]) { deployment, processes in
            let http = deployment.gateway
            let project = try await Self.slowProject(deployment, server: server, ms: 3000)
            let created = try await http.send(.POST, "\(project.base)/runs", token: project.token, json: ["workflow": "slow"])
            let id = try #require((created.json["run"] as? [String: Any])?["id"] as? String, "\(created.text)")
            #expect(try await Self.eventually(within: .seconds(60)) { server.requests == 1 }, "the call did not start")
            let first = processes[7]
            let status = await first.stop(within: .seconds(40))
            #expect(status == 0, "\(first.output.suffix(4000))")

            processes[7] = try await deployment.start("sparkops-run")
            let done = try await Self.eventually(within: .seconds(60)) {
                try await http.send(.GET, "\(project.base)/runs/\(id)", token: project.token).json["status"] as? String == "succeeded"
            }
            #expect(done)
            let detail = try await http.send(.GET, "\(project.base)/runs/\(id)", token: project.token).json
            let attempts = (detail["steps"] as? [[String: Any]])?.first?["attempts"] as? [[String: Any]] ?? []
            #expect(attempts.count == 1)
            #expect(attempts.first?["status"] as? String == "succeeded")
            #expect((attempts.first?["worker"] as? String)?.contains("/\(first.pid)/") == true, "the draining process finished it: \(attempts)")
            let events = try await http.send(.GET, "\(project.base)/events?runId=\(id)", token: project.token).json["events"] as? [[String: Any]] ?? []
            #expect(!events.contains { ($0["message"] as? String)?.contains("worker stopped") == true }, "\(events)")
            #expect(server.requests == 1)
        }
    }
}

extension DistributedTests {
    @Test(
        "an API-only replica and a workers-only one: the workers wake on PostgreSQL notifications, not on their minute-long claim interval",
        .enabled(if: TestBackend.all.count > 1, "needs SPARKOPS_TEST_DATABASE_URL")
    )
    func apiAndWorkerReplicas() async throws {
        // The gateway's run service serves the API only; a claim interval of a minute leaves
        // the notifications as the only prompt wake-up.
        let (port, admin) = (try await FreePort.allocate(), try await FreePort.allocate())
        let workers = Deployment.Replica(executable: "sparkops-run", settings: ["run.port=\(port)", "run.adminPort=\(admin)", "run.mode=workers"], adminPort: admin)
        try await Self.withRunDeployment(settings: ["run.mode=api", "run.claimIntervalMilliseconds=60000"], replicas: [workers]) { deployment, processes in
            let http = deployment.gateway
            let project = try await Self.signIn(deployment, project: "replicas")
            for (path, source) in [("tools", "tool: echo\nkind: echo\n"), ("workflows", "name: two\nsteps:\n  - id: a\n    tool: echo\n  - id: b\n    tool: echo\n    needs: [a]\n")] {
                let applied = try await http.send(.POST, "\(project.base)/\(path)/apply", token: project.token, json: ["source": source])
                try #require(applied.status == 200, "\(applied.text)")
            }
            let started = ContinuousClock.now
            var ids: [String] = []
            for _ in 0 ..< 5 {
                let created = try await http.send(.POST, "\(project.base)/runs", token: project.token, json: ["workflow": "two"])
                ids.append(try #require((created.json["run"] as? [String: Any])?["id"] as? String, "\(created.text)"))
            }
            let done = try await Self.eventually(within: .seconds(50)) {
                try await Self.runs(project, via: http).filter { $0["status"] as? String == "succeeded" }.count == ids.count
            }
            let elapsed = ContinuousClock.now - started
            #expect(done, "5 runs of two steps did not finish in 50 s (\(elapsed)) with workers woken only by notifications:\n\(processes.last?.output.suffix(3000) ?? "")")
            let detail = try await http.send(.GET, "\(project.base)/runs/\(ids[0])", token: project.token).json
            let worker = ((detail["steps"] as? [[String: Any]])?.first?["attempts"] as? [[String: Any]])?.first?["worker"] as? String
            #expect(worker?.contains("/\(processes[8].pid)/") == true, "the workers-only replica ran it: \(worker ?? "none")")
            // Each run's second step was started by the worker whose commit of the first one
            // dispatched it, without a claim.
            let metrics = try await HTTPTestClient(baseURL: "http://127.0.0.1:\(admin)").send(.GET, "/metrics").text
            let takenOver = metrics.split(separator: "\n").first { $0.hasPrefix("sparkops_run_steps_started_total") && $0.contains("taken_over") }
            #expect((takenOver?.split(separator: " ").last).flatMap { Double($0) } ?? 0 >= 5, "no step was taken over:\n\(metrics.prefix(3000))")
        }
    }
}
