// The SparkWire fuzz target.
//
// `make fuzz-wire SECONDS=N` builds it with `-sanitize=fuzzer,address -DSPARKWIRE_FUZZ` and runs
// libFuzzer from the seed corpus in Tests/FuzzCorpus/wire. A normal build makes a replayer instead:
// `SparkWireFuzz FILE_OR_DIR...` runs inputs once (findings, the corpus), and
// `SparkWireFuzz --write-seeds DIR` writes the seed corpus.
import Foundation
import SparkWire

#if SPARKWIRE_FUZZ
import CSparkWireFuzz

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    WireFuzzing.run(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}

/// SwiftPM links an executable's entry point under this name; hand over to libFuzzer's driver.
@_cdecl("SparkWireFuzz_main")
public func sparkWireFuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var argc = argc
    var argv = argv
    return LLVMFuzzerRunDriver(&argc, &argv) { data, size in
        WireFuzzing.run(UnsafeRawBufferPointer(start: data, count: size))
        return 0
    }
}
#else
@main
struct SparkWireFuzzReplayer {
    static func main() throws {
        var arguments = Array(CommandLine.arguments.dropFirst())
        if arguments.first == "--write-seeds", arguments.count == 2 {
            let directory = URL(filePath: arguments[1])
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            for seed in WireFuzzing.seeds {
                try Data(seed.bytes).write(to: directory.appending(path: seed.name))
            }
            print("wrote \(WireFuzzing.seeds.count) seeds to \(directory.path)")
            return
        }
        if arguments.isEmpty { arguments = ["Tests/FuzzCorpus/wire"] }
        var count = 0
        for argument in arguments {
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: argument, isDirectory: &isDirectory) else {
                throw ReplayError(description: "no such file or directory: \(argument)")
            }
            let files = isDirectory.boolValue
                ? try FileManager.default.contentsOfDirectory(atPath: argument).sorted().map { "\(argument)/\($0)" }
                : [argument]
            for file in files {
                let data = try Data(contentsOf: URL(filePath: file))
                data.withUnsafeBytes { WireFuzzing.run($0) }
                count += 1
            }
        }
        print("replayed \(count) inputs without a finding")
    }
}

struct ReplayError: Error, CustomStringConvertible {
    var description: String
}
#endif
