import Configuration
import Foundation
import SparkKit
import SparkTesting
@testable import SparkToolService
import Testing

@Suite("Secret box")
struct SecretBoxTests {
    static func key(_ id: String) -> String {
        "\(id):\(Data((0..<32).map { _ in UInt8.random(in: 0...255) }).base64EncodedString())"
    }

    @Test("a sealed value opens for its project and name only, and altered bytes do not open")
    func binding() throws {
        let box = try SecretBox(keys: SecretBox.parse(Self.key("k1"), source: "test"))
        let (keyID, sealed) = try box.seal("hunter2", projectID: "prj_a", name: "token")
        #expect(keyID == "k1")
        #expect(!sealed.contains("hunter2"))
        #expect(try box.open(keyID: keyID, sealed: sealed, projectID: "prj_a", name: "token") == "hunter2")
        #expect(throws: SparkError.self) { try box.open(keyID: keyID, sealed: sealed, projectID: "prj_b", name: "token") }
        #expect(throws: SparkError.self) { try box.open(keyID: keyID, sealed: sealed, projectID: "prj_a", name: "other") }
        var bytes = Data(base64Encoded: sealed)!
        bytes[bytes.count / 2] ^= 0x01
        #expect(throws: SparkError.self) { try box.open(keyID: keyID, sealed: bytes.base64EncodedString(), projectID: "prj_a", name: "token") }
        // Two seals of one value differ (a fresh nonce each time).
        #expect(try box.seal("hunter2", projectID: "prj_a", name: "token").sealed != sealed)
    }

    @Test("rotation: the first key seals, every key opens, an unknown key id is named")
    func rotation() throws {
        let old = Self.key("k1")
        let before = try SecretBox(keys: SecretBox.parse(old, source: "test"))
        let (oldID, sealed) = try before.seal("v", projectID: "p", name: "n")
        let after = try SecretBox(keys: SecretBox.parse("\(Self.key("k2")),\(old)", source: "test"))
        #expect(after.active.id == "k2")
        #expect(try after.open(keyID: oldID, sealed: sealed, projectID: "p", name: "n") == "v")
        #expect(try after.seal("v", projectID: "p", name: "n").keyID == "k2")
        let dropped = try SecretBox(keys: SecretBox.parse(Self.key("k3"), source: "test"))
        #expect { try dropped.open(keyID: oldID, sealed: sealed, projectID: "p", name: "n") } throws: { error in
            (error as? SparkError)?.message.contains("master key k1") == true
        }
    }

    @Test("bad key entries are refused with the reason", arguments: ["k1", "k1:short", ":\(Data(count: 32).base64EncodedString())", "k 1:\(Data(count: 32).base64EncodedString())"])
    func badEntries(entry: String) {
        #expect(throws: SparkConfigurationError.self) { _ = try SecretBox.parse(entry, source: "test") }
    }

    @Test("the embedded mode creates a key file readable by its owner only; with a database the keys must be configured")
    func firstStart() async throws {
        let home = FileManager.default.temporaryDirectory.appending(path: "sparkops-keys-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: home) }
        let embedded = try await SparkConfiguration.reader(overrides: ["home": home], environment: [:])
        let created = try SecretBox.load(config: embedded, host: try HostConfig(config: embedded))
        let path = "\(home)/keys/tool-master-keys"
        let attributes = try FileManager.default.attributesOfItem(atPath: path)
        #expect((attributes[.posixPermissions] as? NSNumber)?.intValue == 0o600)
        // The second start reads the same key.
        let again = try SecretBox.load(config: embedded, host: try HostConfig(config: embedded))
        #expect(again.active.id == created.active.id)
        let sealed = try created.seal("x", projectID: "p", name: "n")
        #expect(try again.open(keyID: sealed.keyID, sealed: sealed.sealed, projectID: "p", name: "n") == "x")

        let other = FileManager.default.temporaryDirectory.appending(path: "sparkops-keys-\(UUID().uuidString)").path
        let production = try await SparkConfiguration.reader(overrides: ["home": other, "database.url": "postgres://x@127.0.0.1/x"], environment: [:])
        #expect(throws: SparkConfigurationError.self) { _ = try SecretBox.load(config: production, host: try HostConfig(config: production)) }
        #expect(!FileManager.default.fileExists(atPath: other))
    }
}

@Suite("Master key rotation")
struct RotationTests {
    @Test("starting with a new first key re-seals every secret under it; values are unchanged; the old key can then go", arguments: TestBackend.all)
    func reseal(backend: TestBackend) async throws {
        try await backend.withDatabase { databaseURL in
            let home = FileManager.default.temporaryDirectory.appending(path: "sparkops-rotation-\(UUID().uuidString)").path
            defer { try? FileManager.default.removeItem(atPath: home) }
            var settings = ["home": home]
            if let databaseURL { settings["database.url"] = databaseURL }
            let config = try await SparkConfiguration.reader(overrides: settings, environment: [:])
            let sparkStore = try SparkStore(service: "tool", location: try HostConfig(config: config).storeLocation())
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await sparkStore.run() }
                defer { group.cancelAll() }
                _ = try await sparkStore.migrate(ToolMigrations.all)
                let store = ToolStore(store: sparkStore)
                let old = SecretBoxTests.key("k1")
                let first = try SecretBox(keys: SecretBox.parse(old, source: "test"))
                for index in 0 ..< 150 {
                    let (keyID, sealed) = try first.seal("value-\(index)", projectID: "prj_a", name: "s\(index)")
                    let row = SecretRow(projectID: "prj_a", name: "s\(index)", keyID: keyID, sealed: sealed, createdAt: 1, updatedAt: 1, updatedBy: "usr_x")
                    _ = try await sparkStore.transaction { try await store.put(row, on: $0) }
                }
                #expect(try await first.resealOldSecrets(in: store) == 0)

                let rotated = try SecretBox(keys: SecretBox.parse("\(SecretBoxTests.key("k2"))\n\(old)", source: "test"))
                #expect(try await rotated.resealOldSecrets(in: store) == 150)
                #expect(try await rotated.resealOldSecrets(in: store) == 0)
                let rows = try await sparkStore.sql { try await store.secrets(projectID: "prj_a", after: "", limit: 500, on: $0) }
                #expect(rows.count == 150)
                #expect(rows.allSatisfy { $0.keyID == "k2" })
                // Only the new key now: every value still opens, unchanged.
                let newOnly = try SecretBox(keys: [rotated.active])
                for row in rows {
                    let index = row.name.dropFirst()
                    #expect(try newOnly.open(keyID: row.keyID, sealed: row.sealed, projectID: row.projectID, name: row.name) == "value-\(index)")
                }
            }
        }
    }
}
