import Foundation
import KDCore
import KDModels

/// The placement and memory of a training run, computed from the models' config.json alone.
///
/// Per device: parameters in f32 (kd computes in f32; bf16 checkpoints are widened), the LoRA
/// adapters of the student layers it holds with their gradients and two AdamW moments (16 bytes
/// per LoRA parameter), and an activation estimate:
/// - student layers save, per token, 4·hidden (residuals and norm outputs), 3·(q heads + kv
///   heads)·head_dim (projections before and after norm/rope, attention output), 3·intermediate
///   (gate, up, activation), each adapter's rank (and its input when dropout is on), in f32
///   (`activation_bytes_full`); with `train.activation_checkpointing` a device's student layers
///   keep only their input (hidden f32 per token each) plus the full saved set of the one layer
///   being recomputed, the largest of the device's (`activation_bytes_checkpointed`);
/// - every device holding layers needs a working set of one layer's transients plus one
///   attention score matrix (max_seq_len² f32);
/// - the student's last device holds the fused loss chunk: three chunk × vocab f32 buffers
///   (the teacher's chunk in use, its next one arriving, the student's logits overwritten by
///   their gradient); the teacher's last device one chunk of teacher logits and the final
///   hidden states of the batch.
/// `activation_bytes`, and so `total_bytes`, count the configured setting.
public struct MemoryPlan: Sendable {
    public struct ModelPlan: Sendable {
        public let role: String
        public let path: String
        public let spec: ModelSpec
        public let devices: [Int]
        public let placement: Placement
        public let loraParameters: Int
    }

    public struct DeviceUsage: Sendable {
        public let id: Int
        public var roles: [String] = []
        public var layers: [String: [Int]] = [:]
        public var holds: [String] = []
        public var parameterBytes = 0
        public var loraBytes = 0
        /// The activation estimate of the configured setting, and of either setting.
        public var activationBytes = 0
        public var activationBytesCheckpointed = 0
        public var activationBytesFull = 0
        /// The checkpoint dtypes of the weights placed here ("F32", "BF16", ...), and how kd holds them.
        public var weightDTypes: Set<String> = []
        public var heldDType: String? { weightDTypes.isEmpty ? nil : "F32" }
        /// One dtype as a string, mixed ones as a sorted list, none (an unused device) as null.
        var weightDTypeJSON: Any {
            let sorted = weightDTypes.sorted()
            if sorted.count == 1, let only = sorted.first { return only }
            return sorted.isEmpty ? NSNull() : sorted
        }
        public let capacityBytes: Int?

        public var totalBytes: Int { parameterBytes + loraBytes + activationBytes }
        public var fits: Bool { capacityBytes.map { totalBytes <= $0 } ?? true }
        public var role: String { roles.isEmpty ? "unused" : roles.joined(separator: "+") }
    }

    public let teacher: ModelPlan
    public let student: ModelPlan
    public let devices: [DeviceUsage]

    public var fits: Bool { devices.allSatisfy(\.fits) }

