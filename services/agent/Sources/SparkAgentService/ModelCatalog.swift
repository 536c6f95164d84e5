import Foundation
import SparkKit
import Yams

/// The model providers the agent service may call and the prices of their models, from
/// configuration (`agent.catalog` or `agent.catalogFile`, YAML or JSON; docs/agents.md):
///
/// ```yaml
/// providers:
///   - { name: ollama, api: openai, base_url: "http://127.0.0.1:11434/v1" }
/// models:
///   - { provider: ollama, name: "*", context_window: 32768 }
///   - { provider: openai, name: gpt-4o-mini, input_per_million: 150000, output_per_million: 600000, context_window: 128000 }
/// ```
///
/// Providers are operators' choices, never an agent's: an agent names a provider, and only the
/// catalog says where that provider is, so no definition can point the service at an address.
struct ModelCatalog: Sendable {
    enum API: String, Sendable, CaseIterable {
        /// OpenAI chat completions: OpenAI, vLLM, Ollama, llama.cpp server, LM Studio.
        case openai
        /// Anthropic Messages.
        case anthropic
    }

    struct Provider: Sendable {
        var name: String
        var api: API
        /// Up to the API's own paths: `https://api.openai.com/v1`, `https://api.anthropic.com/v1`.
        var baseURL: String
        /// The project secret holding the API key when an agent names none; empty sends none.
        var apiKeySecret: String
        /// One HTTP request, at most (the step's deadline cuts it shorter).
        var timeoutSeconds: Int
        /// Attempts after the first for 429, 5xx and connection failures.
        var maxRetries: Int
        /// `max_tokens` or `max_completion_tokens` (newer OpenAI models take only the latter).
        var maxTokensField: String
    }

    struct Model: Sendable {
        var provider: String
        /// A model name, or `*` for every model of the provider.
        var name: String
        /// Micro-dollars per million tokens.
        var inputPerMillion: Int64
        var outputPerMillion: Int64
        /// Tokens the model reads and writes in one call.
        var contextWindow: Int

        /// What a call cost: its input and output tokens at their prices, summed, then rounded up
        /// to a whole micro-dollar once per call (docs/agents.md).
        func cost(inputTokens: Int64, outputTokens: Int64) -> Int64 {
            let (input, inputOverflow) = max(inputTokens, 0).multipliedReportingOverflow(by: self.inputPerMillion)
            let (output, outputOverflow) = max(outputTokens, 0).multipliedReportingOverflow(by: self.outputPerMillion)
            let (sum, sumOverflow) = input.addingReportingOverflow(output)
            guard !inputOverflow, !outputOverflow, !sumOverflow, sum <= Int64.max - 999_999 else { return Int64.max / 4 }
            return (sum + 999_999) / 1_000_000
        }
    }

    var providers: [String: Provider]
    var models: [Model]
    /// Models the catalog has no price for may run, at no recorded cost.
    var allowUnpriced: Bool

    func provider(_ name: String) -> Provider? { self.providers[name] }

    /// The model's entry: its own, else its provider's `*`.
    func model(provider: String, name: String) -> Model? {
        self.models.first { $0.provider == provider && $0.name == name } ?? self.models.first { $0.provider == provider && $0.name == "*" }
    }

    /// The model's entry, or an unpriced one (cost 0) when the catalog allows that; nil refuses the model.
    func pricing(provider: String, model: String) -> Model? {
        if let entry = self.model(provider: provider, name: model) { return entry }
        guard self.allowUnpriced else { return nil }
        return Model(provider: provider, name: model, inputPerMillion: 0, outputPerMillion: 0, contextWindow: Self.defaultContextWindow)
    }

    static let defaultContextWindow = 8192

    /// The hosted providers, with no models priced: an operator adds the models it pays for.
    static let builtInProviders: [Provider] = [
        Provider(name: "openai", api: .openai, baseURL: "https://api.openai.com/v1", apiKeySecret: "OPENAI_API_KEY", timeoutSeconds: 120, maxRetries: 4, maxTokensField: "max_completion_tokens"),
        Provider(name: "anthropic", api: .anthropic, baseURL: "https://api.anthropic.com/v1", apiKeySecret: "ANTHROPIC_API_KEY", timeoutSeconds: 120, maxRetries: 4, maxTokensField: "max_tokens"),
    ]

