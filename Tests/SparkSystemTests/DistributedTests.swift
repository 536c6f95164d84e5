import Foundation
import NIOHTTP1
import SparkTesting
import Testing

/// The project service and the gateway as separate processes, started from the built executables
/// the way an operator runs them: certificates from `sparkops certs init`, configuration by `--set`.
@Suite("Services as separate processes", .serialized)
struct DistributedTests {
    /// Ports, home and configuration of one deployment on loopback.
    struct Deployment {
        let home: String
        let gatewayPort: Int
        let gatewayAdminPort: Int
        let projectAdminPort: Int
        let workflowAdminPort: Int
        let toolAdminPort: Int
        let agentAdminPort: Int
        let policyAdminPort: Int
        let budgetAdminPort: Int
        let runAdminPort: Int
        var settings: [String]

        static func make(databaseURL: String?, redisURL: String?) async throws -> Deployment {
            let home = FileManager.default.temporaryDirectory.appending(path: "sparkops-system-\(UUID().uuidString)").path
            try FileManager.default.createDirectory(atPath: home, withIntermediateDirectories: true)
            let ports = (
                gateway: try await FreePort.allocate(), gatewayAdmin: try await FreePort.allocate(),
                project: try await FreePort.allocate(), projectAdmin: try await FreePort.allocate(),
                workflow: try await FreePort.allocate(), workflowAdmin: try await FreePort.allocate(),
                tool: try await FreePort.allocate(), toolAdmin: try await FreePort.allocate(),
                agent: try await FreePort.allocate(), agentAdmin: try await FreePort.allocate(),
                policy: try await FreePort.allocate(), policyAdmin: try await FreePort.allocate(),
                budget: try await FreePort.allocate(), budgetAdmin: try await FreePort.allocate(),
                run: try await FreePort.allocate(), runAdmin: try await FreePort.allocate()
            )
            var settings = [
                "home=\(home)",
                "gateway.port=\(ports.gateway)",
                "gateway.adminPort=\(ports.gatewayAdmin)",
                "project.port=\(ports.project)",
                "project.adminPort=\(ports.projectAdmin)",
                "workflow.port=\(ports.workflow)",
                "workflow.adminPort=\(ports.workflowAdmin)",
                "tool.port=\(ports.tool)",
                "tool.adminPort=\(ports.toolAdmin)",
                "agent.port=\(ports.agent)",
                "agent.adminPort=\(ports.agentAdmin)",
                "policy.port=\(ports.policy)",
                "policy.adminPort=\(ports.policyAdmin)",
                "budget.port=\(ports.budget)",
                "budget.adminPort=\(ports.budgetAdmin)",
                "run.port=\(ports.run)",
                "run.adminPort=\(ports.runAdmin)",
                "tool.masterKeys=system:\(Data((0 ..< 32).map { _ in UInt8.random(in: 0 ... 255) }).base64EncodedString())",
                "project.bcryptCost=4",
                "admin.email=\(TestCluster.adminEmail)",
                "admin.password=\(TestCluster.adminPassword)",
                "log.level=info",
            ]
            if let databaseURL {
                settings.append("database.url=\(databaseURL)")
                settings.append("database.maxConnections=4")
            }
            if let redisURL {
                settings.append("redis.url=\(redisURL)")
                settings.append("redis.keyPrefix=system-\(UUID().uuidString.prefix(8))")
            }
            return Deployment(
                home: home, gatewayPort: ports.gateway, gatewayAdminPort: ports.gatewayAdmin,
                projectAdminPort: ports.projectAdmin, workflowAdminPort: ports.workflowAdmin, toolAdminPort: ports.toolAdmin,
                agentAdminPort: ports.agentAdmin, policyAdminPort: ports.policyAdmin, budgetAdminPort: ports.budgetAdmin, runAdminPort: ports.runAdmin, settings: settings
            )
        }

        var gateway: HTTPTestClient { HTTPTestClient(baseURL: "http://127.0.0.1:\(self.gatewayPort)") }

