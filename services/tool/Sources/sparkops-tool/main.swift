// sparkops-tool: the tool service as its own process. `sparkops-tool --help` lists options.
import SparkKit
import SparkRuntime

await SparkRuntime.main(serving: [.tool])
