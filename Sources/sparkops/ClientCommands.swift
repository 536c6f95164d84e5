import ArgumentParser
import AsyncHTTPClient
import Foundation
import NIOHTTP1

#if canImport(Glibc)
import Glibc
#endif

/// Prints API results as JSON or as an aligned table.
enum Printer {
    static func print(_ object: [String: Any], format: OutputFormat, rows: String? = nil, columns: [(title: String, key: String)]) {
        switch format {
        case .json:
            Swift.print(CLIJSON.text(object, pretty: true))
        case .table:
            let items: [[String: Any]] = rows.map { object[$0] as? [[String: Any]] ?? [] } ?? [object]
            let cells = items.map { item in columns.map { Self.text(item[$0.key], key: $0.key) } }
            let widths = columns.indices.map { index in max(columns[index].title.count, cells.map { $0[index].count }.max() ?? 0) }
            func line(_ values: [String]) -> String {
                zip(values, widths).map { $0.padding(toLength: $1, withPad: " ", startingAt: 0) }.joined(separator: "  ").trimmingCharacters(in: .whitespaces)
            }
            Swift.print(line(columns.map(\.title.localizedUppercase)))
            for row in cells { Swift.print(line(row)) }
        }
    }

    static func text(_ value: Any?, key: String = "") -> String {
        switch value {
        case nil: return key.hasPrefix("is") ? "no" : ""
        case let string as String where key == "role": return string.replacingOccurrences(of: "ROLE_", with: "").lowercased()
        case let string as String: return string
        case let flag as Bool where key.hasPrefix("is"): return flag ? "yes" : "no"
        case let number as NSNumber where key.hasPrefix("is"): return number.boolValue ? "yes" : "no"
        case let number as NSNumber: return number.stringValue
        default: return "\(value!)"
        }
    }

    static func role(_ value: String) throws -> String {
        let roles = ["viewer", "runner", "approver", "editor", "admin", "owner"]
        guard roles.contains(value.lowercased()) else {
            throw ValidationError("--role must be one of \(roles.joined(separator: ", "))")
        }
        return "ROLE_\(value.uppercased())"
    }
}

struct LoginCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "login", abstract: "Log in and save the session to ~/.sparkops/credentials.json.")

    @Option(help: "Your email address.")
    var email: String

    @Option(help: "Your password (prompted for when omitted; SPARKOPS_PASSWORD also works).")
    var password: String?

    @OptionGroup var client: ClientOptions

    func run() async throws {
        let password = self.password ?? ProcessInfo.processInfo.environment["SPARKOPS_PASSWORD"] ?? Self.prompt("Password: ")
        let session = try await APIClient(options: self.client).call(.POST, "/api/v1/auth/login", body: ["email": self.email, "password": password], authenticated: false)
        guard let access = session["accessToken"] as? String, let refresh = session["refreshToken"] as? String else {
            throw APICallError(status: 200, code: "INTERNAL", message: "the login response has no tokens")
        }
        try SavedSession(url: self.client.baseURL, accessToken: access, refreshToken: refresh).save()
        let user = session["user"] as? [String: Any] ?? [:]
        if self.client.output == .json {
            Printer.print(user, format: .json, columns: [])
        } else {
            print("logged in as \(user["email"] as? String ?? self.email) (\(user["id"] as? String ?? ""))")
        }
    }

    static func prompt(_ text: String) -> String {
        guard let raw = getpass(text) else { return "" }
        return String(cString: raw)
    }
}

struct LogoutCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "logout", abstract: "End the saved session.")

    @OptionGroup var client: ClientOptions

    func run() async throws {
        if let session = SavedSession.load() {
            _ = try? await APIClient(options: self.client).call(.POST, "/api/v1/auth/logout", body: ["refreshToken": session.refreshToken])
        }
        SavedSession.remove()
        print("logged out")
    }
}

