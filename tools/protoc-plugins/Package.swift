// swift-tools-version:6.1
// The protoc plugins `make proto` runs, built from pinned packages in their own scratch folder so
// the main build never compiles them.
import PackageDescription

let package = Package(
    name: "sparkops-protoc-plugins",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(url: "https://github.com/apple/swift-protobuf.git", exact: "1.39.0"),
        .package(url: "https://github.com/grpc/grpc-swift-protobuf.git", exact: "2.4.1"),
    ],
    targets: [
        .executableTarget(
            name: "protoc-gen-sparkops",
            dependencies: [
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "SwiftProtobufPluginLibrary", package: "swift-protobuf"),
            ],
            swiftSettings: [.swiftLanguageMode(.v6)]
        )
    ]
)
