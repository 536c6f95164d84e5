import Foundation

/// `page_size` and `page_token` as every List RPC takes them: a size in 1…500 (0 means 50) and an
/// opaque token that is the last id of the previous page.
public enum Paging {
    /// The page's size and the id after which it starts; INVALID_ARGUMENT naming the field otherwise.
    public static func parse(size: Int32, token: String) throws -> (limit: Int, after: String) {
        guard size >= 0 && size <= 500 else { throw SparkError.invalid("page_size", "must be between 0 and 500") }
        var after = ""
        if !token.isEmpty {
            var base64 = token.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
            while base64.count % 4 != 0 { base64 += "=" }
            guard let data = Data(base64Encoded: base64), let decoded = String(data: data, encoding: .utf8),
                decoded.allSatisfy({ $0.isASCII && !$0.isWhitespace })
            else {
                throw SparkError.invalid("page_token", "is not a token this list returned")
            }
            after = decoded
        }
        return (size == 0 ? 50 : Int(size), after)
    }

    /// The token of the next page, or "" when this page was the last.
    public static func token(lastID: String?, count: Int, limit: Int) -> String {
        guard count == limit, let lastID else { return "" }
        return SparkJWKS.base64URL(Data(lastID.utf8))
    }
}
