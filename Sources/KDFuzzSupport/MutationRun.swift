import Foundation
import KDCore

/// Runs a target on deterministic mutants of its seeds, in process. A trap ends the process, so a
/// finished run is the evidence; before each mutant runs it is written to `lastInputPath`, so a
/// crash leaves the input that caused it behind.
public struct MutationRun {
    public struct Summary: CustomStringConvertible {
        public let target: FuzzTarget
        public var mutants = 0
        public var accepted = 0
        public var rejected = 0
        /// Errors that are not KDError (kd's one-line errors), by type.
        public var otherErrors: [String: Int] = [:]
        public var seconds = 0.0
        public var slowestSeconds = 0.0
        /// The input that took longest (to look at when a run is slow).
        public var slowestInput: [UInt8] = []

        public var description: String {
            let other = otherErrors.isEmpty ? "" : ", non-KDError errors \(otherErrors)"
            return "\(target.rawValue): \(mutants) mutants in \(String(format: "%.2f", seconds)) s: \(accepted) accepted, "
                + "\(rejected) rejected\(other); slowest \(String(format: "%.1f", slowestSeconds * 1000)) ms"
        }
    }

    public let target: FuzzTarget
    public let seeds: [[UInt8]]
    public let lastInputPath: String

    public init(target: FuzzTarget, seeds: [[UInt8]]) {
        self.target = target
        self.seeds = seeds
        lastInputPath = (FuzzEnvironment.scratch as NSString).appendingPathComponent("last-input-\(target.rawValue)")
    }

    /// The seeds themselves, then `mutants` mutants (seed i mod count, random stream `seed`).
    public func run(mutants: Int, seed: UInt64) -> Summary {
        var summary = Summary(target: target)
        var mutator = Mutator(seed: seed, corpus: seeds)
        try? FileManager.default.createDirectory(atPath: FuzzEnvironment.scratch, withIntermediateDirectories: true)
        let start = Date()
        for k in 0..<(seeds.count + mutants) {
            let input = k < seeds.count ? seeds[k] : mutator.mutate(seeds[k % seeds.count], corpus: seeds)
            _ = FileManager.default.createFile(atPath: lastInputPath, contents: Data(input))
            let began = Date()
            switch target.run(Data(input)) {
            case .accepted: summary.accepted += 1
            case .rejected(let error):
                summary.rejected += 1
                if !(error is KDError) { summary.otherErrors[String(describing: type(of: error)), default: 0] += 1 }
            }
            let elapsed = Date().timeIntervalSince(began)
            if elapsed > summary.slowestSeconds {
                summary.slowestSeconds = elapsed
                summary.slowestInput = input
            }
            summary.mutants += 1
        }
        summary.seconds = Date().timeIntervalSince(start)
        FuzzEnvironment.removeScratch()  // survived: nothing to keep
        return summary
    }
}
