// sparkops-policy: the policy service as its own process. `sparkops-policy --help` lists options.
import SparkKit
import SparkRuntime

await SparkRuntime.main(serving: [.policy])