    /// Reads a catalog; its providers replace built-in ones of the same name.
    static func parse(_ text: String, allowUnpriced: Bool) throws -> ModelCatalog {
        let root: Any?
        do {
            root = try Yams.load(yaml: text)
        } catch {
            throw SparkConfigurationError("agent.catalog: not YAML or JSON: \(error)")
        }
        guard let top = root as? [String: Any] else { throw SparkConfigurationError("agent.catalog: must be a mapping with providers and models") }
        for key in top.keys where !["providers", "models"].contains(key) {
            throw SparkConfigurationError("agent.catalog: unknown field \(key.debugDescription); known: providers, models")
        }
        var providers = Dictionary(uniqueKeysWithValues: Self.builtInProviders.map { ($0.name, $0) })
        for (index, entry) in try Self.list(top["providers"], "providers").enumerated() {
            let field = "agent.catalog providers[\(index)]"
            try Self.known(entry, ["name", "api", "base_url", "api_key_secret", "timeout_seconds", "max_retries", "max_tokens_field"], field)
            let name = try Self.text(entry["name"], "\(field).name")
            let apiName = try Self.text(entry["api"], "\(field).api")
            guard let api = API(rawValue: apiName) else { throw SparkConfigurationError("\(field).api: must be openai or anthropic, not \(apiName.debugDescription)") }
            let base = try Self.text(entry["base_url"], "\(field).base_url")
            guard let url = URL(string: base), ["http", "https"].contains(url.scheme ?? ""), url.host != nil else {
                throw SparkConfigurationError("\(field).base_url: \(base.debugDescription) is not an http(s) URL")
            }
            let field2 = entry["max_tokens_field"] as? String ?? (api == .openai && name == "openai" ? "max_completion_tokens" : "max_tokens")
            guard ["max_tokens", "max_completion_tokens"].contains(field2) else {
                throw SparkConfigurationError("\(field).max_tokens_field: must be max_tokens or max_completion_tokens")
            }
            providers[name] = Provider(
                name: name, api: api, baseURL: base.hasSuffix("/") ? String(base.dropLast()) : base,
                apiKeySecret: entry["api_key_secret"] as? String ?? "",
                timeoutSeconds: try Self.integer(entry["timeout_seconds"], "\(field).timeout_seconds", default: 120, in: 1 ... 3600),
                maxRetries: try Self.integer(entry["max_retries"], "\(field).max_retries", default: 4, in: 0 ... 20),
                maxTokensField: field2
            )
        }
        var models: [Model] = []
        for (index, entry) in try Self.list(top["models"], "models").enumerated() {
            let field = "agent.catalog models[\(index)]"
            try Self.known(entry, ["provider", "name", "input_per_million", "output_per_million", "context_window"], field)
            let provider = try Self.text(entry["provider"], "\(field).provider")
            guard providers[provider] != nil else {
                throw SparkConfigurationError("\(field).provider: no provider \(provider.debugDescription); known: \(providers.keys.sorted().joined(separator: ", "))")
            }
            models.append(Model(
                provider: provider,
                name: try Self.text(entry["name"], "\(field).name"),
                inputPerMillion: Int64(try Self.integer(entry["input_per_million"], "\(field).input_per_million", default: 0, in: 0 ... 1_000_000_000_000)),
                outputPerMillion: Int64(try Self.integer(entry["output_per_million"], "\(field).output_per_million", default: 0, in: 0 ... 1_000_000_000_000)),
                contextWindow: try Self.integer(entry["context_window"], "\(field).context_window", default: Self.defaultContextWindow, in: 256 ... 100_000_000)
            ))
        }
        return ModelCatalog(providers: providers, models: models, allowUnpriced: allowUnpriced)
    }

    private static func list(_ value: Any?, _ field: String) throws -> [[String: Any]] {
        guard let value else { return [] }
        guard let items = value as? [Any] else { throw SparkConfigurationError("agent.catalog \(field): must be a list") }
        return try items.enumerated().map { index, item in
            guard let entry = item as? [String: Any] else { throw SparkConfigurationError("agent.catalog \(field)[\(index)]: must be a mapping") }
            return entry
        }
    }

    private static func known(_ entry: [String: Any], _ keys: [String], _ field: String) throws {
        for key in entry.keys where !keys.contains(key) {
            throw SparkConfigurationError("\(field): unknown field \(key.debugDescription); known: \(keys.joined(separator: ", "))")
        }
    }

    private static func text(_ value: Any?, _ field: String) throws -> String {
        guard let text = value as? String, !text.isEmpty else { throw SparkConfigurationError("\(field): is required (a string)") }
        return text
    }

    private static func integer(_ value: Any?, _ field: String, default fallback: Int, in range: ClosedRange<Int>) throws -> Int {
        guard let value else { return fallback }
        guard let number = value as? Int, range.contains(number) else {
            throw SparkConfigurationError("\(field): must be a whole number from \(range.lowerBound) to \(range.upperBound)")
        }
        return number
    }
}
