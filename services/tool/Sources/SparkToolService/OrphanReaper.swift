import CSparkSandbox
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Reaps the processes bubblewrap leaves behind.
///
/// bubblewrap's monitor exits as soon as the sandbox's init reports the program's status, so that
/// init is orphaned and reparented to the machine's init; under an init that does not reap (a
/// container's plain entrypoint, a VM's agent) each call leaves a zombie, and the zombies of a
/// sandbox user count against its process limit until no program can start. The tool service
/// therefore makes itself the subreaper of its descendants and, after each program, reaps its
/// zombie children that were in a pid namespace of their own: only sandbox processes are, never
/// a child that swift-subprocess (or anything else in the process) is waiting for. Chromium, which
/// runs outside bubblewrap, leaves its crash handler and zygote behind the same way: those
/// zombies are reaped by name, and only when they are not the leader of their session (the
/// process swift-subprocess started, and waits for, is).
enum OrphanReaper {
    /// Once per process.
    static let adopted: Bool = spark_become_child_subreaper() == 0

    /// Reaps the sandbox zombies, and when `uid` is given (the program's own uid), waits up to
    /// `limit` for that uid's last processes (bubblewrap's init exits just after its monitor) so
    /// that the next program of the slot starts with none of them left.
    static func reap(uid: Int?, within limit: Duration = .milliseconds(500)) async {
        let deadline = ContinuousClock.now + limit
        while true {
            let remaining = Self.reapOnce(countingUID: uid)
            guard remaining > 0, ContinuousClock.now < deadline else { return }
            try? await Task.sleep(for: .milliseconds(2))
        }
    }

    /// Reaps what can be reaped now; returns how many processes of `countingUID` are left.
    @discardableResult
    static func reapOnce(countingUID: Int?) -> Int {
        guard Self.adopted else { return 0 }
        let me = getpid()
        var left = 0
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return 0 }
        for entry in entries {
            guard let pid = pid_t(entry), pid != me,
                  let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
            else { continue }
            var parent: pid_t?
            var zombie = false
            var namespaces = 0
            var uid: Int?
            var name = ""
            for line in status.split(separator: "\n") {
                if line.hasPrefix("Name:") { name = line.dropFirst(5).trimmingCharacters(in: .whitespaces) }
                if line.hasPrefix("PPid:") { parent = pid_t(line.dropFirst(5).trimmingCharacters(in: .whitespaces)) }
                if line.hasPrefix("State:") { zombie = line.dropFirst(6).trimmingCharacters(in: .whitespaces).hasPrefix("Z") }
                if line.hasPrefix("NSpid:") { namespaces = line.dropFirst(6).split(whereSeparator: { $0 == " " || $0 == "\t" }).count }
                if line.hasPrefix("Uid:") { uid = line.dropFirst(4).split(whereSeparator: { $0 == " " || $0 == "\t" }).first.flatMap { Int($0) } }
            }
            // A zombie of the counted uid is a program's (a slot's user runs nothing else), and
            // not one swift-subprocess waits for: that one has ended and been reaped already.
            if parent == me, zombie, namespaces >= 2 || (countingUID != nil && uid == countingUID) || (name.hasPrefix("chrom") && !Self.leadsSession(pid)) {
                var code: Int32 = 0
                if waitpid(pid, &code, WNOHANG) == pid { continue }
            }
            if let countingUID, uid == countingUID { left += 1 }
        }
        return left
    }

    /// Whether `pid` is its session's leader (field 6 of /proc/<pid>/stat, after the name).
    static func leadsSession(_ pid: pid_t) -> Bool {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let close = stat.lastIndex(of: ")") else { return true }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        // state ppid pgrp session …
        guard fields.count > 3, let session = pid_t(fields[3]) else { return true }
        return session == pid
    }
}
