import Foundation
import NIOHTTP1
import SparkTesting
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Budgets across processes: a paying caller killed mid-call, and two budget service replicas on
/// one PostgreSQL database under concurrent load.
extension DistributedTests {
    /// Signs in as the administrator and creates a project: its API base path and a token.
    static func signIn(_ deployment: Deployment, project name: String) async throws -> (base: String, token: String) {
        let login = try await deployment.gateway.send(.POST, "/api/v1/auth/login", json: ["email": TestCluster.adminEmail, "password": TestCluster.adminPassword])
        let token = try #require(login.json["accessToken"] as? String, "\(login.text)")
        let created = try await deployment.gateway.send(.POST, "/api/v1/projects", token: token, json: ["name": name])
        let id = try #require(created.json["id"] as? String, "\(created.text)")
        return ("/api/v1/projects/\(id)", token)
    }

    /// Waits (bounded) until the budget's current usage satisfies `condition`; returns that usage.
    static func usage(
        of budget: String, _ project: (base: String, token: String), via http: HTTPTestClient, within limit: Duration,
        until condition: ([String: Any]) -> Bool
    ) async throws -> [String: Any] {
        let deadline = ContinuousClock.now + limit
        var usage: [String: Any] = [:]
        repeat {
            usage = try await http.send(.GET, "\(project.base)/budgets/\(budget)", token: project.token).json["usage"] as? [String: Any] ?? [:]
            if condition(usage) { return usage }
            try await Task.sleep(for: .milliseconds(200))
        } while ContinuousClock.now < deadline
        throw TestSetupError(description: "budget \(budget) did not reach the expected usage within \(limit): \(usage)")
    }

