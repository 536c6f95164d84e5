public import Configuration
import SparkKit

/// Settings of the project service.
///
/// ## Configuration keys
/// - `project.bcryptCost` (int, default 12): bcrypt work factor for passwords (4…31).
/// - `project.refreshTokenDays` (int, default 7): lifetime of a refresh token.
/// - `project.loginFailureLimit` (int, default 5): failed sign-ins per email that cost nothing;
///   from then on each failure pauses the email's sign-ins for 1 s, 2 s, 4 s, … (doubling), at most
///   `project.loginMaxDelaySeconds`. A paused sign-in gets 429 with `Retry-After`; the pause ends
///   by itself, a success resets the count, and an administrator can clear it.
/// - `project.loginFailureWindowSeconds` (int, default 3600): failures are counted from the first
///   one for this long, then forgotten.
/// - `project.loginMaxDelaySeconds` (int, default 900): the longest pause.
/// - `admin.email` (string, default `admin@sparkops.local`): the first user, created on first start.
/// - `admin.password` (string, secret): its password; unset, one is generated and printed once.
public struct ProjectServiceConfig: Sendable {
    public var bcryptCost: UInt8
    public var refreshTokenLifetime: Int64
    public var loginFailureLimit: Int
    public var loginFailureWindow: Int64
    public var loginMaxDelay: Int64
    public var adminEmail: String
    public var adminPassword: String?

    public init(
        bcryptCost: UInt8 = 12,
        refreshTokenDays: Int = 7,
        loginFailureLimit: Int = 5,
        loginFailureWindowSeconds: Int = 3600,
        loginMaxDelaySeconds: Int = 900,
        adminEmail: String = "admin@sparkops.local",
        adminPassword: String? = nil
    ) {
        self.bcryptCost = bcryptCost
        self.refreshTokenLifetime = Int64(refreshTokenDays) * 86_400 * 1_000_000
        self.loginFailureLimit = loginFailureLimit
        self.loginFailureWindow = Int64(loginFailureWindowSeconds) * 1_000_000
        self.loginMaxDelay = Int64(loginMaxDelaySeconds) * 1_000_000
        self.adminEmail = adminEmail
        self.adminPassword = adminPassword
    }

    public init(config: ConfigReader) throws {
        self.init(
            bcryptCost: UInt8(try config.integer(forKey: "project.bcryptCost", default: 12, in: 4...31)),
            refreshTokenDays: try config.integer(forKey: "project.refreshTokenDays", default: 7, in: 1...100_000),
            loginFailureLimit: try config.integer(forKey: "project.loginFailureLimit", default: 5, in: 1...100_000),
            loginFailureWindowSeconds: try config.integer(forKey: "project.loginFailureWindowSeconds", default: 3600, in: 1...1_000_000),
            loginMaxDelaySeconds: try config.integer(forKey: "project.loginMaxDelaySeconds", default: 900, in: 1...900),
            adminEmail: config.string(forKey: "admin.email", default: "admin@sparkops.local"),
            adminPassword: config.string(forKey: "admin.password", isSecret: true)
        )
    }

    /// How long sign-ins pause after the email's `failures`-th failure, in microseconds (0: none):
    /// 1 s at the limit, doubling with each further failure, at most `loginMaxDelay`.
    func loginDelay(afterFailures failures: Int) -> Int64 {
        guard failures >= self.loginFailureLimit else { return 0 }
        let doublings = min(failures - self.loginFailureLimit, 30)
        return min(self.loginMaxDelay, Int64(1_000_000) << doublings)
    }
}
