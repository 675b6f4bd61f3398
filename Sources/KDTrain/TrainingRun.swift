import Foundation
import KDCore
import KDModels
import KDText

/// The training loop around a `Trainer`: the output directory, metrics.jsonl, checkpoints on
/// schedule, stopping on request, and the final model.
///
/// In a job of several ranks, the writing rank (rank 0 of the replicas' student ranks) alone owns
/// the output directory: it takes the lock, chooses the checkpoint to resume from (every rank reads that one; the directory
/// must be on a file system all hosts see), writes metrics.jsonl, the checkpoints and the final
/// model, and evaluates. A stop asked of any rank stops all of them after the same step.
public final class TrainingRun {
    public enum Resume: Equatable {
        /// The newest complete checkpoint in output_dir, or a fresh start when there is none.
        case auto
        case directory(String)
    }

    public enum Outcome: Equatable {
        case finished
        /// Stopped by a signal after checkpointing (the signal number).
        case stopped(signal: Int32, checkpoint: String)
    }

    public let trainer: Trainer
    public let outputDir: String
    /// `data.eval`, evaluated base vs distilled when the run finishes.
    public let evalDataset: Dataset?
    public let resumedFrom: String?
    let metricsPath: String
    /// Held for the life of the run (and so of the process), by the writing rank.
    let lock: RunDirectoryLock?
    let communicator: Communicator
    /// Whether this process writes the run's files (rank 0 of the replicas).
    var writes: Bool { communicator.rank == 0 }
    /// Called before clipping with each step's gradients (for checking against a reference).
    public var gradientSink: ((Int, [(name: String, tensor: Tensor)]) throws -> Void)?

    /// Takes the output directory (see `RunDirectoryLock`) before reading or writing anything in it,
    /// removes what an interrupted run left half-written, then loads the run and its checkpoint.
    public init(config: RunConfig, resume: Resume?, layout: RankLayout, onNote: (String) -> Void) throws {
        guard let communicator = layout.replicas else { throw KDError("rank \(layout.world.rank) holds no student to train") }
        self.communicator = communicator
        outputDir = config.run.outputDir
        metricsPath = (outputDir as NSString).appendingPathComponent("metrics.jsonl")
        let from: String?
        if communicator.rank == 0 {  // `writes`, before self is whole
            lock = try RunDirectoryLock(directory: outputDir)
            for note in Self.removeLeftovers(in: outputDir) { onNote(note) }
            from = try Self.checkpointToResume(resume, outputDir: outputDir, metricsPath: metricsPath, onNote: onNote)
        } else {
            lock = nil
            from = nil
        }
        // The writing rank's choice, on every replica ("" for none).
        let chosen = String(decoding: try communicator.broadcast(Array((from ?? "").utf8), from: 0), as: UTF8.self)
        evalDataset = try config.data.eval.map { try config.loadDataset($0, key: "data.eval") }
        if let evalDataset { try config.checkVocabulary(evalDataset) }
        if let evalDataset, let cache = config.data.teacherCache {
            try TeacherCache.manifestAndSpec(directory: cache).manifest.checkData(
                split: "eval", dataset: evalDataset, key: "data.eval", directory: cache)
        }
        trainer = try Trainer(config: config, resumeFrom: chosen.isEmpty ? nil : chosen, layout: layout, onLoad: onNote)
        resumedFrom = chosen.isEmpty ? nil : chosen
        for note in trainer.notes { onNote(note) }
        if writes { try truncateMetrics(after: trainer.step) }
    }

    /// The checkpoint a run resumes from (nil: from the start), refusing to start over a run
    /// without `--resume`.
    static func checkpointToResume(_ resume: Resume?, outputDir: String, metricsPath: String, onNote: (String) -> Void) throws
        -> String? {
        var from: String?
        switch resume {
        case .directory(let path):
            try TrainingCheckpoint.validate(path)
            from = path
        case .auto:
            let (newest, skipped) = TrainingCheckpoint.newestComplete(in: outputDir)
            for (path, reason) in skipped { onNote("warning: skipping \(path), not a whole checkpoint: \(reason)") }
            from = newest
            if from == nil { onNote("no checkpoint in \(outputDir): starting from step 0") }
        case nil:
            if !TrainingCheckpoint.all(in: outputDir).isEmpty || FileManager.default.fileExists(atPath: metricsPath) {
                throw KDError("\(outputDir) already holds a run: resume it with --resume, or choose another run.output_dir")
            }
        }
        return from
    }

