// sparkops-run: the run service as its own process. `sparkops-run --help` lists options.
import SparkKit
import SparkRuntime

await SparkRuntime.main(serving: [.run])
