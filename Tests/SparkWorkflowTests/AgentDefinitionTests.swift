import Foundation
import SparkExpr
import SparkWorkflow
import Testing

@Suite("Agent, mcp and browser definitions")
struct AgentDefinitionTests {
    @Test("an agent reads with its defaults; its canonical form reads back to the same hash; a change is a new hash")
    func agent() throws {
        let yaml = """
            agent: researcher
            provider: openai
            model: gpt-4o-mini
            system_prompt: You answer from the handbook.
            tools: [search-handbook, fetch_page]
            """
        let agent = try AgentDefinition.read(yaml)
        #expect(agent.maxIterations == 8)
        #expect(agent.maxTokens == 1024)
        #expect(agent.temperature == nil)
        #expect(agent.timeout == .seconds(300))
        #expect(!agent.memory)
        #expect(try AgentDefinition.read(agent.canonicalJSON).contentHash == agent.contentHash)
        #expect(try AgentDefinition.read(yaml + "\ntemperature: 0.3").contentHash != agent.contentHash)
        let known: Set<String> = ["search-handbook", "fetch_page"]
        #expect(try AgentDefinition.read(yaml, tools: known).tools == ["search-handbook", "fetch_page"])
    }

    @Test("agent problems carry line, column and field", arguments: [
        ("agent: a\nprovider: p\nmodel: m\ntools: [fetch.page]", "4:9 tools[0]"),
        ("agent: a\nprovider: p\nmodel: m\ntools: [x, x]", "4:12 tools[1]"),
        ("agent: a\nprovider: p\nmodel: m\ntemperature: 3", "4:14 temperature"),
        ("agent: a\nprovider: p\nmodel: m\ntimeout: 2h", "4:10 timeout"),
        ("agent: a\nprovider: p\nmodel: m\nmemory: yes please", "4:9 memory"),
        ("agent: a\nprovider: p\nmodel: two words", "3:8 model"),
        ("agent: agent_x\nprovider: p\nmodel: m", "1:8 agent"),
        ("provider: p\nmodel: m", "1:1 agent"),
    ])
    func agentProblems(source: String, expected: String) {
        do {
            _ = try AgentDefinition.read(source)
            Issue.record("\(source) was accepted")
        } catch {
            let first = error.problems.first.map { "\($0.line):\($0.column) \($0.field)" }
            #expect(first == expected, "\(error.problems)")
        }
    }

    @Test("an agent naming a tool the project does not have is refused at the tool's place, with the nearest name")
    func unknownTool() {
        do {
            _ = try AgentDefinition.read("agent: a\nprovider: p\nmodel: m\ntools: [serch]\n", tools: ["search"])
            Issue.record("accepted")
        } catch {
            #expect(error.problems.map { "\($0.line):\($0.column) \($0.field)" } == ["4:9 tools[0]"])
            #expect(error.problems.first?.message.contains("did you mean \"search\"") == true)
        }
    }

    @Test("an mcp tool's input is {tool, arguments}; its server is code, a command or a url; the canonical form reads back")
    func mcp() throws {
        let stdio = try ToolDefinition.read("tool: calc\nkind: mcp\nside_effects: none\nmcp:\n  python: print(1)\n  tools: [add]\n  limits: { memory_mb: 128 }\n")
        guard case .code(.python, let code)? = stdio.mcp?.server else { throw SpecError("not inline python") }
        #expect(code.memoryMB == 128)
        #expect(stdio.mcp?.tools == ["add"])
        #expect(stdio.inputSchema == ToolDefinition.mcpInputSchema)
        #expect(try ToolDefinition.read(stdio.canonicalJSON).contentHash == stdio.contentHash)
        let remote = try ToolDefinition.read("tool: r\nkind: mcp\nside_effects: idempotent\nmcp:\n  url: https://mcp.example.com/mcp\n  auth: { secret: token }\n")
        #expect(remote.mcp?.auth?.secret == "token")
        #expect(try ToolDefinition.read(remote.canonicalJSON).contentHash == remote.contentHash)
        let command = try ToolDefinition.read("tool: g\nkind: mcp\nside_effects: none\nmcp:\n  command: [/usr/local/bin/mcp-git, --repo, /srv]\n")
        guard case .command(let argv, _)? = command.mcp?.server else { throw SpecError("not a command") }
        #expect(argv == ["/usr/local/bin/mcp-git", "--repo", "/srv"])
        #expect(throws: WorkflowValidationError.self) { try ToolDefinition.read("tool: memory_x\nkind: echo") }
    }

    @Test("a browser tool defaults to text of {url}, and reads only")
    func browser() throws {
        let page = try ToolDefinition.read("tool: page\nkind: browser\n")
        #expect(page.sideEffects == .none)
        #expect(page.browser?.format == .text)
        #expect(page.browser?.url == "${{ input.url }}")
        #expect(page.inputSchema == ToolDefinition.browserInputSchema)
        let shot = try ToolDefinition.read("tool: shot\nkind: browser\nbrowser: { format: screenshot, width: 800, height: 600, wait: 1s }\n")
        #expect(shot.browser?.width == 800)
        #expect(shot.browser?.wait == .seconds(1))
        #expect(try ToolDefinition.read(shot.canonicalJSON).contentHash == shot.contentHash)
    }

    struct SpecError: Error, CustomStringConvertible {
        var description: String
        init(_ description: String) { self.description = description }
    }
}