    /// Removes the staging files and directories (`*.tmp-<pid>`) and the checkpoints being deleted
    /// (`.*.deleting-<pid>`) that a run killed part-way left in `directory`, unless their process is
    /// still alive (another kd command writing there). Returns one note per removal.
    static func removeLeftovers(in directory: String) -> [String] {
        let fm = FileManager.default
        var notes: [String] = []
        for name in ((try? fm.contentsOfDirectory(atPath: directory)) ?? []).sorted() {
            guard let pid = leftoverOwner(name) else { continue }
            if pid != getpid() && pid > 0 && (kill(pid, 0) == 0 || errno == EPERM) { continue }
            let path = (directory as NSString).appendingPathComponent(name)
            do {
                try fm.removeItem(atPath: path)
                notes.append("removed \(path), left by an interrupted run (pid \(pid))")
            } catch {
                notes.append("warning: cannot remove \(path), left by an interrupted run: \(describeFileError(error))")
            }
        }
        return notes
    }

    /// The pid in a name ending `.tmp-<pid>`, or in `.<name>.deleting-<pid>`.
    static func leftoverOwner(_ name: String) -> pid_t? {
        for marker in [".tmp-", ".deleting-"] {
            guard let range = name.range(of: marker, options: .backwards) else { continue }
            if marker == ".deleting-" && !name.hasPrefix(".") { continue }
            let digits = name[range.upperBound...]
            guard !digits.isEmpty, digits.count <= 10, digits.allSatisfy({ $0.isASCII && $0.isNumber }),
                  let pid = pid_t(digits) else { continue }
            return pid
        }
        return nil
    }

    /// Keeps the metrics lines of steps up to `step`: steps after the checkpoint are rerun.
    func truncateMetrics(after step: Int) throws {
        guard InputFile.exists(metricsPath) else { return }
        let data = try InputFile.read(metricsPath)
        let kept = data.split(separator: UInt8(ascii: "\n")).filter { line in
            guard let object = try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any],
                  let lineStep = object["step"] as? Int else { return false }
            return lineStep <= step
        }
        var out = Data()
        for line in kept { out.append(contentsOf: line); out.append(UInt8(ascii: "\n")) }
        try writeDurably(out, to: metricsPath)
    }

    /// Trains to `train.max_steps`. `onStep` gets every logged step; `stopRequested` is polled
    /// between steps and returns the signal that asked to stop.
    /// In a job of several replicas, each runs this; `onStep` is called on the writing rank.
    public func run(onStep: (StepMetrics) -> Void, stopRequested: () -> Int32?) throws -> Outcome {
        let config = trainer.config
        let start = ContinuousClock.now
        let metricsFile = writes ? open(metricsPath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o666) : -1
        guard metricsFile >= 0 || !writes else { throw writeError(metricsPath, errno: errno) }
        defer { if metricsFile >= 0 { close(metricsFile) } }
        // A checkpoint on disk implies the metrics lines of its steps are on disk too. Other
        // replicas wait until the writing rank has written it.
        let checkpoint = { [trainer, metricsPath, outputDir, writes, communicator] () throws -> String in
            if writes {
                if fsync(metricsFile) != 0 { throw writeError(metricsPath, errno: errno) }
                _ = try trainer.saveCheckpoint()
            }
            try communicator.barrier()
            return (outputDir as NSString).appendingPathComponent("checkpoint-\(trainer.step)")
        }
        var lastCheckpointStep = resumedFrom == nil ? -1 : trainer.step
        while trainer.step < config.train.maxSteps {
            // Every rank stops after the same step: the largest signal number any rank received.
            let requested = try communicator.maximum(Int(stopRequested() ?? 0))
            if requested != 0 {
                // The next batch's teacher work, started early, is not needed (a teacher rank's
                // chunks of it are taken off the wire).
                trainer.discardPrefetch()
                let path = lastCheckpointStep == trainer.step
                    ? (outputDir as NSString).appendingPathComponent("checkpoint-\(trainer.step)") : try checkpoint()
                return .stopped(signal: Int32(requested), checkpoint: path)
            }
            var metrics: StepMetrics
            do {
                if let gradientSink {
                    trainer.optimizerHook = { step, gradients in try gradientSink(step, gradients) }
                }
                metrics = try trainer.trainStep()
            } catch let error as NonFiniteStep {
                let last = TrainingCheckpoint.complete(in: outputDir).last
                throw KDError("\(error.description); stopped without updating. "
                    + (last.map { "The last good checkpoint is \($0.path)" } ?? "No checkpoint was written yet"))
            }
            metrics.elapsedSeconds = (ContinuousClock.now - start).seconds
            if writes && (metrics.step % config.log.everySteps == 0 || metrics.step == config.train.maxSteps) {
                let line = try JSONSerialization.data(withJSONObject: metrics.json, options: [.sortedKeys])
                let failure = writeAll(metricsFile, line + Data("\n".utf8))
                if failure != 0 { throw writeError(metricsPath, errno: failure) }
                onStep(metrics)
            }
            if config.checkpoint.everySteps > 0 && metrics.step % config.checkpoint.everySteps == 0 {
                _ = try checkpoint()
                lastCheckpointStep = metrics.step
            }
        }
        if lastCheckpointStep != trainer.step { _ = try checkpoint() }
        if writes { try writeFinalModel() }
        try communicator.barrier()
        return .finished
    }

    /// Base vs distilled on `data.eval`, written to `<output_dir>/eval.json`; nil without eval data.
    /// The writing rank evaluates; other replicas return nil.
    public func evaluate() throws -> (base: HeldOutReport, distilled: HeldOutReport)? {
        guard let evalDataset, writes else { return nil }
        let (base, distilled) = try Evaluation.baseAndAdapted(
            trainer.pass.reading(split: "eval"), dataset: evalDataset, batchSize: trainer.config.train.batchSize, padID: trainer.padID)
        try writeJSON(["step": trainer.step, "data": evalDataset.path, "base": base.json, "distilled": distilled.json],
                      to: (outputDir as NSString).appendingPathComponent("eval.json"))
        return (base, distilled)
    }

    /// `final_model/`: the adapter, and the merged model when `checkpoint.save_merged`.
    public func writeFinalModel() throws {
        let config = trainer.config
        let final = (outputDir as NSString).appendingPathComponent("final_model")
        let all = try trainer.allAdapters()
        try writeDirectoryAtomically(final, durable: true) { staging in
            try reportingWrites(to: (final as NSString).appendingPathComponent(PEFTAdapter.weightsName)) {
                try PEFTAdapter.save(all, settings: config.lora, baseModel: config.student.path, to: staging)
            }
            if config.checkpoint.saveMerged {
                let adapters = Dictionary(uniqueKeysWithValues: all.map { ($0.name, (a: $0.adapter.a, b: $0.adapter.b)) })
                try Merge.write(base: try Checkpoint(directory: config.student.path), adapters: adapters, scale: config.lora.scale,
                                to: (staging as NSString).appendingPathComponent("merged"))
            }
        }
    }
}

