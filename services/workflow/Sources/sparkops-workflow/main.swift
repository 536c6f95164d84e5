// sparkops-workflow: the workflow service as its own process. `sparkops-workflow --help` lists options.
import SparkKit
import SparkRuntime

await SparkRuntime.main(serving: [.workflow])
