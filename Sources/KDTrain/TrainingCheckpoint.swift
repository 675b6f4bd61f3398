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

public enum TrainingCheckpoint {
    public static let stateName = "trainer_state.json"
    public static let optimizerName = "optimizer.safetensors"
    public static let version = "0.1.0"

    /// `checkpoint-<step>` directories in `outputDir` that are complete, newest last.
    public static func complete(in outputDir: String) -> [(step: Int, path: String)] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: outputDir)) ?? []
        return names.compactMap { name -> (Int, String)? in
            guard name.hasPrefix("checkpoint-"), let step = Int(name.dropFirst("checkpoint-".count)) else { return nil }
            let path = (outputDir as NSString).appendingPathComponent(name)
            let state = (path as NSString).appendingPathComponent(stateName)
            return FileManager.default.fileExists(atPath: state) ? (step, path) : nil
        }.sorted { $0.0 < $1.0 }
    }

    /// Writes a checkpoint atomically: everything into a temporary directory, each file flushed,
    /// then one rename. Older complete checkpoints beyond `keepLast` are removed afterwards.
    public static func write(
        outputDir: String, step: Int, model: CausalLM, settings: LoRASettings, baseModel: String,
        optimizer: AdamW, state: TrainerState, keepLast: Int
    ) throws -> String {
        let fm = FileManager.default
        let final = (outputDir as NSString).appendingPathComponent("checkpoint-\(step)")
        try writeDirectoryAtomically(final, durable: true) { staging in
            try PEFTAdapter.save(model, settings: settings, baseModel: baseModel, to: staging)
            let writer = try SafetensorsWriter(
                path: (staging as NSString).appendingPathComponent(optimizerName),
                entries: optimizer.slots.flatMap { slot in
                    [SafetensorsWriter.Entry(name: slot.name + ".exp_avg", dtype: .f32, shape: slot.parameter.shape),
                     SafetensorsWriter.Entry(name: slot.name + ".exp_avg_sq", dtype: .f32, shape: slot.parameter.shape)]
                }, metadata: ["step": String(optimizer.stepCount)])
            for slot in optimizer.slots {
                try writer.write(slot.exponentialAverage)
                try writer.write(slot.exponentialAverageSquare)
            }
            try writer.finish()
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            try writeDurably(try encoder.encode(state), to: (staging as NSString).appendingPathComponent(stateName))
        }
        for old in complete(in: outputDir).dropLast(keepLast) { try? fm.removeItem(atPath: old.path) }
        return final
    }

    /// Reads a checkpoint's state, checking it is complete.
    public static func readState(_ directory: String) throws -> TrainerState {
        let path = (directory as NSString).appendingPathComponent(stateName)
        guard let data = FileManager.default.contents(atPath: path) else {
            throw KDError("\(directory): not a complete checkpoint (no \(stateName))")
        }
        do {
            return try JSONDecoder().decode(TrainerState.self, from: data)
        } catch let error as DecodingError {
            throw KDError("\(path): \(ModelConfigurations.describe(error))")
        }
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