    @Test("a tool service killed between reserve and settle leaves a hold that expires and frees the budget", arguments: TestBackend.all)
    func killedCallerFreesBudget(backend: TestBackend) async throws {
        try await backend.withDatabase { databaseURL in
            var deployment = try await Deployment.make(databaseURL: databaseURL, redisURL: backend.redisURL)
            defer { try? FileManager.default.removeItem(atPath: deployment.home) }
            // A call's hold lasts its timeout (20 s) and 1 s more; the sweeper looks every second.
            deployment.settings += ["tool.budgetHoldSeconds=1", "budget.sweepIntervalSeconds=1"]
            _ = try await ServiceProcess.run("sparkops", ["certs", "init", "--dir", "\(deployment.home)/certs", "--services", "gateway,project,workflow,tool,agent,policy,budget,run"])
            var processes = try await deployment.startAll()
            let http = deployment.gateway
            let project = try await Self.signIn(deployment, project: "killed-caller")

            #expect(try await http.send(.PUT, "\(project.base)/budgets/tools", token: project.token, json: ["limitMicros": "1000000", "period": "total"]).status == 200)
            let slow = "tool: slow\nkind: python\nside_effects: none\ncost_micros: 600000\ntimeout: 20s\npython:\n  code: |\n    import time\n    time.sleep(25)\n"
            let quick = "tool: quick\nkind: echo\ncost_micros: 600000\n"
            for source in [slow, quick] {
                let applied = try await http.send(.POST, "\(project.base)/tools/apply", token: project.token, json: ["source": source])
                try #require(applied.status == 200, "\(applied.text)")
            }

            // The slow call holds 0.6 USD while it runs; the quick one does not fit beside it.
            let call = Task { try? await http.send(.POST, "\(project.base)/tools/slow/invoke", token: project.token, json: ["input": [:], "idempotencyKey": "slow-1"]) }
            let held = try await Self.usage(of: "tools", project, via: http, within: .seconds(60)) { ReservationLoad.micros($0["reservedMicros"]) == 600_000 }
            #expect(ReservationLoad.micros(held["spentMicros"]) == 0)
            let refused = try await http.send(.POST, "\(project.base)/tools/quick/invoke", token: project.token, json: ["input": [:], "idempotencyKey": "quick-1"])
            #expect(refused.status == 429, "\(refused.text)")

            // The tool service dies mid-call: nothing will settle or release the hold.
            await processes[3].kill()
            #expect(!processes[3].isRunning)
            _ = await call.value
            let freed = try await Self.usage(of: "tools", project, via: http, within: .seconds(120)) { ReservationLoad.micros($0["reservedMicros"]) == 0 }
            #expect(ReservationLoad.micros(freed["spentMicros"]) == 0, "\(freed)")
            let ledger = try await http.send(.GET, "\(project.base)/budgets/tools/ledger", token: project.token)
            let kinds = (ledger.json["entries"] as? [[String: Any]] ?? []).compactMap { $0["kind"] as? String }
            #expect(kinds.first == "expire" && kinds.contains("reserve"), "\(ledger.text)")

            // A new tool service process: the freed budget pays for the call refused before.
            processes[3] = try await deployment.start("sparkops-tool")
            let deadline = ContinuousClock.now + .seconds(60)
            var paid = try await http.send(.POST, "\(project.base)/tools/quick/invoke", token: project.token, json: ["input": [:], "idempotencyKey": "quick-1"])
            while paid.status == 503, ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(200))
                paid = try await http.send(.POST, "\(project.base)/tools/quick/invoke", token: project.token, json: ["input": [:], "idempotencyKey": "quick-1"])
            }
            #expect(paid.status == 200, "\(paid.text)")
            let after = try await http.send(.GET, "\(project.base)/budgets/tools", token: project.token).json["usage"] as? [String: Any] ?? [:]
            #expect(ReservationLoad.micros(after["spentMicros"]) == 600_000, "\(after)")
            for process in processes.reversed() {
                #expect(await process.stop() == 0, "\(process.name):\n\(process.output)")
            }
        }
    }

    @Test(
        "two budget service processes on one PostgreSQL database, under 200 concurrent reservations, never overspend",
        .enabled(if: TestBackend.all.count > 1, "needs SPARKOPS_TEST_DATABASE_URL")
    )
    func twoBudgetReplicas() async throws {
        let backend = try #require(TestBackend.all.first { if case .postgres = $0 { true } else { false } })
        try await backend.withDatabase { databaseURL in
            var deployment = try await Deployment.make(databaseURL: databaseURL, redisURL: backend.redisURL)
            defer { try? FileManager.default.removeItem(atPath: deployment.home) }
            let (port, adminPort) = (try await FreePort.allocate(), try await FreePort.allocate())
            let firstPort = try #require(deployment.settings.first { $0.hasPrefix("budget.port=") }?.split(separator: "=").last)
            // Every caller, the gateway included, spreads its budget calls over both replicas.
            deployment.settings.append("budget.address=127.0.0.1:\(firstPort),127.0.0.1:\(port)")
            _ = try await ServiceProcess.run("sparkops", ["certs", "init", "--dir", "\(deployment.home)/certs", "--services", "gateway,project,workflow,tool,agent,policy,budget,run"])
            let processes = try await deployment.startAll(replicas: [
                Deployment.Replica(executable: "sparkops-budget", settings: ["budget.port=\(port)", "budget.adminPort=\(adminPort)"], adminPort: adminPort)
            ])
            let project = try await Self.signIn(deployment, project: "two-replicas")

            let load = try await ReservationLoad.run(clients: [deployment.gateway], base: project.base, token: project.token)
            #expect(load.problems.isEmpty, "\(load.problems)")
            #expect(load.admitted.count > 0 && load.admitted.count < 200)

            // Both replicas admitted reservations.
            for metricsPort in [deployment.budgetAdminPort, adminPort] {
                let metrics = try await HTTPTestClient(baseURL: "http://127.0.0.1:\(metricsPort)").send(.GET, "/metrics").text
                let admitted = Self.sample(metrics, #"sparkops_rpc_server_calls_total{service="budget",method="Reserve",code="OK"}"#)
                #expect(admitted >= 10, "the replica on admin port \(metricsPort) admitted \(admitted):\n\(metrics.prefix(3000))")
            }
            for process in processes.reversed() {
                #expect(await process.stop() == 0, "\(process.name):\n\(process.output)")
            }
        }
    }
}
