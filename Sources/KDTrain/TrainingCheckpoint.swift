import Foundation
import KDCore
import KDModels
import KDText

/// What a checkpoint records besides the adapter and the optimizer moments.
public struct TrainerState: Codable, Equatable {
    public struct Scheduler: Codable, Equatable {
        public var schedule: String
        public var peakLR: Double
        public var warmupSteps: Int
        public var maxSteps: Int
        public var lastLR: Double

        enum CodingKeys: String, CodingKey {
            case schedule, peakLR = "peak_lr", warmupSteps = "warmup_steps", maxSteps = "max_steps", lastLR = "last_lr"
        }
    }

    public var step: Int
    public var cursor: DataCursor
    public var seed: Int
    /// Every random draw is keyed by (run.seed, step, micro-batch, module), so the seed and the step
    /// are the whole generator state.
    public var rng: String
    public var scheduler: Scheduler
    public var configHash: String
    /// Model and LoRA shapes a resume must match.
    public var shapes: [String: String]
    public var kdVersion: String

    enum CodingKeys: String, CodingKey {
        case step, cursor, seed, rng, scheduler, configHash = "config_hash", shapes, kdVersion = "kd_version"
    }
}

extension TrainerState {
    /// Checks what a checkpoint's state says about itself, naming `file` and the key at fault.
    func validate(file: String) throws {
        guard scheduler.maxSteps >= 0 else {
            throw KDError("\(file): scheduler.max_steps \(scheduler.maxSteps) must not be negative")
        }
        guard step >= 0, step <= scheduler.maxSteps else {
            throw KDError("\(file): step \(step) must be between 0 and scheduler.max_steps (\(scheduler.maxSteps))")
        }
        guard scheduler.warmupSteps >= 0 else {
            throw KDError("\(file): scheduler.warmup_steps \(scheduler.warmupSteps) must not be negative")
        }
        guard scheduler.peakLR.isFinite, scheduler.lastLR.isFinite else {
            throw KDError("\(file): scheduler.peak_lr and scheduler.last_lr must be finite numbers")
        }
        guard cursor.epoch >= 0, cursor.index >= 0 else {
            throw KDError("\(file): cursor (epoch \(cursor.epoch), index \(cursor.index)) must not be negative")
        }
    }
}

public enum TrainingCheckpoint {
    public static let stateName = "trainer_state.json"
    public static let optimizerName = "optimizer.safetensors"
    public static let version = "0.1.0"
    public static let prefix = "checkpoint-"

    /// The step in a directory name `checkpoint-<digits>`, or nil for any other name.
    public static func step(inName name: String) -> Int? {
        guard name.hasPrefix(prefix) else { return nil }
        let digits = name.dropFirst(prefix.count)
        guard !digits.isEmpty, digits.allSatisfy({ $0.isASCII && $0.isNumber }) else { return nil }
        return Int(digits)
    }

