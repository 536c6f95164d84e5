import SparkKit

/// The project service's schema. Times are microseconds since 1970 (BIGINT) in both dialects.
enum ProjectMigrations {
    static let all: [SparkMigration] = [
        SparkMigration("0001_identity", [
            """
            CREATE TABLE users (
                id TEXT PRIMARY KEY,
                email TEXT NOT NULL UNIQUE,
                display_name TEXT NOT NULL,
                password_hash TEXT NOT NULL,
                is_admin BOOLEAN NOT NULL DEFAULT FALSE,
                tokens_not_before BIGINT NOT NULL DEFAULT 0,
                created_at BIGINT NOT NULL
            )
            """,
            """
            CREATE TABLE projects (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                description TEXT NOT NULL DEFAULT '',
                created_by TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                updated_at BIGINT NOT NULL,
                deleted_at BIGINT
            )
            """,
            // Names are unique among projects that are not deleted.
            "CREATE UNIQUE INDEX projects_live_name ON projects (name) WHERE deleted_at IS NULL",
            """
            CREATE TABLE memberships (
                project_id TEXT NOT NULL REFERENCES projects(id),
                user_id TEXT NOT NULL REFERENCES users(id),
                role INTEGER NOT NULL,
                created_at BIGINT NOT NULL,
                PRIMARY KEY (project_id, user_id)
            )
            """,
            "CREATE INDEX memberships_user ON memberships (user_id)",
            """
            CREATE TABLE api_keys (
                id TEXT PRIMARY KEY,
                project_id TEXT NOT NULL REFERENCES projects(id),
                name TEXT NOT NULL,
                role INTEGER NOT NULL,
                prefix TEXT NOT NULL,
                key_hash TEXT NOT NULL UNIQUE,
                created_by TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                expires_at BIGINT NOT NULL,
                revoked_at BIGINT,
                last_used_at BIGINT
            )
            """,
            "CREATE INDEX api_keys_project ON api_keys (project_id)",
            """
            CREATE TABLE refresh_tokens (
                id TEXT PRIMARY KEY,
                user_id TEXT NOT NULL REFERENCES users(id),
                family_id TEXT NOT NULL,
                token_hash TEXT NOT NULL UNIQUE,
                created_at BIGINT NOT NULL,
                expires_at BIGINT NOT NULL,
                used_at BIGINT,
                revoked_at BIGINT
            )
            """,
            "CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id)",
            "CREATE INDEX refresh_tokens_user ON refresh_tokens (user_id)",
            // Access tokens ended before their expiry (logout); rows can go once expired.
            "CREATE TABLE revoked_access_tokens (token_id TEXT PRIMARY KEY, expires_at BIGINT NOT NULL)",
            // Failed logins per email in the current window, whether or not the user exists.
            "CREATE TABLE login_failures (email TEXT PRIMARY KEY, window_start BIGINT NOT NULL, failures INTEGER NOT NULL)",
            """
            CREATE TABLE signing_keys (
                id TEXT PRIMARY KEY,
                algorithm TEXT NOT NULL,
                private_key TEXT NOT NULL,
                created_at BIGINT NOT NULL
            )
            """,
        ]),
        SparkMigration("0002_audit_log") { dialect in
            var statements = [
                """
                CREATE TABLE audit_log (
                    id TEXT PRIMARY KEY,
                    at BIGINT NOT NULL,
                    project_id TEXT NOT NULL DEFAULT '',
                    actor TEXT NOT NULL,
                    action TEXT NOT NULL,
                    target TEXT NOT NULL DEFAULT '',
                    outcome TEXT NOT NULL,
                    ip TEXT NOT NULL DEFAULT '',
                    detail TEXT NOT NULL DEFAULT ''
                )
                """,
                "CREATE INDEX audit_log_project ON audit_log (project_id, id)",
            ]
            // Append-only: the database itself refuses to change or remove an event.
            switch dialect {
            case .sqlite:
                statements += [
                    "CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END",
                    "CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END",
                ]
            case .postgres:
                statements += [
                    """
                    CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
                    BEGIN RAISE EXCEPTION 'audit_log is append-only'; END $$
                    """,
                    "CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()",
                ]
            }
            return statements
        },
        SparkMigration("0003_hardening", [
            // Project names are unique among the projects a caller can see, never globally, so
            // that a conflict cannot reveal (or let anyone squat) another tenant's names.
            "DROP INDEX projects_live_name",
            "CREATE INDEX projects_name ON projects (name)",
            // Sign-in throttling: after the free failures, each failure pauses the email's
            // sign-ins until this time (a delay that grows, at most 15 minutes, and ends by itself).
            "ALTER TABLE login_failures ADD COLUMN blocked_until BIGINT NOT NULL DEFAULT 0",
            // Session families ended before their refresh tokens expired (logout, refresh-token
            // reuse): their access tokens are refused too. Rows can go once no access token of
            // the family can still be valid.
            "CREATE TABLE revoked_families (family_id TEXT PRIMARY KEY, expires_at BIGINT NOT NULL)",
        ]),
    ]
}
