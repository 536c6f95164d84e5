// sparkops-project: the project service as its own process. `sparkops-project --help` lists options.
import SparkKit
import SparkRuntime

await SparkRuntime.main(serving: [.project])
