import Foundation
import PropertyBased
import SparkExpr
import Testing

/// ExprValue's own JSON reader and writer: generated values round-trip with their types, the
/// reader agrees with Foundation's on what Foundation writes, bad text is refused, and the text
/// that content hashes are computed over is unchanged.
@Suite("ExprValue JSON")
struct JSONTests {
    /// Builds a value from a stream of choices (the expression properties' stream).
    struct ValueBuilder {
        var choices: PropertyTests.TreeBuilder

        mutating func next(_ bound: Int) -> Int { self.choices.next(bound) }

        static let strings = ["", "a", "Zebra", "a10", "a9", "_x", "it's", "say \"hi\"", "back\\slash", "sl/ash", "line\nbreak", "tab\tand\u{1}\u{7F}", "ünï", "😀 emoji", "\u{0}"]

        mutating func value(depth: Int) -> ExprValue {
            let leaf = depth <= 0 || self.next(3) == 0
            if leaf {
                switch self.next(8) {
                case 0: return .null
                case 1: return .bool(self.next(2) == 0)
                case 2: return .int(Int64(self.next(20001)) - 10000)
                case 3: return .int(self.next(2) == 0 ? .max : .min)
                case 4: return .double(Double(self.next(20001) - 10000) / 8)
                case 5: return .double([1e300, -2.5e-300, 0.1, 3.0, 1e16, -0.0][self.next(6)])
                default: return .string(Self.strings[self.next(Self.strings.count)])
                }
            }
            if self.next(2) == 0 {
                return .list((0 ..< self.next(5)).map { _ in self.value(depth: depth - 1) })
            }
            var fields: [String: ExprValue] = [:]
            for _ in 0 ..< self.next(5) { fields[Self.strings[self.next(Self.strings.count)]] = self.value(depth: depth - 1) }
            return .map(fields)
        }
    }

    static let values = Gen<UInt16>.value(in: 0 ... 4000).array(of: 1 ... 60).map { choices -> ExprValue in
        var builder = ValueBuilder(choices: PropertyTests.TreeBuilder(choices: choices))
        return builder.value(depth: 4)
    }

    /// Equality that tells ints from doubles and -0.0 from 0.0 (ExprValue's own == does not need to).
    static func same(_ a: ExprValue, _ b: ExprValue) -> Bool {
        switch (a, b) {
        case (.double(let x), .double(let y)): return x.bitPattern == y.bitPattern
        case (.list(let x), .list(let y)): return x.count == y.count && zip(x, y).allSatisfy { Self.same($0, $1) }
        case (.map(let x), .map(let y)): return x.count == y.count && x.allSatisfy { key, value in y[key].map { Self.same(value, $0) } ?? false }
        default: return a == b
        }
    }

    @Test("read(write(v)) is v for generated values, ints and doubles kept apart; the text is stable and Foundation reads it")
    func roundTrip() async {
        await propertyCheck(count: 2000, input: Self.values) { value in
            let text = value.jsonText
            do {
                let read = try ExprValue(jsonText: text)
                #expect(Self.same(read, value), "\(text)")
                #expect(read.jsonText == text)
                let foundation = try JSONSerialization.jsonObject(with: Data(text.utf8), options: [.fragmentsAllowed])
                #expect(ExprValue(json: foundation).equals(value), "\(text)")
            } catch {
                Issue.record("\(text) does not read back: \(error)")
            }
        }
    }

