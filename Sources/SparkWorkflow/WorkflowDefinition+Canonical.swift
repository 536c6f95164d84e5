import Crypto
public import SparkExpr

extension WorkflowDefinition {
    /// The definition as one JSON value with every default written out and keys sorted: what a
    /// version stores, and what two equivalent files (YAML or JSON, any layout, any key order,
    /// defaults left out or spelt out) have in common.
    public var canonicalValue: ExprValue {
        var fields: [String: ExprValue] = [
            "name": .string(self.name),
            "description": .string(self.description),
            "inputs": .map(Dictionary(uniqueKeysWithValues: self.inputs.map { input in
                var fields: [String: ExprValue] = [
                    "type": .string(input.type.rawValue),
                    "required": .bool(input.required),
                    "description": .string(input.description),
                ]
                if let value = input.defaultValue { fields["default"] = value }
                return (input.name, .map(fields))
            })),
            "steps": .list(self.steps.map(\.canonicalValue)),
            "outputs": .map(Dictionary(self.outputs.map { ($0.name, .string($0.template)) }, uniquingKeysWith: { first, _ in first })),
        ]
        // Written only when set, so that definitions without them keep their content hash.
        if let timeout = self.timeout { fields["timeout"] = .string(timeout.description) }
        if let micros = self.estimatedCostMicros { fields["estimated_cost"] = .string(Self.dollars(micros)) }
        return .map(fields)
    }

    /// Micro-dollars as a decimal number of dollars, without trailing zeros: 1500000 → `1.5`.
    static func dollars(_ micros: Int64) -> String {
        let whole = micros / 1_000_000
        var fraction = String(micros % 1_000_000)
        fraction = String(repeating: "0", count: 6 - fraction.count) + fraction
        while fraction.hasSuffix("0") { fraction.removeLast() }
        return fraction.isEmpty ? "\(whole)" : "\(whole).\(fraction)"
    }

    /// Compact JSON of the canonical value, numbers as written: what is stored and shown.
    public var canonicalJSON: String { self.canonicalValue.jsonText }

    /// `sha256:` and the hex SHA-256 of the canonical value's stable text
    /// (``ExprValue/stableJSONText``, unchanged since the first version): a version's identity.
    /// Applying a definition with the same hash creates no new version.
    public var contentHash: String { ContentHash.of(self.canonicalValue.stableJSONText) }
}

extension WorkflowStep {
    var canonicalValue: ExprValue {
        var fields: [String: ExprValue] = [
            "id": .string(self.id),
            "needs": .list(self.needs.map(ExprValue.string)),
            "with": self.with,
            "on_error": .string(self.onError.rawValue),
            "retry": .map([
                "max_attempts": .int(Int64(self.retry.maxAttempts)),
                "backoff": .string(self.retry.backoff.rawValue),
                "initial": .string(self.retry.initial.description),
                "max": .string(self.retry.maximum.description),
            ]),
        ]
        switch self.kind {
        case .tool(let name): fields["tool"] = .string(name)
        case .agent(let name): fields["agent"] = .string(name)
        case .approval(let approval):
            var spec: [String: ExprValue] = ["approvers": .list(approval.approvers.map(ExprValue.string)), "message": .string(approval.message)]
            if let timeout = approval.timeout { spec["timeout"] = .string(timeout.description) }
            // Only when set, so that the hash of every workflow written before it stays the same.
            if approval.excludeStarter { spec["exclude_starter"] = .bool(true) }
            fields["approval"] = .map(spec)
        }
        if let when = self.when { fields["when"] = .string(when) }
        if let timeout = self.timeout { fields["timeout"] = .string(timeout.description) }
        return .map(fields)
    }
}

/// `sha256:` and the hex SHA-256 of a canonical JSON text: the identity of a definition's version.
enum ContentHash {
    static func of(_ canonicalJSON: String) -> String {
        let digest = SHA256.hash(data: Array(canonicalJSON.utf8))
        return "sha256:" + digest.map { byte in
            let hex = String(byte, radix: 16)
            return hex.count == 1 ? "0" + hex : hex
        }.joined()
    }
}
