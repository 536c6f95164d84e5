public import Configuration
import Crypto
import Foundation
import GRPCCore
public import SparkKit

/// Seals and opens secrets with AES-256-GCM under the master keys from configuration. Each
/// sealed value names the key that sealed it; the first key seals, every key opens, so a key is
/// rotated by putting a new one first: the service re-seals every secret under it as it starts,
/// and the old key can be dropped once the log says none is left under it.
///
/// A value is bound to its project and name (the AES-GCM associated data), so that a sealed
/// value copied to another row does not open.
public struct SecretBox: Sendable {
    public struct Key: Sendable {
        public let id: String
        let key: SymmetricKey
    }

    public let keys: [Key]
    public var active: Key { self.keys[0] }

    public init(keys: [Key]) throws {
        guard !keys.isEmpty else { throw SparkConfigurationError("tool.masterKeys holds no key") }
        self.keys = keys
    }

    /// `id:base64` entries, separated by commas or new lines, `#` starting a comment; each key 32 bytes.
    public static func parse(_ text: String, source: String) throws -> [Key] {
        var keys: [Key] = []
        // Lines, without `#` comments, each holding one or more comma-separated entries.
        let lines = text.split(separator: "\n").map { line in line.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first ?? "" }
        let entries = lines.flatMap { $0.split(separator: ",") }.map { $0.trimmingCharacters(in: .whitespaces) }
        for entry in entries where !entry.isEmpty {
            let parts = entry.split(separator: ":", maxSplits: 1).map(String.init)
            guard parts.count == 2, !parts[0].isEmpty, parts[0].count <= 64,
                  parts[0].unicodeScalars.allSatisfy({ $0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0) || "-_".unicodeScalars.contains($0)) })
            else {
                throw SparkConfigurationError("\(source): each master key is written id:base64 (an id of letters, digits, - and _)")
            }
            guard let bytes = Data(base64Encoded: parts[1]), bytes.count == 32 else {
                throw SparkConfigurationError("\(source): the master key \(parts[0]) is not 32 bytes in base64")
            }
            guard !keys.contains(where: { $0.id == parts[0] }) else {
                throw SparkConfigurationError("\(source): the master key id \(parts[0]) is given twice")
            }
            keys.append(Key(id: parts[0], key: SymmetricKey(data: bytes)))
        }
        return keys
    }

    /// A new key entry: an id from the date and 32 random bytes.
    public static func newKeyEntry() -> String {
        let id = "k" + String(Int(Date().timeIntervalSince1970))
        return "\(id):\(Data(SparkRandom.bytes(32)).base64EncodedString())"
    }

    /// The keys from `tool.masterKeys`, or else from the file `tool.masterKeyFile` (default
    /// `<home>/keys/tool-master-keys`). With neither, the embedded mode (no database URL)
    /// creates that file with one new key, readable by its owner only; a deployment with a
    /// database must configure its keys.
    public static func load(config: ConfigReader, host: HostConfig) throws -> SecretBox {
        if let inline = config.string(forKey: "tool.masterKeys"), !inline.isEmpty {
            return try SecretBox(keys: Self.parse(inline, source: "tool.masterKeys"))
        }
        let path = config.string(forKey: "tool.masterKeyFile", default: "\(host.home)/keys/tool-master-keys")
        if let text = try? String(contentsOfFile: path, encoding: .utf8) {
            return try SecretBox(keys: Self.parse(text, source: path))
        }
        guard host.databaseURL == nil else {
            throw SparkConfigurationError("the tool service needs its master keys: set tool.masterKeys (id:base64, from `sparkops secret new-master-key`) or tool.masterKeyFile")
        }
        let directory = (path as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let entry = Self.newKeyEntry()
        guard FileManager.default.createFile(atPath: path, contents: Data("# SparkOps tool-service master keys: the first seals, every one opens.\n\(entry)\n".utf8), attributes: [.posixPermissions: 0o600]) else {
            throw SparkConfigurationError("cannot write the master key file \(path)")
        }
        return try SecretBox(keys: Self.parse(entry, source: path))
    }

    static func associatedData(projectID: String, name: String) -> Data {
        Data("sparkops-secret\u{0}\(projectID)\u{0}\(name)".utf8)
    }

    /// The value sealed under the active key: (key id, base64 of nonce ‖ ciphertext ‖ tag).
    public func seal(_ value: String, projectID: String, name: String) throws -> (keyID: String, sealed: String) {
        let box = try AES.GCM.seal(Data(value.utf8), using: self.active.key, authenticating: Self.associatedData(projectID: projectID, name: name))
        guard let combined = box.combined else { throw SparkError(.internalError, "could not seal the secret") }
        return (self.active.id, combined.base64EncodedString())
    }

    /// The value, or an error when its key is not configured or it was not sealed for this
    /// project and name.
    public func open(keyID: String, sealed: String, projectID: String, name: String) throws -> String {
        guard let key = self.keys.first(where: { $0.id == keyID }) else {
            throw SparkError(.failedPrecondition, "the secret \(name) is sealed under master key \(keyID), which is not configured")
        }
        guard let data = Data(base64Encoded: sealed), let box = try? AES.GCM.SealedBox(combined: data),
              let plain = try? AES.GCM.open(box, using: key.key, authenticating: Self.associatedData(projectID: projectID, name: name))
        else {
            throw SparkError(.dataLoss, "the secret \(name) does not open: it was altered or moved")
        }
        return String(decoding: plain, as: UTF8.self)
    }
}

extension SecretBox {
    /// Re-seals every secret sealed under an older key with the active one, in batches; returns
    /// how many it re-sealed. A secret written meanwhile is left as it was written.
    func resealOldSecrets(in store: ToolStore) async throws -> Int {
        var count = 0
        while true {
            let batch = try await store.store.sql { try await store.secrets(notUnder: self.active.id, limit: 100, on: $0) }
            guard !batch.isEmpty else { return count }
            for old in batch {
                let value = try self.open(keyID: old.keyID, sealed: old.sealed, projectID: old.projectID, name: old.name)
                let (keyID, sealed) = try self.seal(value, projectID: old.projectID, name: old.name)
                var row = old
                row.keyID = keyID
                row.sealed = sealed
                try await store.store.transaction { try await store.reseal(row, from: old, on: $0) }
                count += 1
            }
        }
    }
}
