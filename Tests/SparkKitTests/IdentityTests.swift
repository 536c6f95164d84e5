import Foundation
import SparkKit
import Testing

@Suite("Ids and digests")
struct IdentityTests {
    @Test("hex encoding and the SHA-256 digest match their definitions")
    func hex() {
        #expect(SparkHex.encode([0x00, 0x0f, 0xa5, 0xff]) == "000fa5ff")
        #expect(SparkHex.encode([]) == "")
        // FIPS 180-2 test vector.
        #expect(SparkSecrets.digest("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    }

    @Test("ids are UUIDv7 in hex behind their prefix and sort by creation time")
    func ids() {
        let earlier = SparkID.make("prj", now: Date(timeIntervalSince1970: 1_700_000_000))
        let later = SparkID.make("prj", now: Date(timeIntervalSince1970: 1_700_000_001))
        #expect(SparkID.isValid(earlier, prefix: "prj"))
        #expect(!SparkID.isValid(earlier, prefix: "usr"))
        #expect(earlier < later)
        #expect(Array(earlier.utf8)[4 + 12] == UInt8(ascii: "7"))  // the version nibble
        // 1,700,000,000,000 ms = 0x018bcfe56800.
        #expect(earlier.hasPrefix("prj_018bcfe56800"))
    }

    @Test("random bytes come in the length asked for, and ids and tokens do not repeat")
    func randomness() {
        for count in [0, 1, 7, 8, 9, 16, 32] {
            #expect(SparkRandom.bytes(count).count == count)
        }
        // 256 bits drawn twice: equal only if the generator is broken.
        #expect(SparkRandom.bytes(32) != SparkRandom.bytes(32))
        // Every byte position varies across draws (a byte left at zero would not).
        let draws = (0 ..< 64).map { _ in SparkRandom.bytes(16) }
        for position in 0 ..< 16 {
            #expect(Set(draws.map { $0[position] }).count > 1, "byte \(position) never changed")
        }
        let ids = (0 ..< 10_000).map { _ in SparkID.make("req") }
        #expect(Set(ids).count == ids.count)
        let tokens = (0 ..< 1_000).map { _ in SparkSecrets.token(prefix: "spk_") }
        #expect(Set(tokens).count == tokens.count)
        #expect(tokens.allSatisfy { $0.count == 4 + 43 })
    }
}
