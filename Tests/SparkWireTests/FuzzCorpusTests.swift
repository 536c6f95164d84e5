import Foundation
import NIOCore
import SparkTesting
@testable import SparkWire
import Testing

/// The fuzz target's body runs in the tests too: over the committed corpus, and over seeded
/// random mutations of it, so that a regression shows up without running libFuzzer.
@Suite("Fuzz corpus")
struct FuzzCorpusTests {
    static let corpus = URL(filePath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appending(path: "FuzzCorpus/wire")

    @Test("the committed seeds are the ones WireFuzzing generates, and replay cleanly")
    func seeds() throws {
        let files = try FileManager.default.contentsOfDirectory(atPath: Self.corpus.path).sorted()
        #expect(Set(files).isSuperset(of: WireFuzzing.seeds.map(\.name)))
        for seed in WireFuzzing.seeds {
            let stored = try Data(contentsOf: Self.corpus.appending(path: seed.name))
            #expect(Array(stored) == seed.bytes, "\(seed.name) is stale; regenerate with SparkWireFuzz --write-seeds")
        }
        for file in files {
            let data = try Data(contentsOf: Self.corpus.appending(path: file))
            data.withUnsafeBytes { WireFuzzing.run($0) }
        }
    }

    @Test("20,000 mutations of the seeds hold the invariants")
    func mutations() {
        var generator = SplitMix64(seed: 0x5EED)
        let seeds = WireFuzzing.seeds.map(\.bytes)
        for _ in 0 ..< 20_000 {
            var bytes = seeds[Int(generator.next() % UInt64(seeds.count))]
            for _ in 0 ... Int(generator.next() % 4) {
                let position = Int(generator.next() % UInt64(bytes.count))
                switch generator.next() % 4 {
                case 0: bytes[position] = UInt8(truncatingIfNeeded: generator.next())
                case 1: bytes.insert(UInt8(truncatingIfNeeded: generator.next()), at: position)
                case 2: if bytes.count > 1 { bytes.remove(at: position) }
                default: bytes[position] ^= 1 << UInt8(generator.next() % 8)
                }
            }
            bytes.withUnsafeBytes { WireFuzzing.run($0) }
        }
    }
}