struct ProjectCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "project",
        abstract: "Create, list and show projects.",
        subcommands: [Create.self, List.self, Get.self, Use.self]
    )

    struct Use: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Make a project the default of later commands (saved beside the session; SPARKOPS_PROJECT overrides it)."
        )
        @Argument(help: "The project's name or prj_… id.") var project: String
        @OptionGroup var client: ClientOptions

        func run() async throws {
            let api = APIClient(options: self.client)
            let id = try await api.projectID(named: self.project)
            // Checked: the caller can see it.
            let found = try await api.call(.GET, "/api/v1/projects/\(id)")
            try ProjectDefault.save(id)
            print("using project \(found["name"] as? String ?? self.project) (\(id)); saved in \(ProjectDefault.path.path)")
        }
    }

    static let columns: [(title: String, key: String)] = [("id", "id"), ("name", "name"), ("description", "description"), ("created", "createTime")]

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create a project; you become its owner.")
        @Argument(help: "The project's name (unique).") var name: String
        @Option(help: "A description.") var description: String = ""
        @OptionGroup var client: ClientOptions

        func run() async throws {
            let project = try await APIClient(options: self.client).call(.POST, "/api/v1/projects", body: ["name": self.name, "description": self.description])
            Printer.print(project, format: self.client.output, columns: ProjectCommand.columns)
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Projects you belong to.")
        @OptionGroup var client: ClientOptions

        func run() async throws {
            let page = try await APIClient(options: self.client).call(.GET, "/api/v1/projects?page_size=500")
            Printer.print(page, format: self.client.output, rows: "projects", columns: ProjectCommand.columns)
        }
    }

    struct Get: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show a project.")
        @Argument(help: "The project's name or prj_… id.") var id: String
        @OptionGroup var client: ClientOptions

        func run() async throws {
            let project = try await APIClient(options: self.client).call(.GET, "/api/v1/projects/\(self.id)")
            Printer.print(project, format: self.client.output, columns: ProjectCommand.columns)
        }
    }
}

struct MemberCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "member",
        abstract: "Manage who belongs to a project.",
        subcommands: [Add.self, List.self, Remove.self]
    )

    static let columns: [(title: String, key: String)] = [("user", "userId"), ("email", "email"), ("role", "role")]

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Add a member, or change a member's role.")
        @Option(help: ProjectDefault.help) var project: String = ProjectDefault.current
        @Option(help: "The user's email.") var email: String?
        @Option(help: "The user's id (usr_…).") var userId: String?
        @Option(help: "viewer, runner, approver, editor, admin or owner.") var role: String
        @OptionGroup var client: ClientOptions

        func validate() throws {
            guard (self.email == nil) != (self.userId == nil) else { throw ValidationError("give --email or --user-id") }
        }

        func run() async throws {
            var body: [String: Any] = ["role": try Printer.role(self.role)]
            if let email = self.email { body["email"] = email }
            if let userID = self.userId { body["userId"] = userID }
            let member = try await APIClient(options: self.client).call(.POST, "/api/v1/projects/\(self.project)/members", body: body)
            Printer.print(member, format: self.client.output, columns: MemberCommand.columns)
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "A project's members.")
        @Option(help: ProjectDefault.help) var project: String = ProjectDefault.current
        @OptionGroup var client: ClientOptions

        func run() async throws {
            let page = try await APIClient(options: self.client).call(.GET, "/api/v1/projects/\(self.project)/members?page_size=500")
            Printer.print(page, format: self.client.output, rows: "members", columns: MemberCommand.columns)
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove a member.")
        @Option(help: ProjectDefault.help) var project: String = ProjectDefault.current
        @Argument(help: "The user id (usr_…).") var userId: String
        @OptionGroup var client: ClientOptions

        func run() async throws {
            _ = try await APIClient(options: self.client).call(.DELETE, "/api/v1/projects/\(self.project)/members/\(self.userId)")
            print("removed \(self.userId)")
        }
    }
}