    /// Every `checkpoint-<step>` directory in `outputDir`, whole or not, oldest first.
    public static func all(in outputDir: String) -> [(step: Int, path: String)] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: outputDir)) ?? []
        return names.compactMap { name -> (Int, String)? in
            guard let step = step(inName: name) else { return nil }
            return (step, (outputDir as NSString).appendingPathComponent(name))
        }.sorted { $0.0 < $1.0 }
    }

    /// `checkpoint-<step>` directories in `outputDir` that are complete (see `validate`), newest last.
    public static func complete(in outputDir: String) -> [(step: Int, path: String)] {
        all(in: outputDir).filter { (try? validate($0.path)) != nil }
    }

    /// The newest complete checkpoint in `outputDir`, and the newer ones passed over with the
    /// reason each is not whole.
    public static func newestComplete(in outputDir: String) -> (path: String?, skipped: [(path: String, reason: String)]) {
        var skipped: [(path: String, reason: String)] = []
        for candidate in all(in: outputDir).reversed() {
            do {
                _ = try validate(candidate.path)
                return (candidate.path, skipped)
            } catch {
                skipped.append((candidate.path, String(describing: error)))
            }
        }
        return (nil, skipped)
    }

    /// Checks that `directory` is a whole checkpoint: every file present and loadable (the adapter's
    /// config and both safetensors headers valid, the trainer state decoded and consistent with
    /// itself, the optimizer's step and the directory's name). Returns the state.
    @discardableResult
    public static func validate(_ directory: String) throws -> TrainerState {
        let state = try readState(directory)
        let statePath = (directory as NSString).appendingPathComponent(stateName)
        if let named = step(inName: (directory as NSString).lastPathComponent), named != state.step {
            throw KDError("\(statePath): step \(state.step) differs from the directory's name (step \(named))")
        }
        _ = try PEFTAdapter.settings(directory: directory)
        _ = try SafetensorsFile(path: (directory as NSString).appendingPathComponent(PEFTAdapter.weightsName))
        let optimizer = try SafetensorsFile(path: (directory as NSString).appendingPathComponent(optimizerName))
        guard optimizer.metadata["step"] == String(state.step) else {
            throw KDError("\(optimizer.path): metadata step \(optimizer.metadata["step"] ?? "absent") differs from "
                + "\(stateName)'s step \(state.step)")
        }
        return state
    }

    /// Writes a checkpoint atomically: everything into a temporary directory, each file flushed,
    /// then one rename. Older complete checkpoints beyond `keepLast` are then removed, each first
    /// renamed out of the `checkpoint-<step>` names so none is ever seen half deleted.
    /// `adapters` and `moments` are the whole model's, in layer order (gathered from its stages
    /// when they are held by several processes); `optimizerStep` is AdamW's step count.
    public static func write(
        outputDir: String, step: Int, adapters: [NamedAdapter], settings: LoRASettings, baseModel: String,
        moments: [AdamW.Moments], optimizerStep: Int, state: TrainerState, keepLast: Int
    ) throws -> String {
        let final = (outputDir as NSString).appendingPathComponent("\(prefix)\(step)")
        try writeDirectoryAtomically(final, durable: true) { staging in
            try reportingWrites(to: (final as NSString).appendingPathComponent(PEFTAdapter.weightsName)) {
                try PEFTAdapter.save(adapters, settings: settings, baseModel: baseModel, to: staging)
            }
            try reportingWrites(to: (final as NSString).appendingPathComponent(optimizerName)) {
                let writer = try SafetensorsWriter(
                    path: (staging as NSString).appendingPathComponent(optimizerName),
                    entries: moments.flatMap { slot in
                        [SafetensorsWriter.Entry(name: slot.name + ".exp_avg", dtype: .f32, shape: slot.average.shape),
                         SafetensorsWriter.Entry(name: slot.name + ".exp_avg_sq", dtype: .f32, shape: slot.averageSquare.shape)]
                    }, metadata: ["step": String(optimizerStep)])
                do {
                    for slot in moments {
                        try writer.write(slot.average)
                        try writer.write(slot.averageSquare)
                    }
                    try writer.finish()
                } catch {
                    writer.discard()
                    throw error
                }
            }
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            try writeDurably(try encoder.encode(state), to: (staging as NSString).appendingPathComponent(stateName))
        }
        for old in complete(in: outputDir).dropLast(keepLast) where old.path != final {
            try retireDirectory(old.path)
        }
        return final
    }

    /// Reads a checkpoint's state, checking it is complete and consistent with itself.
    public static func readState(_ directory: String) throws -> TrainerState {
        let path = (directory as NSString).appendingPathComponent(stateName)
        guard InputFile.exists(path) else { throw KDError("\(directory): not a complete checkpoint (no \(stateName))") }
        let data = try InputFile.read(path, limit: 1 << 24)
        let state: TrainerState
        do {
            state = try JSONDecoder().decode(TrainerState.self, from: data)
        } catch let error as DecodingError {
            throw KDError("\(path): \(ModelConfigurations.describe(error))")
        } catch {
            throw KDError("\(path): not valid JSON")
        }
        try state.validate(file: path)
        return state
    }
    /// Restores optimizer moments saved by `write`.
    public static func readOptimizer(_ directory: String, into optimizer: AdamW, step: Int) throws {
        let file = try SafetensorsFile(path: (directory as NSString).appendingPathComponent(optimizerName))
        for slot in optimizer.slots {
            for (suffix, target) in [(".exp_avg", slot.exponentialAverage), (".exp_avg_sq", slot.exponentialAverageSquare)] {
                let name = slot.name + suffix
                guard let info = file.tensors[name], info.shape == slot.parameter.shape else {
                    throw KDError("\(file.path): tensor '\(name)' is missing or has the wrong shape")
                }
                let values = try file.load(name, on: target.device)
                target.data.update(from: values.data, count: target.count)
            }
        }
        optimizer.stepCount = step
    }
}
