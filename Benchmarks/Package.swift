// swift-tools-version:6.1
// SparkOps benchmarks: a package of their own so that the main build never pays for them.
import PackageDescription

let package = Package(
    name: "sparkops-benchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "sparkops", path: ".."),
        .package(url: "https://github.com/grpc/grpc-swift-2.git", from: "2.4.3"),
        .package(url: "https://github.com/grpc/grpc-swift-nio-transport.git", from: "2.9.2"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-protobuf.git", from: "1.39.0"),
        .package(url: "https://github.com/apple/swift-collections.git", from: "1.6.0"),
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.37.0"),
        .package(url: "https://github.com/vapor/sql-kit.git", from: "3.36.0"),
    ],
    targets: [
        .executableTarget(
            name: "WireBenchmarks",
            dependencies: [
                .product(name: "SparkWire", package: "sparkops"),
                .product(name: "SparkProto", package: "sparkops"),
                .product(name: "SparkKit", package: "sparkops"),
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCInProcessTransport", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "DequeModule", package: "swift-collections"),
            ],
            swiftSettings: [.swiftLanguageMode(.v6)]
        ),
        .target(name: "BenchmarkSupport", swiftSettings: [.swiftLanguageMode(.v6)]),
        .executableTarget(
            name: "ToolBenchmarks",
            dependencies: [
                "BenchmarkSupport",
                .product(name: "SparkKit", package: "sparkops"),
                .product(name: "SparkTesting", package: "sparkops"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
            ],
            swiftSettings: [.swiftLanguageMode(.v6)]
        ),
        .executableTarget(
            name: "PolicyBenchmarks",
            dependencies: [
                "BenchmarkSupport",
                .product(name: "SparkKit", package: "sparkops"),
                .product(name: "SparkProto", package: "sparkops"),
                .product(name: "SparkWire", package: "sparkops"),
                .product(name: "SparkTesting", package: "sparkops"),
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "SQLKit", package: "sql-kit"),
            ],
            swiftSettings: [.swiftLanguageMode(.v6)]
        ),
        .executableTarget(
            name: "RunBenchmarks",
            dependencies: [
                "BenchmarkSupport",
                .product(name: "SparkKit", package: "sparkops"),
                .product(name: "SparkTesting", package: "sparkops"),
            ],
            swiftSettings: [.swiftLanguageMode(.v6)]
        ),
    ]
)
