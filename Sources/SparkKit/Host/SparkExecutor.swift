import Foundation
import NIOCore
import NIOPosix

/// Where a SparkOps process runs its Swift tasks.
///
/// By default a service process makes NIO's event loops Swift Concurrency's global executor, so a
/// request's tasks run on the threads that do its network I/O: no hop from an event loop to a
/// Dispatch worker and back on every await, which on a small machine costs more than the work
/// itself (a thread switch each way). Blocking work (bcrypt, SQLite) already runs on thread pools.
/// `SPARKOPS_EXECUTOR=dispatch` keeps Swift's default executor instead.
public enum SparkExecutor {
    /// Installs the event loops as the global executor; call first thing in `main`, on the main
    /// thread, before any task starts. Returns whether they were installed.
    @discardableResult
    public static func install() -> Bool {
        switch ProcessInfo.processInfo.environment["SPARKOPS_EXECUTOR"] ?? "nio" {
        case "dispatch":
            return false
        default:
            return NIOSingletons.unsafeTryInstallSingletonPosixEventLoopGroupAsConcurrencyGlobalExecutor()
        }
    }
}
