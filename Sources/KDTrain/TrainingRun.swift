import Foundation
import KDCore
import KDModels
import KDText

/// The training loop around a `Trainer`: the output directory, metrics.jsonl, checkpoints on
/// schedule, stopping on request, and the final model.
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
    /// Called before clipping with each step's gradients (for checking against a reference).
    public var gradientSink: ((Int, [(name: String, tensor: Tensor)]) throws -> Void)?

    public init(config: RunConfig, resume: Resume?, onNote: (String) -> Void) throws {
        outputDir = config.run.outputDir
        metricsPath = (outputDir as NSString).appendingPathComponent("metrics.jsonl")
        let fm = FileManager.default
        var from: String?
        switch resume {
        case .directory(let path):
            from = path
        case .auto:
            from = TrainingCheckpoint.complete(in: outputDir).last?.path
            if from == nil { onNote("no checkpoint in \(outputDir): starting from step 0") }
        case nil:
            if !TrainingCheckpoint.complete(in: outputDir).isEmpty || fm.fileExists(atPath: metricsPath) {
                throw KDError("\(outputDir) already holds a run: resume it with --resume, or choose another run.output_dir")
            }
        }
        if let from { _ = try TrainingCheckpoint.readState(from) }
        evalDataset = try config.data.eval.map { try config.loadDataset($0, key: "data.eval") }
        trainer = try Trainer(config: config, resumeFrom: from, onLoad: onNote)
        resumedFrom = from
        for note in trainer.notes { onNote(note) }
        try fm.createDirectory(atPath: outputDir, withIntermediateDirectories: true)
        // Staging directories of an interrupted checkpoint write are incomplete by construction.
        for name in (try? fm.contentsOfDirectory(atPath: outputDir)) ?? [] where name.contains(".tmp-") {
            try? fm.removeItem(atPath: (outputDir as NSString).appendingPathComponent(name))
        }
        try truncateMetrics(after: trainer.step)
    }

    /// Keeps the metrics lines of steps up to `step`: steps after the checkpoint are rerun.
    func truncateMetrics(after step: Int) throws {
        guard let data = FileManager.default.contents(atPath: metricsPath) else { return }
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
    public func run(onStep: (StepMetrics) -> Void, stopRequested: () -> Int32?) throws -> Outcome {
        let config = trainer.config
        let start = ContinuousClock.now
        let metricsFile = try openForAppending(metricsPath)
        defer { try? metricsFile.close() }
        var lastCheckpointStep = resumedFrom == nil ? -1 : trainer.step
        while trainer.step < config.train.maxSteps {
            if let signal = stopRequested() {
                let path = lastCheckpointStep == trainer.step
                    ? (outputDir as NSString).appendingPathComponent("checkpoint-\(trainer.step)") : try trainer.saveCheckpoint()
                return .stopped(signal: signal, checkpoint: path)
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
            if metrics.step % config.log.everySteps == 0 || metrics.step == config.train.maxSteps {
                let line = try JSONSerialization.data(withJSONObject: metrics.json, options: [.sortedKeys])
                try metricsFile.write(contentsOf: line + Data("\n".utf8))
                onStep(metrics)
            }
            if config.checkpoint.everySteps > 0 && metrics.step % config.checkpoint.everySteps == 0 {
                try trainer.saveCheckpoint()
                lastCheckpointStep = metrics.step
            }
        }
        if lastCheckpointStep != trainer.step { try trainer.saveCheckpoint() }
        try writeFinalModel()
        return .finished
    }

    /// Base vs distilled on `data.eval`, written to `<output_dir>/eval.json`; nil without eval data.
    public func evaluate() throws -> (base: HeldOutReport, distilled: HeldOutReport)? {
        guard let evalDataset else { return nil }
        let (base, distilled) = try Evaluation.baseAndAdapted(
            trainer.pass, dataset: evalDataset, batchSize: trainer.config.train.batchSize, padID: trainer.padID)
        try writeJSON(["step": trainer.step, "data": evalDataset.path, "base": base.json, "distilled": distilled.json],
                      to: (outputDir as NSString).appendingPathComponent("eval.json"))
        return (base, distilled)
    }

    /// `final_model/`: the adapter, and the merged model when `checkpoint.save_merged`.
    public func writeFinalModel() throws {
        let config = trainer.config
        let final = (outputDir as NSString).appendingPathComponent("final_model")
        try writeDirectoryAtomically(final) { staging in
            try PEFTAdapter.save(trainer.student, settings: config.lora, baseModel: config.student.path, to: staging)
            if config.checkpoint.saveMerged {
                var adapters: [String: (a: Tensor, b: Tensor)] = [:]
                for linear in trainer.student.linears { if let adapter = linear.adapter { adapters[linear.name] = (adapter.a, adapter.b) } }
                try Merge.write(base: try Checkpoint(directory: config.student.path), adapters: adapters, scale: config.lora.scale,
                                to: (staging as NSString).appendingPathComponent("merged"))
            }
        }
    }

    private func openForAppending(_ path: String) throws -> FileHandle {
        if !FileManager.default.fileExists(atPath: path) { _ = FileManager.default.createFile(atPath: path, contents: nil) }
        guard let handle = FileHandle(forWritingAtPath: path) else { throw KDError("\(path): cannot open for writing") }
        try handle.seekToEnd()
        return handle
    }
}
