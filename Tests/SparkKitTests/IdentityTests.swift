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
}
