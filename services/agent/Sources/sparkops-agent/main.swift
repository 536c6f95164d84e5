// sparkops-agent: the agent service as its own process. `sparkops-agent --help` lists options.
import SparkKit
import SparkRuntime

await SparkRuntime.main(serving: [.agent])
