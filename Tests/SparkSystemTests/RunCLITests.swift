import Foundation
import NIOHTTP1
import SparkTesting
import Testing

/// `sparkops run` and `sparkops approval` against a running SparkOps with a fake LLM provider.
extension CLITests {
    static func catalog(_ llm: FakeLLMServer) -> String {
        """
        providers:
          - { name: fake-openai, api: openai, base_url: "\(llm.baseURL)", api_key_secret: FAKE_KEY, max_retries: 0 }
        models:
          - { provider: fake-openai, name: "*", input_per_million: 2000000, output_per_million: 8000000, context_window: 100000 }
        """
    }

    static let brief = """
        name: brief
        inputs: { topic: { type: string, required: true } }
        estimated_cost: 0.25
        steps:
          - id: draft
            agent: writer
            with: { prompt: "Write two lines on ${{ inputs.topic }}." }
          - id: review
            approval: { message: "Publish the brief on ${{ inputs.topic }}?" }
            needs: [draft]
          - id: publish
            tool: post
            needs: [review]
            with: { text: "${{ steps.draft.output.text }}", approved_by: "${{ steps.review.output.by }}" }
        outputs: { text: "${{ steps.publish.output.text }}" }
        """

    @Test("run start --watch shows an agent step, an approval and a tool step live, and exits 0; a failed run exits 1")
    func runStartWatch() async throws {
        let llm = try await FakeLLMServer.start()
        defer { Task { try? await llm.stop() } }
        try await TestCluster.run(backend: .sqlite, overrides: ["agent.catalog": Self.catalog(llm)]) { cluster in
            let credentials = "\(cluster.home)/cli/credentials.json"
            let cli = CLI(url: cluster.baseURL, credentials: credentials)
            #expect(try await cli("login", "--email", TestCluster.adminEmail, "--password", TestCluster.adminPassword).status == 0)
            let project = try #require(try await cli.json("project", "create", "briefs")["id"] as? String)
            let token = try await cluster.adminToken()
            let base = "/api/v1/projects/\(project)"
            #expect(try await cluster.http.send(.PUT, "\(base)/secrets/FAKE_KEY", token: token, json: ["value": "sk-test"]).status == 200)
            for (path, source) in [
                ("tools", "tool: post\nkind: echo\n"),
                ("agents", "agent: writer\nprovider: fake-openai\nmodel: m1\nsystem_prompt: You write briefs.\n"),
                ("workflows", Self.brief),
            ] {
                let applied = try await cluster.http.send(.POST, "\(base)/\(path)/apply", token: token, json: ["source": source])
                try #require(applied.status == 200, "\(applied.text)")
            }
            llm.enqueue(.text("Tides rise twice a day.\nThe moon pulls them."))

            let watch = try await ServiceProcess(
                "sparkops", ["run", "start", "brief", "--project", project, "--input", "topic=tides", "--watch"],
                logDirectory: cluster.home, environment: ["SPARKOPS_URL": cluster.baseURL, "SPARKOPS_CREDENTIALS": credentials]
            )
            // The watch shows the approval waiting; a human approves it from another terminal.
            var approval: String?
            let deadline = ContinuousClock.now + .seconds(90)
            while approval == nil, ContinuousClock.now < deadline {
                let pending = try await cli.json("approval", "list", "--project", project)
                approval = (pending["approvals"] as? [[String: Any]])?.first?["id"] as? String
                if approval == nil { try await Task.sleep(for: .milliseconds(200)) }
            }
            let id = try #require(approval, "no approval was asked for:\n\(watch.output)")
            // Its output is a file, not a terminal: what happened so far is there already, line
            // by line, while the run waits (it was held back until the end before).
            let shown = ContinuousClock.now + .seconds(30)
            while !watch.output.contains("awaiting_approval"), ContinuousClock.now < shown {
                try await Task.sleep(for: .milliseconds(100))
            }
            #expect(watch.output.contains("awaiting_approval"), "the watch showed nothing while the run waited:\n\(watch.output)")
            let approved = try await cli("approval", "approve", id, "--project", project, "--comment", "ship it")
            #expect(approved.status == 0, "\(approved.output)")
            #expect(approved.output.contains("approved \(id)"), "\(approved.output)")

            let status = await watch.exit(within: .seconds(90))
            let output = watch.output
            #expect(status == 0, "\(output)")
            for line in ["draft #1          running", "draft #1          succeeded", "review #1         awaiting_approval  Publish the brief on tides?", "approved by usr_", "publish #1        succeeded", "run               succeeded"] {
                #expect(output.contains(line), "missing \(line.debugDescription) in:\n\(output)")
            }
            #expect(output.contains("outputs: {"), "\(output)")
            #expect(output.contains("Tides rise twice a day."))

            // A run whose agent step fails: the watch exits 1, with the reason.
            llm.enqueue(.status(400, message: "bad request"))
            let failed = try await cli("run", "start", "brief", "--project", project, "--input", "topic=storms", "--watch")
            #expect(failed.status == 1, "\(failed.output)")
            #expect(failed.output.contains("run               failed"), "\(failed.output)")
            #expect(failed.output.contains("error: step_failed: step draft failed"), "\(failed.output)")

            // Bad input is refused before anything is sent, naming the option.
            let bad = try await cli("run", "start", "brief", "--project", project, "--input", "topic")
            #expect(bad.status != 0)
            #expect(bad.output.contains("--input takes name=value"), "\(bad.output)")
            let unknown = try await cli("run", "start", "brief", "--project", project, "--input", "topik=x")
            #expect(unknown.status != 0)
            #expect(unknown.output.contains("inputs.topik"), "\(unknown.output)")

            // Numbers given on the command line reach the run and come back as written.
            let numbers = "name: numbers\nsteps:\n  - id: echo\n    tool: post\n    with: { id: \"${{ inputs.id }}\", all: \"${{ inputs }}\", line: \"id ${{ inputs.id }}\" }\noutputs: { echoed: \"${{ steps.echo.output }}\" }\ninputs: { id: { type: integer }, price: { type: number }, big: { type: integer }, far: { type: number } }\n"
            try #require(try await cluster.http.send(.POST, "\(base)/workflows/apply", token: token, json: ["source": numbers]).status == 200)
            let exact = try await cli(
                "run", "start", "numbers", "--project", project, "--input", "id=9007199254740993", "--input", "price=1.50",
                "--input", "big=123456789012345678901234567890", "--input", "far=1e400", "--watch"
            )
            #expect(exact.status == 0, "\(exact.output)")
            for literal in ["\"id\": 9007199254740993", "\"price\": 1.50", "\"big\": 123456789012345678901234567890", "\"far\": 1e400", "\"line\": \"id 9007199254740993\""] {
                #expect(exact.output.contains(literal), "\(literal) not in \(exact.output)")
            }

            let listed = try await cli.json("run", "list", "--project", project, "--status", "succeeded")
            #expect((listed["runs"] as? [[String: Any]])?.count == 2)
            let brief = (listed["runs"] as? [[String: Any]])?.first { $0["workflowName"] as? String == "brief" }
            let table = try await cli("run", "get", try #require(brief?["id"] as? String), "--project", project)
            #expect(table.output.contains("publish"), "\(table.output)")
            // The run's estimate, from the workflow's estimated_cost.
            #expect(table.output.contains("ESTIMATE") && table.output.contains("$0.25"), "\(table.output)")
            // With --steps, every call of its agent step: the model, tokens, cost, duration, outcome.
            let calls = try await cli("run", "get", try #require(brief?["id"] as? String), "--project", project, "--steps")
            #expect(calls.status == 0, "\(calls.output)")
            let llmRow = calls.output.split(separator: "\n").first { $0.contains(" llm ") }.map(String.init) ?? ""
            #expect(llmRow.contains("draft") && llmRow.contains("fake-openai/m1") && llmRow.contains("100+20") && llmRow.contains("$0.00036") && llmRow.contains("stop"), "\(calls.output)")
        }
    }
}
