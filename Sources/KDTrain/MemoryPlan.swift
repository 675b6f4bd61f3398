import Foundation
import KDCore
import KDModels

/// The placement and memory of a training run, computed from the models' config.json alone (and
/// the safetensors headers, when the weights exist, for the dtypes they are stored in).
///
/// Per device: parameters in the dtype they are held in (`teacher.dtype`, `student.dtype`; see
/// `WeightDType`) with, where a matrix is held in bf16, the f32 buffer its panels are widened
/// into (`WeightProducts.panelRows` rows of the largest such matrix), the LoRA
/// adapters of the student layers it holds with their gradients and two AdamW moments (16 bytes
/// per LoRA parameter), and the activations alive at the device's peak, f32 per token of the
/// batch (train.batch_size × data.max_seq_len), the largest over the phases of a step:
/// - a teacher's device: the forward through a layer (the residual stream, the norm output, the
///   attention output and the feed-forward's gate, up and output, a MoE block's output and, for
///   one block of tokens, every routed copy's gathered row, gate and up; or q, k, v and the
///   attention output beside one max_seq_len² score matrix), and at its head the final hidden states with one chunk of rows and of logits;
/// - a student layer saves what its backward reads (`savedPerToken`: q, k before and after their
///   norms and rope, v, the attention output, the input and middle residuals, gate and up, each
///   adapter's A·x and input, the heads' and rows' 1/rms); all layers' sets
///   (`activation_bytes_full`), or with `train.activation_checkpointing` each layer's input and
///   the largest set, the layer being recomputed (`activation_bytes_checkpointed`); a student's
///   stage on a rank of its own keeps two micro-batches' inputs when a step has several (GPipe);
/// - a student's device in backward adds the gradient flowing in and out, the final norm's input,
///   output and d(hidden), and one layer's backward transients (d(activation), d(input), an
///   adapter's d(input) and dropout mask);
/// - the student's last device in the loss adds the hidden states, the final norm's input and
///   d(hidden), one chunk of rows and their gradient, the student's chunk of logits (overwritten by
///   their gradient) and the teacher's chunk in use, and with `run.concurrency` the teacher's next
///   chunk arriving.
/// Measured against `kd train`'s device peaks this is within a few percent when activations and
/// weights are several MB (Tests/KDCommandTests/MemoryPlanMeasuredTests.swift); the allocator's
/// size classes and the few-KB buffers left out matter below that.
/// `activation_bytes`, and so `total_bytes`, count the configured setting: with checkpointing, also
/// the products the layers in `layers_keeping_products` keep (`train.recompute`; all but
/// the layer in backward, whose whole set is already counted).
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
        /// The student layers here that keep their products under checkpointing (`train.recompute`),
        /// counted in `activationBytes`.
        public var layersKeepingProducts: [Int] = []
        /// The checkpoint dtypes of the weights placed here ("F32", "BF16", ...), and the dtype kd
        /// holds its matrices in (`WeightDType`; norms and a MoE router are always F32).
        public var weightDTypes: Set<String> = []
        public var heldDTypes: Set<String> = []
        /// One dtype as a string, mixed ones as a sorted list, none (an unused device) as null.
        static func json(_ dtypes: Set<String>) -> Any {
            let sorted = dtypes.sorted()
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
    /// The ranks of the run's MPI job: `run.data_parallel` replicas of the ranks `devices.ranks`
    /// names. A replica's student rank sends the other replicas its share of the summed LoRA
    /// gradients every step (exactly), and a teacher on a rank of its own sends its student's rank
    /// the logits of the step's scored positions (at most every position; the student's rank sends
    /// it the tokens).
    public let ranks: [RankUsage]
    /// The student layers that keep their products (q, k, v, the middle residual, gate and up)
    /// across a checkpointed forward (`CausalLM.layersKeepingProducts`): none without checkpointing or with
    /// `train.recompute: layers`, all with `attention`, and with `auto` the first layers of each
    /// device whose products fit beside the rest of the plan within 90% of its `memory_per_device`
    /// and within the machine's memory less a fifth (shared by the devices of a rank).
    public let studentLayersKeepingProducts: Set<Int>

    public struct RankUsage: Sendable {
        public let rank: Int
        public let devices: [Int]
        public let bytes: Int
        public let sentBytesPerStep: Int
    }
    /// The run's cores and whether teacher and student compute side by side (which sets what a
    /// student's device holds in the loss); the run itself computes with this budget.
    public let budget: ComputeBudget

    public var fits: Bool { devices.allSatisfy(\.fits) }

    /// Fails when one of the devices `ids`, which hold part of `model` ("teacher", "student") on
    /// this rank, does not fit its budget.
    public func requireFit(devices ids: Set<Int>, model: String) throws {
        if let over = devices.first(where: { !$0.fits && ids.contains($0.id) }) {
            throw KDError("the \(model) does not fit device \(over.id): it needs \(formatBytes(over.totalBytes)) of "
                + "\(formatBytes(over.capacityBytes ?? 0)) (see kd plan)")
        }
    }

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

    /// Each tensor's stored dtype (`weightDTypes`) and the dtype kd holds it in under `setting`.
    static func dtypes(at path: String, spec: ModelSpec, setting: WeightDType) throws
        -> (stored: (String) -> String, held: (String) -> DType, shapes: [String: [Int]]) {
        let stored = try weightDTypes(at: path, spec: spec)
        let shapes = Dictionary(spec.checkpointTensors().map { ($0.name, $0.shape) }, uniquingKeysWith: { a, _ in a })
        return (stored, { setting.held($0, shape: shapes[$0] ?? [], stored: DType(rawValue: stored($0)) ?? .f32) }, shapes)
    }

    /// With `teacherElsewhere` (the teacher on another rank of the job) each side gets all of its
    /// rank's cores, one after the other.
    public init(config: RunConfig, teacherElsewhere: Bool = false) throws {
        try config.requireModelPaths()
        // With a teacher cache the teacher is not loaded: its shape comes from the cache, and only
        // the student is placed.
        let cached = try config.data.teacherCache.map { try TeacherCache.manifestAndSpec(directory: $0) }
        let teacherSpec = try cached?.spec ?? MemoryPlan.spec(at: config.teacher.path)
        let studentSpec = try MemoryPlan.spec(at: config.student.path)
        let teacherDTypes = cached != nil ? (stored: { _ in "F32" }, held: { _ in DType.f32 }, shapes: [:])
            : try MemoryPlan.dtypes(at: config.teacher.path, spec: teacherSpec, setting: config.teacher.dtype)
        let studentDTypes = try MemoryPlan.dtypes(at: config.student.path, spec: studentSpec, setting: config.student.dtype)
        teacher = ModelPlan(
            role: "teacher", path: cached?.manifest.teacherPath ?? config.teacher.path, spec: teacherSpec, devices: config.teacher.devices,
            placement: Placement(spec: teacherSpec, deviceCount: config.teacher.devices.count,
                                 elementSize: { teacherDTypes.held($0).size }),
            loraParameters: 0)
        student = ModelPlan(
            role: "student", path: config.student.path, spec: studentSpec, devices: config.student.devices,
            placement: Placement(spec: studentSpec, deviceCount: config.student.devices.count,
                                 elementSize: { studentDTypes.held($0).size }),
            loraParameters: LoRAShapes.parameterCount(spec: studentSpec, lora: config.lora))

        var usage = (0..<config.deviceCount).map { DeviceUsage(id: $0, capacityBytes: config.devices.memoryPerDevice?.bytes) }
        // A student's stage on a rank before the student's own (GPipe, with checkpointing) runs a
        // step's next micro-batch's forward before this one's backward: it keeps two micro-batches'
        // layer inputs (and products).
        let local = config.devices.ranks ?? [Int](repeating: 0, count: config.deviceCount)
        let studentBlocks = RankLayout.blocks(config.student.devices, deviceRanks: local)
        let studentRank = studentBlocks.last!
        let keepsTwo = Set(config.train.activationCheckpointing && config.train.gradAccumSteps > 1
            ? config.student.devices.filter { local[$0] != studentRank } : [])
        // Sizes are summed in floating point and saturated (`bytes`): a config far beyond any
        // machine gives a plan that does not fit, never a wrapped or negative figure.
        // A replica holds at most ⌈batch_size / data_parallel⌉ rows of a micro-batch.
        let replicas = config.run.dataParallel
        let tokens = Double((config.train.batchSize + replicas - 1) / replicas) * Double(config.data.maxSeqLen)
        let f32 = Double(MemoryLayout<Float>.stride)
        // Without a live teacher there is nothing to run beside the student: it gets every core.
        budget = cached == nil && !teacherElsewhere ? ComputeBudget(config, teacher: teacherSpec, student: studentSpec)
            : ComputeBudget(threads: config.run.threads, concurrency: .off)
        let concurrent = budget.concurrent
        for model in cached == nil ? [teacher, student] : [student] {
            let spec = model.spec
            let training = model.role == "student"
            let (dtypeOf, held, shapes) = training ? studentDTypes : teacherDTypes
            for stage in model.placement.stages {
                let id = model.devices[stage.deviceIndex]
                var names = stage.layers.flatMap { spec.layerTensors($0).map(\.name) }
                if stage.holdsEmbedding { names.append("model.embed_tokens.weight") }
                if stage.holdsHead {
                    names += ["model.norm.weight", spec.tieWordEmbeddings ? "model.embed_tokens.weight" : "lm_head.weight"]
                }
                usage[id].weightDTypes.formUnion(names.map(dtypeOf))
                usage[id].heldDTypes.formUnion(names.filter { WeightDType.applies(to: $0, shape: shapes[$0] ?? []) }.map { held($0).rawValue })
                // The f32 buffer bf16 panels are widened into: the largest panel of a bf16 matrix here.
                let panel = names.filter { held($0) == .bf16 }.compactMap { shapes[$0] }
                    .map { Swift.min(WeightProducts.panelRows, $0[0]) * $0[1] }.max() ?? 0
                usage[id].parameterBytes += panel * MemoryLayout<Float>.stride
                usage[id].roles.append(model.role)
                usage[id].layers[model.role] = Array(stage.layers)
                if stage.holdsEmbedding { usage[id].holds.append("\(model.role).embed_tokens") }
                if stage.holdsHead { usage[id].holds.append("\(model.role).norm+lm_head") }
                usage[id].parameterBytes += stage.parameterBytes
                // Saved for backward (f32 per token): every layer's whole set, or with checkpointing each
                // layer's input and the largest whole set (the layer being recomputed).
                var savedFull = 0.0, savedInputs = 0.0, largestSaved = 0.0, loraBytes = 0.0
                var largestTransient = 0.0
                for layer in stage.layers {
                    if training {
                        let lora = LoRAShapes.adapters(spec: spec, layer: layer, lora: config.lora)
                        loraBytes += lora.reduce(0.0) { $0 + Double($1.inFeatures + $1.outFeatures) * Double($1.rank) } * 4 * f32
                        let saved = Double(MemoryPlan.savedPerToken(spec, layer: layer, adapters: lora, dropout: config.lora.dropout > 0))
                        savedFull += saved
                        savedInputs += Double(spec.hiddenSize)
                        largestSaved = Swift.max(largestSaved, saved)
                    }
                    largestTransient = Swift.max(largestTransient, MemoryPlan.transient(spec, layer: layer, training: training, tokens: tokens))
                }
                let hidden = Double(spec.hiddenSize), sequence = Double(config.data.maxSeqLen)
                let chunk = Swift.min(tokens, Double(config.distill.chunkTokens)), vocab = Double(spec.vocabSize)
                // Values (f32) alive at each device's peak, the largest of its phases.
                func peak(saved: Double) -> Double {
                    guard !stage.layers.isEmpty || stage.holdsHead else { return 0 }
                    if !training {
                        // Forward: the residual stream and one layer's transients (or one score matrix);
                        // at the head the final hidden states, and one chunk of rows and of logits.
                        let layers = stage.layers.isEmpty ? 0 : largestTransient + sequence * sequence
                        let head = stage.holdsHead ? Swift.max(2 * tokens * hidden, tokens * hidden + chunk * (hidden + vocab)) : 0
                        return Swift.max(layers, head)
                    }
                    // Backward through a layer: what is saved, the gradient flowing in and out, the final
                    // norm's input and output and d(hidden) (or their stand-ins on an earlier stage), and
                    // the layer's backward transients.
                    let backward = tokens * (saved + 4 * hidden) + largestTransient
                    guard stage.holdsHead else { return backward }
                    // The loss: the student's logits of a chunk and the teacher's (two of them, in use and
                    // arriving, when the teacher runs concurrently), its rows and their gradient, beside
                    // the hidden states, the final norm's input and d(hidden).
                    let logitChunks = cached != nil ? 1.0 : concurrent ? 3.0 : 2.0
                    let loss = tokens * (saved + 3 * hidden) + chunk * (logitChunks * vocab + 2 * hidden)
                    return Swift.max(backward, loss)
                }
                let full = f32 * peak(saved: savedFull)
                let inputs = keepsTwo.contains(id) ? 2 * savedInputs : savedInputs
                let checkpointed = f32 * peak(saved: training ? inputs + largestSaved : 0)
                usage[id].loraBytes = MemoryPlan.bytes(Double(usage[id].loraBytes) + loraBytes)
                usage[id].activationBytesFull = MemoryPlan.bytes(Double(usage[id].activationBytesFull) + full)
                usage[id].activationBytesCheckpointed = MemoryPlan.bytes(Double(usage[id].activationBytesCheckpointed) + checkpointed)
                usage[id].activationBytes = config.train.activationCheckpointing
                    ? usage[id].activationBytesCheckpointed : usage[id].activationBytesFull
            }
        }
        // The products kept across a checkpointed forward (q, k, v, the middle residual, gate and up)
        // for each such layer but the one in backward, whose whole set the checkpointed figure counts
        // (and on a stage that keeps two micro-batches, all of them again).
        var keeping = Set<Int>()
        if config.train.activationCheckpointing {
            var machineFree: [Int: Double] = [:]
            for device in usage { machineFree[local[device.id], default: 0.8 * Double(ThreadBackend.machineMemory)] -= Double(device.totalBytes) }
            let q = studentSpec.numHeads * studentSpec.headDim, kv = studentSpec.numKVHeads * studentSpec.headDim
            for stage in student.placement.stages where !stage.layers.isEmpty {
                let id = config.student.devices[stage.deviceIndex], rank = local[id]
                let products = stage.layers.map { layer -> Double in
                    guard case .dense(let size) = studentSpec.feedForward[layer] else { return 0 }
                    return tokens * Double(q + 2 * kv + studentSpec.hiddenSize + 2 * size) * f32
                }
                func added(_ count: Int) -> Double {
                    products.prefix(count).dropLast(count == products.count ? 1 : 0).reduce(0, +)
                        + (keepsTwo.contains(id) ? products.prefix(count).reduce(0, +) : 0)
                }
                let count: Int
                switch config.train.recompute {
                case .layers: count = 0
                case .attention: count = products.count
                case .auto:
                    var free = machineFree[rank] ?? 0
                    // A tenth of the device's budget stays free: a run that fits without the products must not
                    // come to exceed its budget, where the estimate is a few percent short, by keeping them.
                    if let capacity = usage[id].capacityBytes {
                        free = Swift.min(free, 0.9 * Double(capacity) - Double(usage[id].totalBytes))
                    }
                    count = (0...products.count).last { added($0) <= free } ?? 0
                }
                let keptBytes = added(count)
                usage[id].layersKeepingProducts = Array(stage.layers.prefix(count))
                usage[id].activationBytes = MemoryPlan.bytes(Double(usage[id].activationBytes) + keptBytes)
                machineFree[rank, default: 0] -= keptBytes
                keeping.formUnion(stage.layers.prefix(count))
            }
        }
        studentLayersKeepingProducts = keeping
        devices = usage
        // Ranks: `devices.ranks` within each replica (kd plan does not know the job's size, so
        // without it every replica is one rank).
        let perReplica = (local.max() ?? 0) + 1
        let studentParts = Array(studentBlocks.dropLast())
        let teacherRanks = RankLayout.teacherRanks(config, deviceRanks: local, studentRank: studentRank)
        // The student's adapters a rank holds (its stages').
        let studentPlan = student, replicaCount = replicas
        let adapters = { (rank: Int) -> [LoRAShapes.Adapter] in
            studentPlan.placement.stages.filter { local[config.student.devices[$0.deviceIndex]] == rank }
                .flatMap { stage in stage.layers.flatMap { LoRAShapes.adapters(spec: studentPlan.spec, layer: $0, lora: config.lora) } }
        }
        let replicaSums = { (adapters: [LoRAShapes.Adapter]) -> Int in
            replicaCount == 1 ? 0
                : Communicator.bytesSentBySumInRankOrder(count: adapters.reduce(0) { $0 + $1.parameters }, ranks: replicaCount)
        }
        let studentSums = replicaSums(adapters(studentRank))
            + (replicas == 1 ? 0 : Trainer.exchangedNumbersPerStep * 8 * (replicas - 1))
        // Teacher ranks get each micro-batch's tokens and scored rows; each part sends the next its
        // output (every position's hidden state), and the last the logits of every scored
        // position (at most every position), chunk by chunk.
        let rows = Double(config.train.gradAccumSteps) * tokens
        let chunks = (rows / Double(config.distill.chunkTokens)).rounded(.up)
        let requests = (Double(config.train.gradAccumSteps) * 40 + rows * (4 + 1 + 8)) * Double(teacherRanks.count)
        let logits = rows * Double(teacherSpec.vocabSize) * f32 + chunks * 24
        let hiddenStates = rows * Double(teacherSpec.hiddenSize) * f32
        var all: [RankUsage] = []
        for replica in 0..<replicas {
            for rank in 0..<perReplica {
                let ids = usage.map(\.id).filter { local[$0] == rank }
                let bytes = ids.reduce(0.0) { $0 + Double(usage[$1].totalBytes) }
                var sent = rank == studentRank ? Double(studentSums) : 0
                if teacherRanks != [studentRank] {
                    sent += rank == studentRank ? requests : rank == teacherRanks.last ? logits : teacherRanks.contains(rank) ? hiddenStates : 0
                }
                // The student's first stages on ranks of their own: requests, activations and
                // their gradients, the parts' sums (and their replicas' sums of their gradients).
                let position = studentParts.firstIndex(of: rank)
                if !studentParts.isEmpty && (rank == studentRank || position != nil) {
                    let held = adapters(rank)
                    sent += StudentStages.bytesPerStep(microBatches: config.train.gradAccumSteps, tokens: tokens,
                                                       hidden: student.spec.hiddenSize, parts: studentParts.count, position: position,
                                                       slots: 2 * held.count)
                    if position != nil { sent += Double(replicaSums(held)) }
                }
                all.append(RankUsage(rank: replica * perReplica + rank, devices: ids, bytes: MemoryPlan.bytes(bytes),
                                     sentBytesPerStep: MemoryPlan.bytes(sent)))
            }
        }
        ranks = all
    }

    /// f32 values a training layer saves per token for its backward pass (Attention.Saved, the
    /// layer's input and middle residual with their 1/rms, MLP's gate and up, each adapter's A·x),
    /// and the adapters' inputs: with dropout each keeps its own dropped-out copy, without they keep
    /// the norm outputs and the MLP activation they read.
    static func savedPerToken(_ spec: ModelSpec, layer: Int, adapters: [LoRAShapes.Adapter] = [], dropout: Bool = false) -> Int {
        let q = spec.numHeads * spec.headDim, kv = spec.numKVHeads * spec.headDim, hidden = spec.hiddenSize
        let attention = 3 * q + 3 * kv + spec.numHeads + spec.numKVHeads
        let residuals = 2 * hidden + 2
        let size: Int
        switch spec.feedForward[layer] {
        case .dense(let intermediate): size = intermediate
        case .sparse(_, _, let intermediate, _): size = intermediate  // students are dense; a bound for MoE
        }
        let ranks = adapters.reduce(0) { $0 + $1.rank }
        let inputs: Int
        if dropout {
            inputs = adapters.reduce(0) { $0 + $1.inFeatures }
        } else {
            func any(_ names: [String]) -> Bool { adapters.contains { a in names.contains { a.name.hasSuffix($0) } } }
            inputs = (any(["q_proj", "k_proj", "v_proj"]) ? hidden : 0) + (any(["gate_proj", "up_proj"]) ? hidden : 0)
                + (any(["down_proj"]) ? size : 0)
        }
        return attention + residuals + 2 * size + ranks + inputs
    }

    /// f32 values a layer holds at once for `tokens` tokens beyond the residual stream at its
    /// busiest: in a forward pass the norm output, the attention output and the feed-forward's gate,
    /// up and output (a MoE block: its output, and for one block of `SparseMoE.tokenBlock` tokens
    /// the router's probabilities and every routed copy's gathered row, gate and up), or the
    /// attention's projections; in training the backward's d(activation), d(input) and an adapter's
    /// d(input) and dropout mask.
    static func transient(_ spec: ModelSpec, layer: Int, training: Bool, tokens: Double) -> Double {
        let q = spec.numHeads * spec.headDim, kv = spec.numKVHeads * spec.headDim, hidden = spec.hiddenSize
        let attention = Double(hidden + 2 * q + 2 * kv + hidden) * tokens
        let feedForward: Double
        switch spec.feedForward[layer] {
        case .dense(let size): feedForward = Double(training ? hidden + 3 * size : 3 * hidden + 2 * size) * tokens
        case .sparse(let experts, let topK, let size, _):
            let block = Swift.min(tokens, Double(SparseMoE.tokenBlock))
            feedForward = Double(3 * hidden) * tokens + Double(experts + topK * (hidden + 2 * size)) * block
        }
        return training ? feedForward : Double(hidden) * tokens + Swift.max(attention, feedForward)
    }

    /// The largest byte count a plan reports (1 EiB): three of them still add up within Int.
    static let maximumBytes = 1 << 60

    /// A byte count computed in floating point, saturated at `maximumBytes`.
    static func bytes(_ value: Double) -> Int { value >= Double(maximumBytes) ? maximumBytes : Int(value.rounded()) }

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
                    "layers_keeping_products": device.layersKeepingProducts,
                    "weight_dtype": DeviceUsage.json(device.weightDTypes),
                    "held_dtype": DeviceUsage.json(device.heldDTypes),
                    "capacity_bytes": device.capacityBytes.map { $0 as Any } ?? NSNull(), "fits": device.fits,
                ]
            },
            "fits": fits,
            "ranks": ranks.map { ["rank": $0.rank, "devices": $0.devices, "bytes": $0.bytes, "sent_bytes_per_step": $0.sentBytesPerStep] },
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