struct APIKeyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "apikey",
        abstract: "Create, list and revoke a project's API keys.",
        subcommands: [Create.self, List.self, Revoke.self]
    )

    static let columns: [(title: String, key: String)] = [("id", "id"), ("name", "name"), ("role", "role"), ("prefix", "prefix"), ("expires", "expireTime"), ("revoked", "revokeTime")]

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create an API key; the key is shown this once.")
        @Option(help: ProjectDefault.help) var project: String = ProjectDefault.current
        @Option(help: "A name to recognize the key by.") var name: String
        @Option(help: "viewer, runner, approver, editor, admin or owner (at most yours).") var role: String = "viewer"
        @Option(help: "Days until it expires (default 90, at most 730).") var ttlDays: Int = 90
        @OptionGroup var client: ClientOptions

        func run() async throws {
            let created = try await APIClient(options: self.client).call(
                .POST,
                "/api/v1/projects/\(self.project)/api-keys",
                body: ["name": self.name, "role": try Printer.role(self.role), "ttlDays": self.ttlDays]
            )
            if self.client.output == .json {
                Printer.print(created, format: .json, columns: [])
            } else {
                Printer.print(created["apiKey"] as? [String: Any] ?? [:], format: .table, columns: APIKeyCommand.columns)
                print("\nkey (shown once): \(created["key"] as? String ?? "")")
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "A project's API keys (never the keys themselves).")
        @Option(help: ProjectDefault.help) var project: String = ProjectDefault.current
        @OptionGroup var client: ClientOptions

        func run() async throws {
            let page = try await APIClient(options: self.client).call(.GET, "/api/v1/projects/\(self.project)/api-keys?page_size=500")
            Printer.print(page, format: self.client.output, rows: "apiKeys", columns: APIKeyCommand.columns)
        }
    }

    struct Revoke: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Revoke an API key.")
        @Option(help: ProjectDefault.help) var project: String = ProjectDefault.current
        @Argument(help: "The key's id (key_…).") var id: String
        @OptionGroup var client: ClientOptions

        func run() async throws {
            let key = try await APIClient(options: self.client).call(.DELETE, "/api/v1/projects/\(self.project)/api-keys/\(self.id)")
            Printer.print(key, format: self.client.output, columns: APIKeyCommand.columns)
        }
    }
}

struct UserCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "user",
        abstract: "Users: create (administrators), show yourself, change your password, lift a sign-in throttle.",
        subcommands: [Create.self, Me.self, Password.self, Unthrottle.self]
    )

    static let columns: [(title: String, key: String)] = [("id", "id"), ("email", "email"), ("name", "displayName"), ("admin", "isAdmin")]

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create a user (administrators only).")
        @Option(help: "Email.") var email: String
        @Option(help: "Display name.") var name: String = ""
        @Option(help: "Password (at least 12 characters; prompted for when omitted).") var password: String?
        @Flag(help: "Make the user an administrator.") var admin = false
        @OptionGroup var client: ClientOptions

        func run() async throws {
            let password = self.password ?? LoginCommand.prompt("New user's password: ")
            let user = try await APIClient(options: self.client).call(
                .POST,
                "/api/v1/users",
                body: ["email": self.email, "displayName": self.name, "password": password, "isAdmin": self.admin]
            )
            Printer.print(user, format: self.client.output, columns: UserCommand.columns)
        }
    }

    struct Me: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Who you are logged in as.")
        @OptionGroup var client: ClientOptions

        func run() async throws {
            Printer.print(try await APIClient(options: self.client).call(.GET, "/api/v1/users/me"), format: self.client.output, columns: UserCommand.columns)
        }
    }

    struct Password: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Change your password; every session ends (log in again).")
        @OptionGroup var client: ClientOptions

        func run() async throws {
            let current = LoginCommand.prompt("Current password: ")
            let new = LoginCommand.prompt("New password: ")
            _ = try await APIClient(options: self.client).call(.POST, "/api/v1/users/me/password", body: ["currentPassword": current, "newPassword": new])
            SavedSession.remove()
            print("password changed; log in again")
        }
    }

    struct Unthrottle: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Forget an email's failed sign-ins, so that it may sign in again at once (administrators only)."
        )
        @Option(help: "The email whose sign-ins are throttled.") var email: String
        @OptionGroup var client: ClientOptions

        func run() async throws {
            let reply = try await APIClient(options: self.client).call(.POST, "/api/v1/auth/throttles/clear", body: ["email": self.email])
            let cleared = (reply["clearedFailures"] as? NSNumber)?.intValue ?? 0
            print(cleared == 0 ? "\(self.email) was not throttled" : "cleared \(cleared) failed sign-ins of \(self.email)")
        }
    }
}
