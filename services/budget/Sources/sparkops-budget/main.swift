// sparkops-budget: the budget service as its own process. `sparkops-budget --help` lists options.
import SparkKit
import SparkRuntime

await SparkRuntime.main(serving: [.budget])
