import Foundation
import SparkGateway
import SparkKit
import Testing

@Suite("Request JSON of routes without a body")
struct FlatJSONTests {
    @Test("strings with quotes, backslashes, control characters and non-ASCII, integers and booleans parse back as written")
    func roundTrip() throws {
        let object: [String: Any] = [
            "projectId": "prj_0193a1f2c4d87e5f9a1b2c3d4e5f6a7b",
            "pageToken": "\"},\"x\":\"\\\\\u{0}\u{1}\n\t\u{1F}\u{7F}café ✓ 🚀",
            "we\"ird\\key": "",
            "pageSize": Int64(-9_223_372_036_854_775_808),
            "limit": Int64(500),
            "includeDeleted": true,
            "dryRun": false,
        ]
        let bytes = FlatJSON.encode(object)
        let parsed = try #require(try JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any])
        #expect(Set(parsed.keys) == Set(object.keys))
        #expect(parsed["pageToken"] as? String == object["pageToken"] as? String)
        #expect(parsed["we\"ird\\key"] as? String == "")
        #expect((parsed["pageSize"] as? NSNumber)?.int64Value == Int64.min)
        #expect((parsed["limit"] as? NSNumber)?.int64Value == 500)
        #expect(parsed["includeDeleted"] as? Bool == true)
        #expect(parsed["dryRun"] as? Bool == false)
        #expect(FlatJSON.encode([:]) == Array("{}".utf8))
        // The escapes themselves (shared with the JSON log lines).
        #expect(JSONString.quote("a\"b\\c\n\r\t\u{1}é") == #""a\"b\\c\n\r\t\u0001é""#)
    }
}
