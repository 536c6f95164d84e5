public import SparkExpr
public import SparkProto

/// Free-form JSON in messages (`sparkops.common.v1.Json`): a value goes in as its JSON text, and
/// comes out as the value that text holds, numbers as they were written.
extension Sparkops_Common_V1_Json {
    public init(_ value: ExprValue) {
        self.init()
        self.text = value.jsonText
    }

    /// Whether the message holds a value (an unset or empty text holds none).
    public var isEmpty: Bool { self.text.isEmpty }

    /// The value the text holds; `absent` for an empty text. Text that is not one JSON value is
    /// INVALID_ARGUMENT naming `field`.
    public func value(field: String, absent: ExprValue = .null) throws(SparkError) -> ExprValue {
        guard !self.text.isEmpty else { return absent }
        do {
            return try ExprValue(jsonText: self.text)
        } catch {
            throw SparkError.invalid(field, "is not JSON (\(error))")
        }
    }
}

/// A call a policy held (`sparkops.common.v1.HeldCall`), as the services that ask build it.
extension Sparkops_Common_V1_HeldCall {
    /// The hold `decision` (a require_approval) makes of a call: its first deciding rule as
    /// `policy/rule`, that rule's message, the violation, and whether the starter is excluded.
    public init(_ decision: Sparkops_Policy_V1_Decision, kind: String, target: String, arguments: ExprValue? = nil, digest: String = "") {
        self.init()
        let first = decision.decidedBy.first
        self.kind = kind
        self.target = target
        if let arguments { self.arguments = Sparkops_Common_V1_Json(arguments) }
        self.digest = digest
        self.rule = first.map { $0.rule.isEmpty ? $0.policyName : "\($0.policyName)/\($0.rule)" } ?? ""
        self.message = first?.message ?? decision.message
        self.violationID = decision.violationID
        self.excludeStarter = decision.excludeStarter
    }
}
