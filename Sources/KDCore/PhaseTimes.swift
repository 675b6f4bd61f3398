import Foundation

/// Wall-clock seconds per phase of the work (`teacher_forward`, `student_backward`, …), summed
/// over every call that reports to it, from any thread. Each phase is timed on the thread that
/// runs it, so two phases that run side by side (teacher and student) both count in full, and
/// the phases of a step can add up to more than the step.
public final class PhaseTimes: @unchecked Sendable {
    private let lock = NSLock()
    private var seconds: [String: Double] = [:]

    public init() {}

    /// Runs `body`, adding its wall-clock time to `phase`.
    public func time<T>(_ phase: String, _ body: () throws -> T) rethrows -> T {
        let start = ContinuousClock.now
        defer {
            let elapsed = (ContinuousClock.now - start).seconds
            lock.withLock { seconds[phase, default: 0] += elapsed }
        }
        return try body()
    }

    /// The seconds per phase since the last call (or since the start), and zero again.
    public func take() -> [String: Double] {
        lock.withLock {
            defer { seconds = [:] }
            return seconds
        }
    }

    /// Phases named `<prefix>_<phase>`: one model's share of a run's times.
    public struct Scope: Sendable {
        public let times: PhaseTimes
        public let prefix: String

        public init(_ times: PhaseTimes, prefix: String) {
            self.times = times
            self.prefix = prefix
        }

        public func time<T>(_ phase: String, _ body: () throws -> T) rethrows -> T {
            try times.time(prefix + "_" + phase, body)
        }
    }
}
