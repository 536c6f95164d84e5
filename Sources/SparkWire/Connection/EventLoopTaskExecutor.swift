public import NIOCore
import Synchronization

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
///
/// Jobs queue here and run in order, in batches: the first job of a batch schedules one run on the
/// event loop, and jobs enqueued before it runs join it. Enqueuing allocates nothing once the
/// queue's arrays have grown.
public final class EventLoopTaskExecutor: TaskExecutor {
    public let eventLoop: any EventLoop
    private let queue: JobQueue
    /// Runs the queued jobs; made once, so that scheduling a run passes a stored closure.
    private let runJobs: @Sendable () -> Void

    public init(_ eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
        let queue = JobQueue()
        self.queue = queue
        self.runJobs = { queue.runAll() }
        queue.setExecutor(self.asUnownedTaskExecutor())
    }

    public func enqueue(_ job: consuming ExecutorJob) {
        if self.queue.push(UnownedJob(job)) {
            self.eventLoop.execute(self.runJobs)
        }
    }
}

/// The jobs an ``EventLoopTaskExecutor`` has not run yet. Two arrays take turns: one collects jobs
/// while the event loop runs the other's.
private final class JobQueue: Sendable {
    private struct State {
        var jobs: [UnownedJob] = []
        var spare: [UnownedJob] = []
        var scheduled = false
        var executor: UnownedTaskExecutor?
    }

    private let state = Mutex(State())

    func setExecutor(_ executor: UnownedTaskExecutor) {
        self.state.withLock { $0.executor = executor }
    }

    /// Queues a job; true when the caller must schedule a run.
    func push(_ job: UnownedJob) -> Bool {
        self.state.withLock { state in
            state.jobs.append(job)
            guard !state.scheduled else { return false }
            state.scheduled = true
            return true
        }
    }

    /// Event loop: runs the jobs queued so far. Jobs they enqueue run in the next batch.
    func runAll() {
        var (batch, executor) = self.state.withLock { state -> ([UnownedJob], UnownedTaskExecutor?) in
            state.scheduled = false
            var batch = state.spare
            state.spare = []
            swap(&batch, &state.jobs)
            return (batch, state.executor)
        }
        // Set by the executor's initializer, before any job can be enqueued.
        guard let executor else { preconditionFailure("a job was enqueued before its executor was made") }
        for job in batch {
            job.runSynchronously(on: executor)
        }
        batch.removeAll(keepingCapacity: true)
        self.state.withLock { state in
            if state.spare.capacity < batch.capacity { state.spare = batch }
        }
    }
}
