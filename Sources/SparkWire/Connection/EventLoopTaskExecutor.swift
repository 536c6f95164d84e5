public import NIOCore

/// Runs Swift tasks on a NIO event loop.
///
/// A connection's calls run with this executor preferred, so that a call, the frames it writes and
/// the frames that answer it stay on the connection's event loop thread: no thread hop between
/// reading a frame and resuming the task that waits for it, and no wake-up of the event loop when
/// the task writes. Handlers that block the thread (rather than awaiting) delay the connection's
/// other calls; `SparkWireServerTransport.Config.runsHandlersOnEventLoop` turns this off.
///
/// Callers that make many SparkWire calls can prefer it too, on the loop their client's
/// connections run on (`withTaskExecutorPreference(EventLoopTaskExecutor(loop)) { … }`): their
/// calls are then written and answered without leaving that thread.
public final class EventLoopTaskExecutor: TaskExecutor {
    public let eventLoop: any EventLoop

    public init(_ eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        let executor = self.asUnownedTaskExecutor()
        self.eventLoop.execute {
            job.runSynchronously(on: executor)
        }
    }
}