    /// Reads `config.json` from a model directory (or the path itself when it names the file).
    public static func spec(at path: String) throws -> ModelSpec {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw KDError("\(path): no such model directory")
        }
        let file = isDirectory.boolValue ? (path as NSString).appendingPathComponent("config.json") : path
        return try ModelConfigurations.load(configFile: file)
    }

    /// The checkpoint dtype of each tensor of a model, by name: from the safetensors headers when the
    /// weights exist, else every tensor gets config.json's `torch_dtype` (or `dtype`), F32 when absent.
    static func weightDTypes(at path: String, spec: ModelSpec) throws -> (String) -> String {
        var isDirectory: ObjCBool = false
        let directory = FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) && isDirectory.boolValue
            ? path : (path as NSString).deletingLastPathComponent
        let fm = FileManager.default
        let hasWeights = [Checkpoint.singleName, Checkpoint.indexName].contains {
            fm.fileExists(atPath: (directory as NSString).appendingPathComponent($0))
        }
        if hasWeights {
            let checkpoint = try Checkpoint(directory: directory)
            let names = checkpoint.tensors.mapValues { $0.info.dtype.rawValue }
            return { names[$0] ?? "F32" }
        }
        let configFile = (directory as NSString).appendingPathComponent("config.json")
        let config = try readJSONObject(atPath: configFile)
        let name = (config["torch_dtype"] as? String) ?? (config["dtype"] as? String) ?? "float32"
        let dtypes = ["float32": "F32", "float": "F32", "bfloat16": "BF16", "float16": "F16", "half": "F16"]
        guard let dtype = dtypes[name] else {
            throw KDError("\(configFile): torch_dtype \(quoted(name)) is not a weight dtype kd reads (float32, bfloat16, float16)")
        }
        return { _ in dtype }
    }

    public init(config: RunConfig) throws {
        try config.requireModelPaths()
        let teacherSpec = try MemoryPlan.spec(at: config.teacher.path)
        let studentSpec = try MemoryPlan.spec(at: config.student.path)
        teacher = ModelPlan(
            role: "teacher", path: config.teacher.path, spec: teacherSpec, devices: config.teacher.devices,
            placement: Placement(spec: teacherSpec, deviceCount: config.teacher.devices.count), loraParameters: 0)
        student = ModelPlan(
            role: "student", path: config.student.path, spec: studentSpec, devices: config.student.devices,
            placement: Placement(spec: studentSpec, deviceCount: config.student.devices.count),
            loraParameters: LoRAShapes.parameterCount(spec: studentSpec, lora: config.lora))

        var usage = (0..<config.deviceCount).map { DeviceUsage(id: $0, capacityBytes: config.devices.memoryPerDevice?.bytes) }
        // Sizes are summed in floating point and saturated (`bytes`): a config far beyond any
        // machine gives a plan that does not fit, never a wrapped or negative figure.
        let tokens = Double(config.train.batchSize) * Double(config.data.maxSeqLen)
        let f32 = Double(MemoryLayout<Float>.stride)
        for model in [teacher, student] {
            let spec = model.spec
            let training = model.role == "student"
            let dtypeOf = try MemoryPlan.weightDTypes(at: model.path, spec: spec)
            for stage in model.placement.stages {
                let id = model.devices[stage.deviceIndex]
                var names = stage.layers.flatMap { spec.layerTensors($0).map(\.name) }
                if stage.holdsEmbedding { names.append("model.embed_tokens.weight") }
                if stage.holdsHead {
                    names += ["model.norm.weight", spec.tieWordEmbeddings ? "model.embed_tokens.weight" : "lm_head.weight"]
                }
                usage[id].weightDTypes.formUnion(names.map(dtypeOf))
                usage[id].roles.append(model.role)
                usage[id].layers[model.role] = Array(stage.layers)
                if stage.holdsEmbedding { usage[id].holds.append("\(model.role).embed_tokens") }
                if stage.holdsHead { usage[id].holds.append("\(model.role).norm+lm_head") }
                usage[id].parameterBytes += stage.parameterBytes
                // Saved for backward (f32 per token): every layer's whole set, or with checkpointing each
                // layer's input and the largest whole set (the layer being recomputed).
                var savedFull = 0.0, savedInputs = 0.0, largestSaved = 0.0, loraBytes = 0.0, shared = 0.0
                for layer in stage.layers {
                    if training {
                        let lora = LoRAShapes.adapters(spec: spec, layer: layer, lora: config.lora)
                        loraBytes += lora.reduce(0.0) { $0 + Double($1.inFeatures + $1.outFeatures) * Double($1.rank) } * 4 * f32
                        let loraSaved = lora.reduce(0.0) { $0 + Double(config.lora.r) + (config.lora.dropout > 0 ? Double($1.inFeatures) : 0) }
                        let saved = Double(MemoryPlan.savedPerToken(spec, layer: layer)) + loraSaved
                        savedFull += saved
                        savedInputs += Double(spec.hiddenSize)
                        largestSaved = Swift.max(largestSaved, saved)
                    }
                }
                if !stage.layers.isEmpty {
                    shared += MemoryPlan.workingSet(spec, tokens: tokens, sequence: Double(config.data.maxSeqLen))
                }
                if stage.holdsHead {
                    let chunk = Swift.min(tokens, Double(config.distill.chunkTokens))
                    let vocab = Double(spec.vocabSize)
                    shared += training ? 3 * chunk * vocab * f32 : chunk * vocab * f32 + tokens * Double(spec.hiddenSize) * f32
                }
                let full = shared + tokens * f32 * savedFull
                let checkpointed = shared + tokens * f32 * (savedInputs + largestSaved)
                usage[id].loraBytes = MemoryPlan.bytes(Double(usage[id].loraBytes) + loraBytes)
                usage[id].activationBytesFull = MemoryPlan.bytes(Double(usage[id].activationBytesFull) + full)
                usage[id].activationBytesCheckpointed = MemoryPlan.bytes(Double(usage[id].activationBytesCheckpointed) + checkpointed)
                usage[id].activationBytes = config.train.activationCheckpointing
                    ? usage[id].activationBytesCheckpointed : usage[id].activationBytesFull
            }
        }
        devices = usage
    }

    /// f32 values a training layer saves per token for its backward pass.
    static func savedPerToken(_ spec: ModelSpec, layer: Int) -> Int {
        let attention = 4 * spec.hiddenSize + 3 * (spec.numHeads + 2 * spec.numKVHeads) * spec.headDim + spec.numHeads
        switch spec.feedForward[layer] {
        case .dense(let size): return attention + 3 * size
        case .sparse(let experts, let topK, let size, _): return attention + experts + topK * (3 * size + spec.hiddenSize)
        }
    }

    /// The largest byte count a plan reports (1 EiB): three of them still add up within Int.
    static let maximumBytes = 1 << 60

    /// A byte count computed in floating point, saturated at `maximumBytes`.
    static func bytes(_ value: Double) -> Int { value >= Double(maximumBytes) ? maximumBytes : Int(value.rounded()) }

    /// Bytes of one layer's transient buffers plus one attention score matrix.
    static func workingSet(_ spec: ModelSpec, tokens: Double, sequence: Double) -> Double {
        let projections = (spec.numHeads + 2 * spec.numKVHeads) * spec.headDim + 2 * spec.hiddenSize
        let feedForward = spec.feedForward.map { kind -> Int in
            switch kind {
            case .dense(let size): 3 * size
            case .sparse(let experts, let topK, let size, _): experts + topK * (3 * size + spec.hiddenSize)
            }
        }.max() ?? 0
        return (tokens * Double(projections + feedForward) + sequence * sequence) * Double(MemoryLayout<Float>.stride)
    }

    /// The plan as JSON-compatible data: `teacher`, `student`, `devices`, `fits`.
    public var json: [String: Any] {
        func model(_ plan: ModelPlan) -> [String: Any] {
            var object: [String: Any] = [
                "path": plan.path, "model_type": plan.spec.modelType, "params": plan.spec.parameterCount,
                "layers": plan.spec.numLayers, "devices": plan.devices,
            ]
            if plan.role == "student" { object["lora_params"] = plan.loraParameters }
            return object
        }
        return [
            "teacher": model(teacher),
            "student": model(student),
            "devices": devices.map { device -> [String: Any] in
                [
                    "id": device.id, "role": device.role,
                    "layers": (device.layers["teacher"] ?? []) + (device.layers["student"] ?? []),
                    "holds": device.holds, "param_bytes": device.parameterBytes, "lora_bytes": device.loraBytes,
                    "activation_bytes": device.activationBytes,
                    "activation_bytes_checkpointed": device.activationBytesCheckpointed,
                    "activation_bytes_full": device.activationBytesFull, "total_bytes": device.totalBytes,
                    "weight_dtype": device.weightDTypeJSON,
                    "held_dtype": device.heldDType.map { $0 as Any } ?? NSNull(),
                    "capacity_bytes": device.capacityBytes.map { $0 as Any } ?? NSNull(), "fits": device.fits,
                ]
            },
            "fits": fits,
        ]
    }
}

/// The LoRA adapters a config puts on a model: one per targeted projection.
public enum LoRAShapes {
    public struct Adapter: Sendable {
        public let name: String
        public let inFeatures: Int
        public let outFeatures: Int
        public let rank: Int
        public var parameters: Int { rank * (inFeatures + outFeatures) }
    }

    /// Targeted linears of one layer, named as the checkpoint names them (experts included, as PEFT does).
    public static func adapters(spec: ModelSpec, layer: Int, lora: LoRASettings) -> [Adapter] {
        spec.layerTensors(layer).compactMap { tensor in
            let name = String(tensor.name.dropLast(".weight".count))
            guard tensor.name.hasSuffix(".weight"), tensor.shape.count == 2, lora.targets(name) else { return nil }
            return Adapter(name: name, inFeatures: tensor.shape[1], outFeatures: tensor.shape[0], rank: lora.r)
        }
    }

    public static func parameterCount(spec: ModelSpec, lora: LoRASettings) -> Int {
        (0..<spec.numLayers).reduce(0) { total, layer in
            total + adapters(spec: spec, layer: layer, lora: lora).reduce(0) { $0 + $1.parameters }
        }
    }
}