        /// `sparkops dev` with the deployment's settings (and `extra`), once it announces its API
        /// (bounded by 90 s; stopped and thrown when it does not).
        func startDev(_ extra: [String] = []) async throws -> ServiceProcess {
            let dev = try await ServiceProcess("sparkops", ["dev"] + (self.settings + extra).flatMap { ["--set", $0] }, logDirectory: self.home)
            let announcement = "API on http://localhost:\(self.gatewayPort)"
            let deadline = ContinuousClock.now + .seconds(90)
            while !dev.output.contains(announcement) {
                guard dev.isRunning, ContinuousClock.now < deadline else {
                    _ = await dev.stop()
                    throw TestSetupError(description: "no \(announcement.debugDescription) line within 90 s:\n\(dev.output)")
                }
                try await Task.sleep(for: .milliseconds(10))
            }
            return dev
        }

        func start(_ executable: String) async throws -> ServiceProcess {
            try await ServiceProcess(executable, self.settings.flatMap { ["--set", $0] }, logDirectory: self.home)
        }

        /// A second process of one service: its own settings (ports) on top of the deployment's.
        struct Replica {
            var executable: String
            var settings: [String]
            var adminPort: Int
        }

        /// Starts the project service, the gateway, the workflow, tool, agent, policy, budget and run services (in that
        /// order in the result), then `replicas`, and waits (bounded) until all report ready.
        func startAll(replicas: [Replica] = []) async throws -> [ServiceProcess] {
            var processes: [ServiceProcess] = []
            for executable in ["sparkops-project", "sparkops-gateway", "sparkops-workflow", "sparkops-tool", "sparkops-agent", "sparkops-policy", "sparkops-budget", "sparkops-run"] {
                processes.append(try await self.start(executable))
            }
            for replica in replicas {
                processes.append(try await ServiceProcess(replica.executable, (self.settings + replica.settings).flatMap { ["--set", $0] }, logDirectory: self.home))
            }
            let adminPorts = [self.projectAdminPort, self.gatewayAdminPort, self.workflowAdminPort, self.toolAdminPort, self.agentAdminPort, self.policyAdminPort, self.budgetAdminPort, self.runAdminPort]
            let probes = (adminPorts + replicas.map(\.adminPort)).map { HTTPTestClient(baseURL: "http://127.0.0.1:\($0)") }
            let deadline = ContinuousClock.now + .seconds(60)
            while ContinuousClock.now < deadline {
                if let exited = processes.first(where: { !$0.isRunning }) {
                    throw TestSetupError(description: "\(exited.name) exited while starting:\n\(exited.output)")
                }
                var ready = true
                for probe in probes {
                    let reply = try? await probe.send(.GET, "/readyz")
                    ready = ready && reply?.status == 200
                }
                if ready { return processes }
                try await Task.sleep(for: .milliseconds(100))
            }
            for process in processes { _ = await process.stop() }
            throw TestSetupError(description: "not ready within 60 s:\n" + processes.map { "\($0.name):\n\($0.output)" }.joined(separator: "\n"))
        }
    }

