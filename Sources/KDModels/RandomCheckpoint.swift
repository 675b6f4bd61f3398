import Foundation
import KDCore

/// Writes a random-initialised checkpoint in the published Hugging Face layout (config.json and
/// safetensors, sharded with an index when large), as transformers' own init does: normal
/// weights with `initializer_range` as std, RMSNorm weights of one. Tensors can instead be copied
/// from another checkpoint (a student made from its teacher's embedding and first layers).
public enum RandomCheckpoint {
    /// Applies `key=value` overrides (values parsed as JSON, else taken as strings) to a config.
    public static func override(_ config: inout [String: Any], with assignments: [String]) throws {
        for assignment in assignments {
            guard let eq = assignment.firstIndex(of: "="), eq != assignment.startIndex else {
                throw KDError("--set '\(assignment)': expected key=value")
            }
            let key = String(assignment[..<eq])
            let text = String(assignment[assignment.index(after: eq)...])
            config[key] = (try? JSONSerialization.jsonObject(with: Data(text.utf8), options: [.fragmentsAllowed])) ?? text
        }
    }

    /// Writes the checkpoint into `directory`, which must not exist yet (or is replaced when
    /// `replace`). Everything is written beside it first and renamed into place at the end.
    @discardableResult
    public static func write(
        config: [String: Any], to directory: String, seed: UInt64, dtype: DType, maxShardBytes: Int = 4 << 30,
        replace: Bool = false, configOnly: Bool = false, extraFiles: [String] = [], copyFrom: Checkpoint? = nil
    ) throws -> ModelSpec {
        guard dtype == .f32 || dtype == .bf16 else { throw KDError("--dtype must be f32 or bf16") }
        let fm = FileManager.default
        if fm.fileExists(atPath: directory) && !replace {
            throw KDError("\(directory): already exists (pass --force to replace it)")
        }
        if replace { try requireReplaceableDirectory(directory) }
        var config = config
        config["torch_dtype"] = dtype == .f32 ? "float32" : "bfloat16"
        config.removeValue(forKey: "dtype")
        let configData = try JSONSerialization.data(withJSONObject: config, options: [.prettyPrinted, .sortedKeys])
        let spec = try ModelConfigurations.decode(configData, file: "config.json")

        try writeDirectoryAtomically(directory) { staging in
            try configData.write(to: URL(fileURLWithPath: (staging as NSString).appendingPathComponent("config.json")))
            if !configOnly {
                let std = Float((config["initializer_range"] as? Double) ?? 0.02)
                try writeWeights(spec: spec, into: staging, seed: seed, dtype: dtype, std: std, maxShardBytes: maxShardBytes,
                                 copyFrom: copyFrom)
            }
            for file in extraFiles {
                try fm.copyItem(atPath: file, toPath: (staging as NSString).appendingPathComponent((file as NSString).lastPathComponent))
            }
        }
        return spec
    }

    /// Random tensors, except those `copyFrom` has under the same name and shape, which are copied.
    static func writeWeights(spec: ModelSpec, into directory: String, seed: UInt64, dtype: DType, std: Float,
                             maxShardBytes: Int, copyFrom: Checkpoint?) throws {
        let device = Device(id: 0)
        let tensors = spec.checkpointTensors()
        var shards: [[(name: String, shape: [Int])]] = [[]]
        var shardBytes = 0
        for tensor in tensors {
            let bytes = tensor.shape.reduce(1, *) * dtype.size
            if shardBytes + bytes > maxShardBytes && !shards[shards.count - 1].isEmpty {
                shards.append([])
                shardBytes = 0
            }
            shards[shards.count - 1].append(tensor)
            shardBytes += bytes
        }
        let names = shards.count == 1 ? [Checkpoint.singleName]
            : (1...shards.count).map { String(format: "model-%05d-of-%05d.safetensors", $0, shards.count) }
        let largest = tensors.map { $0.shape.reduce(1, *) }.max() ?? 0
        let scratch = UnsafeMutablePointer<Float>.allocate(capacity: largest)
        defer { scratch.deallocate() }
        var weightMap: [String: String] = [:]
        for (shard, name) in zip(shards, names) {
            let writer = try SafetensorsWriter(
                path: (directory as NSString).appendingPathComponent(name),
                entries: shard.map { .init(name: $0.name, dtype: dtype, shape: $0.shape) })
            for tensor in shard {
                let count = tensor.shape.reduce(1, *)
                if let source = copyFrom, let (_, info) = source.tensors[tensor.name], info.shape == tensor.shape,
                   info.dtype.isFloatingPoint {
                    scratch.update(from: try source.load(tensor.name, on: device).data, count: count)
                } else if tensor.name.hasSuffix("norm.weight") {
                    scratch.update(repeating: 1, count: count)
                } else {
                    RandomGenerator.fillNormal(scratch, count: count, std: std, seed: seed,
                                               stream: RandomGenerator.hash(tensor.name))
                }
                try writer.write(scratch, count: count)
                weightMap[tensor.name] = name
            }
            try writer.finish()
        }
        if shards.count > 1 {
            let total = tensors.reduce(0) { $0 + $1.shape.reduce(1, *) * dtype.size }
            let index: [String: Any] = ["metadata": ["total_size": total], "weight_map": weightMap]
            try JSONSerialization.data(withJSONObject: index, options: [.prettyPrinted, .sortedKeys])
                .write(to: URL(fileURLWithPath: (directory as NSString).appendingPathComponent(Checkpoint.indexName)))
        }
    }
}