/// An advisory lock (flock) on `<output_dir>/.kd-lock`, which holds the owner's pid: one run per
/// output directory. Taken before anything in the directory is read or written and held until the
/// lock is released (the run ends, or the process dies: the kernel drops a dead process's flock,
/// so a stale lock file never blocks).
public final class RunDirectoryLock {
    public static let name = ".kd-lock"
    public let path: String
    private let fd: Int32

    public init(directory: String) throws {
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        } catch {
            throw KDError("\(directory): cannot create the output directory (\(describeFileError(error)))")
        }
        path = (directory as NSString).appendingPathComponent(Self.name)
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o666)
        guard fd >= 0 else { throw KDError("\(path): cannot open the run's lock file (\(errorText(errno)))") }
        while flock(fd, LOCK_EX | LOCK_NB) != 0 {
            let reason = errno
            if reason == EINTR { continue }
            close(fd)
            if reason == EWOULDBLOCK {
                let holder = Self.holder(path).map { "pid \($0)" } ?? "pid unknown"
                throw KDError("\(directory): another kd run (\(holder)) is using this output directory; "
                    + "wait for it to end, or choose another run.output_dir")
            }
            throw KDError("\(path): cannot lock the output directory (\(errorText(reason)))")
        }
        self.fd = fd
        // The pid is for people and for the refusal above; the lock itself is the flock.
        if ftruncate(fd, 0) == 0 { _ = writeAll(fd, Data("\(getpid())\n".utf8)) }
    }

    deinit { close(fd) }

    /// The pid written in the lock file. The holder writes it just after locking, so an empty file
    /// is read again for a moment.
    static func holder(_ path: String) -> Int32? {
        for _ in 0..<100 {
            if let data = FileManager.default.contents(atPath: path),
               let pid = Int32(String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)) {
                return pid
            }
            usleep(10_000)
        }
        return nil
    }
}
