// sparkops-gateway: the HTTP/JSON and WebSocket gateway as its own process.
import SparkKit
import SparkRuntime

await SparkRuntime.main(serving: [.gateway])
