public import SwiftProtobuf

extension Google_Protobuf_Timestamp {
    /// A timestamp from microseconds since 1970, as SparkOps stores times (BIGINT).
    public init(microseconds: Int64) {
        self.init(seconds: microseconds / 1_000_000, nanos: Int32((microseconds % 1_000_000) * 1000))
    }

    /// Microseconds since 1970.
    public var microseconds: Int64 {
        self.seconds * 1_000_000 + Int64(self.nanos / 1000)
    }
}