    @Test("project service, workflow service and gateway serve as separate processes, stop gracefully and keep their data across restarts", arguments: TestBackend.all)
    func twoProcesses(backend: TestBackend) async throws {
        try await backend.withDatabase { databaseURL in
            let deployment = try await Deployment.make(databaseURL: databaseURL, redisURL: backend.redisURL)
            defer { try? FileManager.default.removeItem(atPath: deployment.home) }

            let certs = try await ServiceProcess.run(
                "sparkops", ["certs", "init", "--dir", "\(deployment.home)/certs", "--services", "gateway,project,workflow,tool,agent,policy,budget,run"]
            )
            #expect(certs.status == 0, "\(certs.output)")

            var processes = try await deployment.startAll()
            let http = deployment.gateway
            let login = try await http.send(.POST, "/api/v1/auth/login", json: ["email": TestCluster.adminEmail, "password": TestCluster.adminPassword])
            #expect(login.status == 200, "\(login.text)")
            let token = try #require(login.json["accessToken"] as? String)
            let created = try await http.send(.POST, "/api/v1/projects", token: token, json: ["name": "across-processes"])
            #expect(created.status == 201, "\(created.text)")
            let projectID = try #require(created.json["id"] as? String)
            let keyReply = try await http.send(.POST, "/api/v1/projects/\(projectID)/api-keys", token: token, json: ["name": "reader", "role": "ROLE_VIEWER"])
            #expect(keyReply.status == 201 || keyReply.status == 200, "\(keyReply.text)")
            let key = try #require(keyReply.json["key"] as? String)

            let read = try await http.send(.GET, "/api/v1/projects/\(projectID)", token: key)
            #expect(read.status == 200)
            #expect(read.json["name"] as? String == "across-processes")
            let write = try await http.send(.PATCH, "/api/v1/projects/\(projectID)", token: key, json: ["description": "no"])
            #expect(write.status == 403)

            // The project service counted the gateway's calls, which crossed processes over SparkWire.
            let metrics = try await HTTPTestClient(baseURL: "http://127.0.0.1:\(deployment.projectAdminPort)").send(.GET, "/metrics")
            #expect(metrics.status == 200)
            #expect(metrics.text.contains("sparkops_rpc_server_calls_total"))
            #expect(metrics.text.contains("CreateProject"))
            #expect(metrics.text.contains(#"sparkops_store_connection_wait_seconds_count{service="project"}"#))
            #expect(metrics.text.contains(#"sparkops_store_connections_in_use{service="project"}"#))
            // Each call counts once, under its method and status, however often it repeats.
            let getCalls = #"sparkops_rpc_server_calls_total{service="project",method="GetProject",code="OK"}"#
            let getDurations = #"sparkops_rpc_server_duration_seconds_count{service="project",method="GetProject"}"#
            let before = (calls: Self.sample(metrics.text, getCalls), durations: Self.sample(metrics.text, getDurations))
            for _ in 0 ..< 3 {
                #expect(try await http.send(.GET, "/api/v1/projects/\(projectID)", token: key).status == 200)
            }
            let after = try await HTTPTestClient(baseURL: "http://127.0.0.1:\(deployment.projectAdminPort)").send(.GET, "/metrics").text
            #expect(Self.sample(after, getCalls) == before.calls + 3, "\(after)")
            #expect(Self.sample(after, getDurations) == before.durations + 3)
            // The gateway counts its HTTP requests by route and status.
            let gatewayMetrics = try await HTTPTestClient(baseURL: "http://127.0.0.1:\(deployment.gatewayAdminPort)").send(.GET, "/metrics")
            #expect(gatewayMetrics.text.contains(#"hb_requests{http_route="/api/v1/projects/{project_id}",http_request_method="PATCH",http_response_status_code="403"}"#), "\(gatewayMetrics.text.prefix(2000))")

            // A tool applied and invoked through the gateway, in the tool service's own process.
            let tool = try await http.send(.POST, "/api/v1/projects/\(projectID)/tools/apply", token: token, json: ["source": "tool: repeat\nkind: echo"])
            #expect(tool.status == 200, "\(tool.text)")
            let invoked = try await http.send(.POST, "/api/v1/projects/\(projectID)/tools/repeat/invoke", token: token, json: ["input": ["n": 1], "idempotencyKey": "k"])
            #expect((invoked.json["output"] as? [String: Any])?["n"] as? Int == 1, "\(invoked.text)")

            // SIGTERM: both finish and exit 0.
            for process in processes.reversed() {
                let status = await process.stop()
                #expect(status == 0, "\(process.name) did not exit cleanly:\n\(process.output)")
            }

            // Restarted, they serve the same project to the same key.
            processes = try await deployment.startAll()
            let again = try await http.send(.GET, "/api/v1/projects/\(projectID)", token: key)
            #expect(again.status == 200, "\(again.text)")
            let replayed = try await http.send(.POST, "/api/v1/projects/\(projectID)/tools/repeat/invoke", token: token, json: ["input": ["n": 1], "idempotencyKey": "k"])
            #expect(replayed.json["replayed"] as? Bool == true, "\(replayed.text)")
            #expect(again.json["name"] as? String == "across-processes")
            for process in processes.reversed() {
                let status = await process.stop()
                #expect(status == 0, "\(process.name) did not exit cleanly:\n\(process.output)")
            }
        }
    }

