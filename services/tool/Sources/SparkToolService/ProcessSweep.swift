import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Ends what a program left running when its call ends: a child that moved to a process group or
/// a session of its own, or a daemon, would otherwise outlive the call and take a process slot
/// (`limits.processes`) the next program of the slot needs.
enum ProcessSweep {
    /// SIGKILL to every process of `uid` (a slot's own user, which runs nothing but the program).
    static func kill(uid: uid_t) {
        guard uid != 0, uid != getuid() else { return }
        Self.each { pid, status, _ in
            if Self.field("Uid:", in: status).flatMap({ uid_t($0) }) == uid { Glibc.kill(pid, SIGKILL) }
        }
    }

    /// SIGKILL to every process of the session `session` (the program's own: it starts one).
    static func kill(session: pid_t) {
        guard session > 1, session != getsid(0) else { return }
        Self.each { pid, _, stat in
            // Field 6 of /proc/<pid>/stat, after the name: state ppid pgrp session.
            guard let close = stat.lastIndex(of: ")") else { return }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            if fields.count > 3, pid_t(fields[3]) == session { Glibc.kill(pid, SIGKILL) }
        }
    }

    private static func each(_ body: (pid_t, String, String) -> Void) {
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return }
        let me = getpid()
        for entry in entries {
            guard let pid = pid_t(entry), pid != me,
                let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
                let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)
            else { continue }
            body(pid, status, stat)
        }
    }

    /// The first number after `name` on its line of /proc/<pid>/status (`Uid:` gives the real uid).
    private static func field(_ name: String, in status: String) -> String? {
        guard let line = status.split(separator: "\n").first(where: { $0.hasPrefix(name) }) else { return nil }
        return line.dropFirst(name.count).split(whereSeparator: { $0 == " " || $0 == "\t" }).first.map(String.init)
    }
}
