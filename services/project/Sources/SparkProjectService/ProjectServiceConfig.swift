public import Configuration
import SparkKit

/// Settings of the project service.
///
/// ## Configuration keys
/// - `project.bcryptCost` (int, default 12): bcrypt work factor for passwords (4…31).
/// - `project.refreshTokenDays` (int, default 7): lifetime of a refresh token.
/// - `project.loginFailureLimit` (int, default 10): failed logins per email per window before
///   logins for that email are refused with 429.
/// - `project.loginFailureWindowSeconds` (int, default 900).
/// - `admin.email` (string, default `admin@sparkops.local`): the first user, created on first start.
/// - `admin.password` (string, secret): its password; unset, one is generated and printed once.
public struct ProjectServiceConfig: Sendable {
    public var bcryptCost: UInt8
    public var refreshTokenLifetime: Int64
    public var loginFailureLimit: Int
    public var loginFailureWindow: Int64
    public var adminEmail: String
    public var adminPassword: String?

    public init(
        bcryptCost: UInt8 = 12,
        refreshTokenDays: Int = 7,
        loginFailureLimit: Int = 10,
        loginFailureWindowSeconds: Int = 900,
        adminEmail: String = "admin@sparkops.local",
        adminPassword: String? = nil
    ) {
        self.bcryptCost = bcryptCost
        self.refreshTokenLifetime = Int64(refreshTokenDays) * 86_400 * 1_000_000
        self.loginFailureLimit = loginFailureLimit
        self.loginFailureWindow = Int64(loginFailureWindowSeconds) * 1_000_000
        self.adminEmail = adminEmail
        self.adminPassword = adminPassword
    }

    public init(config: ConfigReader) throws {
        self.init(
            bcryptCost: UInt8(try config.integer(forKey: "project.bcryptCost", default: 12, in: 4...31)),
            refreshTokenDays: try config.integer(forKey: "project.refreshTokenDays", default: 7, in: 1...100_000),
            loginFailureLimit: try config.integer(forKey: "project.loginFailureLimit", default: 10, in: 1...100_000),
            loginFailureWindowSeconds: try config.integer(forKey: "project.loginFailureWindowSeconds", default: 900, in: 1...100_000),
            adminEmail: config.string(forKey: "admin.email", default: "admin@sparkops.local"),
            adminPassword: config.string(forKey: "admin.password", isSecret: true)
        )
    }
}