    @Test("the gateway reports not ready while the project service is down, and recovers when it returns")
    func peerOutage() async throws {
        let deployment = try await Deployment.make(databaseURL: nil, redisURL: nil)
        defer { try? FileManager.default.removeItem(atPath: deployment.home) }
        _ = try await ServiceProcess.run("sparkops", ["certs", "init", "--dir", "\(deployment.home)/certs", "--services", "gateway,project,workflow,tool,agent,policy,budget,run"])
        let processes = try await deployment.startAll()
        let token = try #require(try await deployment.gateway.send(
            .POST, "/api/v1/auth/login", json: ["email": TestCluster.adminEmail, "password": TestCluster.adminPassword]
        ).json["accessToken"] as? String)

        #expect(await processes[0].stop() == 0)
        let probe = HTTPTestClient(baseURL: "http://127.0.0.1:\(deployment.gatewayAdminPort)")
        var notReady = false
        let deadline = ContinuousClock.now + .seconds(20)
        while !notReady && ContinuousClock.now < deadline {
            notReady = (try await probe.send(.GET, "/readyz")).status == 503
            if !notReady { try await Task.sleep(for: .milliseconds(100)) }
        }
        #expect(notReady, "the gateway stayed ready without its peer")
        let during = try await deployment.gateway.send(.GET, "/api/v1/projects", token: token)
        #expect(during.status == 503)
        #expect(during.errorCode == "UNAVAILABLE")

        let project = try await deployment.start("sparkops-project")
        var recovered = false
        let recovery = ContinuousClock.now + .seconds(60)
        while !recovered && ContinuousClock.now < recovery {
            recovered = (try? await deployment.gateway.send(.GET, "/api/v1/projects", token: token))?.status == 200
            if !recovered { try await Task.sleep(for: .milliseconds(200)) }
        }
        #expect(recovered, "the gateway did not reconnect:\n\(processes[1].output)")
        #expect(await project.stop() == 0)
        #expect(await processes[1].stop() == 0)
        #expect(await processes[2].stop() == 0)
        #expect(await processes[3].stop() == 0)
        #expect(await processes[4].stop() == 0)
        #expect(await processes[5].stop() == 0)
        #expect(await processes[6].stop() == 0)
        #expect(await processes[7].stop() == 0)
    }

    @Test(
        "with Redis, a WebSocket ticket issued by one gateway opens a socket on another, once",
        .enabled(if: TestBackend.all.contains { $0.redisURL != nil }, "needs SPARKOPS_TEST_DATABASE_URL and SPARKOPS_TEST_REDIS_URL")
    )
    func ticketsAcrossGateways() async throws {
        let backend = try #require(TestBackend.all.first { $0.redisURL != nil })
        try await backend.withDatabase { databaseURL in
            let deployment = try await Deployment.make(databaseURL: databaseURL, redisURL: backend.redisURL)
            defer { try? FileManager.default.removeItem(atPath: deployment.home) }
            _ = try await ServiceProcess.run("sparkops", ["certs", "init", "--dir", "\(deployment.home)/certs", "--services", "gateway,project,workflow,tool,agent,policy,budget,run"])
            var processes = try await deployment.startAll()
            // A second gateway replica sharing the same project service and Redis.
            let (secondPort, secondAdminPort) = (try await FreePort.allocate(), try await FreePort.allocate())
            let second = try await ServiceProcess(
                "sparkops-gateway",
                (deployment.settings + ["gateway.port=\(secondPort)", "gateway.adminPort=\(secondAdminPort)"]).flatMap { ["--set", $0] },
                logDirectory: deployment.home
            )
            processes.append(second)
            let probe = HTTPTestClient(baseURL: "http://127.0.0.1:\(secondAdminPort)")
            let deadline = ContinuousClock.now + .seconds(60)
            while (try? await probe.send(.GET, "/readyz"))?.status != 200 {
                guard second.isRunning, ContinuousClock.now < deadline else {
                    for process in processes { _ = await process.stop() }
                    throw TestSetupError(description: "the second gateway did not become ready:\n\(second.output)")
                }
                try await Task.sleep(for: .milliseconds(100))
            }

            let token = try #require(try await deployment.gateway.send(
                .POST, "/api/v1/auth/login", json: ["email": TestCluster.adminEmail, "password": TestCluster.adminPassword]
            ).json["accessToken"] as? String)
            let issued = try await deployment.gateway.send(.POST, "/api/v1/ws/tickets", token: token)
            #expect(issued.status == 201, "\(issued.text)")
            let ticket = try #require(issued.json["ticket"] as? String)

            // Issued by the first gateway, used on the second.
            let used = try await WebSocketTestClient.converse(port: secondPort, path: "/api/v1/ws?ticket=\(ticket)") { socket in
                #expect(try await socket.receive()["type"] as? String == "ready")
                try await socket.send(["type": "ping"])
                #expect(try await socket.receive()["type"] as? String == "pong")
            }
            #expect(used.serverCloseCode == nil || used.serverCloseCode == 1000)
            // Used once: neither gateway takes it again.
            for port in [deployment.gatewayPort, secondPort] {
                let again = try await WebSocketTestClient.converse(port: port, path: "/api/v1/ws?ticket=\(ticket)") { socket async throws in
                    let refused = try await socket.receive()
                    #expect(refused["code"] as? String == "UNAUTHENTICATED")
                }
                #expect(again.serverCloseCode == 1008)
            }
            for process in processes.reversed() {
                #expect(await process.stop() == 0, "\(process.name):\n\(process.output)")
            }
        }
    }

    @Test("executables refuse bad arguments and configuration with a message naming them")
    func badArguments() async throws {
        let noValue = try await ServiceProcess.run("sparkops-project", ["--set", "project.port"])
        #expect(noValue.status != 0)
        #expect(noValue.output.contains("--set takes key=value"))

        let unknown = try await ServiceProcess.run("sparkops-gateway", ["--frobnicate"])
        #expect(unknown.status != 0)
        #expect(unknown.output.contains("--frobnicate"))

        let badPort = try await ServiceProcess.run("sparkops-project", ["--set", "project.port=eighty", "--set", "home=\(FileManager.default.temporaryDirectory.path)/sparkops-none"])
        #expect(badPort.status != 0)
        #expect(badPort.output.contains("project.port"))

        let service = try await ServiceProcess.run("sparkops", ["serve", "wizard"])
        #expect(service.status != 0)
        #expect(service.output.contains("wizard"))
    }

    /// The value of the Prometheus sample whose name and labels are `series` (0 when absent).
    static func sample(_ text: String, _ series: String) -> Double {
        for line in text.split(separator: "\n") where line.hasPrefix(series + " ") {
            return Double(line.dropFirst(series.count + 1)) ?? .nan
        }
        return 0
    }

    @Test("sparkops dev prints its API line only once the API serves requests")
    func devAnnouncesWhenReady() async throws {
        let deployment = try await Deployment.make(databaseURL: nil, redisURL: nil)
        defer { try? FileManager.default.removeItem(atPath: deployment.home) }
        let dev = try await deployment.startDev()
        let announcement = "API on http://localhost:\(deployment.gatewayPort)"
        // The very next request is served: no 503 while the project service is still starting.
        let login = try await deployment.gateway.send(.POST, "/api/v1/auth/login", json: ["email": TestCluster.adminEmail, "password": TestCluster.adminPassword])
        #expect(login.status == 200, "\(login.text)")
        let output = dev.output
        let starting = try #require(output.range(of: "SparkOps dev: starting"))
        #expect(starting.lowerBound < output.range(of: announcement)!.lowerBound)
        #expect(await dev.stop() == 0)
    }

    /// `gateway.adminPort` for `SPARKOPS_GATEWAY_ADMIN_PORT`.
    static func settingKey(environment name: String) -> String {
        let parts = name.dropFirst("SPARKOPS_".count).lowercased().split(separator: "_")
        return "\(parts[0])." + (parts.count == 3 ? "adminPort" : "port")
    }

    /// Each port setting alone, then all of them together, as environment variables.
    static let portSettings: [[String: Int]] = [
        ["SPARKOPS_GATEWAY_PORT": 0],
        ["SPARKOPS_GATEWAY_ADMIN_PORT": 0],
        ["SPARKOPS_PROJECT_PORT": 0],
        ["SPARKOPS_PROJECT_ADMIN_PORT": 0],
        ["SPARKOPS_GATEWAY_PORT": 0, "SPARKOPS_GATEWAY_ADMIN_PORT": 0, "SPARKOPS_PROJECT_PORT": 0, "SPARKOPS_PROJECT_ADMIN_PORT": 0],
    ]

    @Test("sparkops dev announces a ready API whichever ports are set", arguments: portSettings)
    func devOnOtherPorts(ports: [String: Int]) async throws {
        // Every other port is one the system gave (a `make run` beside the tests holds the
        // defaults); the ports of the case, and the admin ports they move along, come from the
        // environment.
        let deployment = try await Deployment.make(databaseURL: nil, redisURL: nil)
        let home = deployment.home
        defer { try? FileManager.default.removeItem(atPath: home) }
        var environment: [String: String] = [:]
        var fromEnvironment: Set<String> = []
        for name in ports.keys {
            // A port set alone moves its admin port along (the project's by 2000, the gateway's by
            // 1000): keep that one free too.
            let derived: [Int] = switch name {
            case "SPARKOPS_PROJECT_PORT" where ports["SPARKOPS_PROJECT_ADMIN_PORT"] == nil: [2000]
            case "SPARKOPS_GATEWAY_PORT" where ports["SPARKOPS_GATEWAY_ADMIN_PORT"] == nil: [1000]
            default: []
            }
            environment[name] = "\(try await FreePort.allocate(alongside: derived))"
            let key = Self.settingKey(environment: name)
            fromEnvironment.insert(key)
            if !derived.isEmpty { fromEnvironment.insert(key.replacingOccurrences(of: ".port", with: ".adminPort")) }
        }
        let apiPort = environment["SPARKOPS_GATEWAY_PORT"] ?? "\(deployment.gatewayPort)"
        let settings = deployment.settings.filter { setting in
            !fromEnvironment.contains(String(setting.prefix { $0 != "=" }))
        }
        let dev = try await ServiceProcess("sparkops", ["dev"] + settings.flatMap { ["--set", $0] }, logDirectory: home, environment: environment)
        let announcement = "API on http://localhost:\(apiPort)"
        let deadline = ContinuousClock.now + .seconds(90)
        while !dev.output.contains(announcement) {
            guard dev.isRunning, ContinuousClock.now < deadline else {
                _ = await dev.stop()
                Issue.record("\(environment): no \(announcement.debugDescription) line:\n\(dev.output)")
                return
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        let login: HTTPTestClient.Reply
        do {
            login = try await HTTPTestClient(baseURL: "http://127.0.0.1:\(apiPort)").send(
                .POST, "/api/v1/auth/login", json: ["email": TestCluster.adminEmail, "password": TestCluster.adminPassword]
            )
        } catch {
            _ = await dev.stop()
            Issue.record("\(environment): the announced API refused the first request (\(error)):\n\(dev.output)")
            return
        }
        #expect(login.status == 200, "\(environment): \(login.text)")
        #expect(await dev.stop() == 0, "\(dev.output)")
    }
}