    @Test("what Foundation writes reads as Foundation reads it")
    func readsFoundation() async throws {
        await propertyCheck(count: 1000, input: Self.values) { value in
            let text = value.stableJSONText
            guard let read = try? ExprValue(jsonText: text) else {
                Issue.record("\(text) does not read")
                return
            }
            let foundation = ExprValue(json: try? JSONSerialization.jsonObject(with: Data(text.utf8), options: [.fragmentsAllowed]))
            #expect(read.equals(foundation), "\(text)")
        }
        let samples: [(String, ExprValue)] = [
            (#" { "a" : [ 1 , 2.5 , -0 , 1E2 , true , null ] } "#, .map(["a": .list([.int(1), .double(2.5), .number("-0"), .number("1E2"), .bool(true), .null])])),
            (#""\u00e9\ud83d\ude00\/\b\f\n\r\t\"\\""#, .string("é😀/\u{8}\u{C}\n\r\t\"\\")),
            ("9223372036854775807", .int(.max)),
            ("9223372036854775808", .number("9223372036854775808")),
            ("-9223372036854775808", .int(.min)),
            ("\"ünï\"", .string("ünï")),
        ]
        for (text, expected) in samples {
            #expect(Self.same(try ExprValue(jsonText: text), expected), "\(text)")
        }
    }

    @Test("a number reads back as it was written: integers of any size, -0, 1e400, 1.50, exponents")
    func numbersKeepTheirText() throws {
        let written = [
            "9007199254740993", "-9007199254740993", "18446744073709551616", "123456789012345678901234567890",
            "-0", "1e400", "-1e400", "1.50", "2E3", "1e-7", "0.1", "3.0", "-0.0", "4", "1.7976931348623157e308", "5e-324",
        ]
        for text in written {
            let value = try ExprValue(jsonText: text)
            #expect(value.jsonText == text, "\(text) wrote back as \(value.jsonText)")
            #expect(value.templateText == text)
            let nested = try ExprValue(jsonText: "{\"n\":[\(text)],\"s\":\"ü😀\\u00e9\"}")
            #expect(nested.jsonText == "{\"n\":[\(text)],\"s\":\"ü😀é\"}")
        }
        // Within 64 bits an integer is an int; beyond, it keeps its text and is still an integer.
        #expect(try ExprValue(jsonText: "9007199254740993") == .int(9_007_199_254_740_993))
        #expect(try ExprValue(jsonText: "18446744073709551616").typeName == "int")
        #expect(try ExprValue(jsonText: "1.50").typeName == "double")
        // Compared by value: exactly for integers at any size.
        #expect(try ExprValue(jsonText: "1.50").equals(.double(1.5)))
        #expect(try ExprValue(jsonText: "-0").equals(.int(0)))
        #expect(try ExprValue(jsonText: "2E3").equals(.int(2000)))
        #expect(try ExprValue(jsonText: "123456789012345678901234567891").equals(try ExprValue(jsonText: "123456789012345678901234567891")))
        #expect(!(try ExprValue(jsonText: "123456789012345678901234567891")).equals(try ExprValue(jsonText: "123456789012345678901234567890")))
        // Deep nesting writes back whole.
        let deep = String(repeating: "[", count: 500) + "9007199254740993" + String(repeating: "]", count: 500)
        #expect(try ExprValue(jsonText: deep).jsonText == deep)
    }

    @Test("bad JSON is refused: truncation, trailing text, bad numbers, escapes and surrogates, control characters, nesting past 512")
    func refusals() {
        let bad = [
            "", " ", "{", "[1,]", "{\"a\":1,}", "{a:1}", "[1 2]", "01", "-", "1.", ".5", "1e", "+1", "NaN", "tru", "nul", "\"open",
            #""\x""#, #""\ud800""#, #""\udc00""#, #""\ud800\u0041""#, #""\u12G4""#, "\"a\u{1}b\"", "1 2", "[] x", "{\"a\" 1}",
            String(repeating: "[", count: 600) + String(repeating: "]", count: 600),
        ]
        for text in bad {
            #expect(throws: (any Error).self, "\(text.prefix(40).debugDescription)") { try ExprValue(jsonText: text) }
        }
        // 511 levels read.
        #expect(throws: Never.self) { try ExprValue(jsonText: String(repeating: "[", count: 511) + String(repeating: "]", count: 511)) }
    }

    @Test("the stable text keeps Foundation's key order and whole doubles without .0, which stored content hashes depend on")
    func stableText() {
        let value = ExprValue.map(["a10": .int(1), "a9": .int(2), "B": .double(2.0), "a": .string("x/y"), "_z": .null])
        #expect(value.stableJSONText == #"{"_z":null,"a":"x/y","a9":2,"a10":1,"B":2}"#)
        #expect(value.jsonText == #"{"B":2.0,"_z":null,"a":"x/y","a10":1,"a9":2}"#)
    }
}
