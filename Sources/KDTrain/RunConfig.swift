import Foundation
import KDCore
import KDModels
import KDText
import Yams

/// A training run's configuration: the YAML file, with `--set key.path=value` overrides.
/// Every key has a default and a line of documentation (`RunConfig.fields`); unknown keys are
/// errors that suggest the nearest valid key.
public struct RunConfig: Equatable, Sendable {
    public struct Run: Equatable, Sendable {
        public var outputDir = "runs/kd"
        public var seed = 42
        public var threads: Int? = nil
        public var concurrency = Concurrency.auto
        public var dataParallel = 1
    }

    public struct Devices: Equatable, Sendable {
        public var count: Int? = nil
        public var memoryPerDevice: ByteSize? = nil
        public var ranks: [Int]? = nil
    }

    public struct Model: Equatable, Sendable {
        public var path = ""
        public var devices: [Int]
        public var dtype = WeightDType.auto
    }

    public typealias LoRA = LoRASettings

    public struct Distill: Equatable, Sendable {
        public var alpha: Double = 0.8
        public var temperature: Double = 2.0
        public var loss = DivergenceName.forwardKL
        public var jsdBeta: Double = 0.5
        public var chunkTokens = 256
        public var onPolicy = OnPolicy()

        /// On-policy distillation: the share of micro-batches whose continuations the student samples.
        public struct OnPolicy: Equatable, Sendable {
            public var fraction: Double = 0
            public var maxNewTokens = 64
            public var temperature: Double = 1
            public var topP: Double = 1
        }

        /// The loss kernel's divergence of these settings.
        public var divergence: DistillationLoss.Divergence {
            switch loss {
            case .forwardKL: .forwardKL
            case .reverseKL: .reverseKL
            case .jsd: .jsd(beta: Float(jsdBeta))
            }
        }
    }

    public struct DataSection: Equatable, Sendable {
        public var train: String? = nil
        public var eval: String? = nil
        public var format = DataFormat.auto
        public var maxSeqLen = 1024
        public var shuffle = true
        public var trainOnPrompt = false
        public var onBadRecord = BadRecordPolicy.error
        public var tokenizer: String? = nil
        public var enableThinking = false
        public var teacherCache: String? = nil
    }

    public struct Train: Equatable, Sendable {
        public var maxSteps = 50
        public var batchSize = 4
        public var gradAccumSteps = 1
        public var lr: Double = 1e-4
        public var lrSchedule = LRSchedule.cosine
        public var warmupSteps = 5
        public var weightDecay: Double = 0.01
        public var adamBeta1: Double = 0.9
        public var adamBeta2: Double = 0.999
        public var adamEps: Double = 1e-8
        public var maxGradNorm: Double = 1.0
        public var activationCheckpointing = true
        public var recompute = Recompute.auto
    }

    public struct Checkpointing: Equatable, Sendable {
        public var everySteps = 10
        public var keepLast = 3
        public var saveMerged = false
    }

    public struct Log: Equatable, Sendable {
        public var everySteps = 1
    }

    public var run = Run()
    public var devices = Devices()
    public var teacher = Model(devices: [0])
    public var student = Model(devices: [1])
    public var lora = LoRA()
    public var distill = Distill()
    public var data = DataSection()
    public var train = Train()
    public var checkpoint = Checkpointing()
    public var log = Log()

    public init() {}

    /// The number of logical devices: `devices.count`, or enough for every id the models use.
    public var deviceCount: Int {
        devices.count ?? ((teacher.devices + student.devices).max() ?? 0) + 1
    }
}

public enum LRSchedule: String, CaseIterable, Sendable { case constant, linear, cosine }

/// `train.recompute`: what a checkpointed student layer forms again before its backward, its
/// whole forward (`layers`) or, keeping its products (q, k, v, the middle residual, gate and up),
/// only norms, rope and attention (`attention`); `auto` keeps them in the layers whose products
/// fit (`MemoryPlan`).
public enum Recompute: String, CaseIterable, Sendable { case auto, layers, attention }

/// `distill.loss`: the divergence of the distillation term (DistillationLoss.Divergence).
public enum DivergenceName: String, CaseIterable, Sendable {
    case forwardKL = "forward_kl", reverseKL = "reverse_kl", jsd
}

// MARK: - Schema

/// One configuration key: where it lives, how it is read, and what it means.
public struct ConfigField: @unchecked Sendable {
    public let key: String
    public let documentation: String
    let apply: (inout RunConfig, Node) throws -> Void
    let value: (RunConfig) -> Any

    /// The value this key has in a configuration, as JSON-compatible data.
    public func jsonValue(in config: RunConfig) -> Any { value(config) }
}

/// A value a configuration key can hold, read from a YAML node.
/// A YAML value as an error message shows it: quoted and cut, or what kind of node it is.
func describe(_ node: Node) -> String {
    if node.null != nil { return "null" }
    if node.scalar != nil, let text = node.string { return quoted(text, limit: 60) }
    return node.sequence != nil ? "a list" : "a mapping"
}

protocol ConfigValue {
    static func read(_ node: Node) throws -> Self
    var jsonValue: Any { get }
}

extension Int: ConfigValue {
    static func read(_ node: Node) throws -> Int {
        guard let value = node.int else { throw KDError("expected an integer, got \(describe(node))") }
        return value
    }
    var jsonValue: Any { self }
}

extension Double: ConfigValue {
    static func read(_ node: Node) throws -> Double {
        guard let value = node.float ?? node.int.map(Double.init), value.isFinite else {
            throw KDError("expected a finite number, got \(describe(node))")
        }
        return value
    }
    var jsonValue: Any { self }
}

extension Bool: ConfigValue {
    static func read(_ node: Node) throws -> Bool {
        guard let value = node.bool else { throw KDError("expected true or false, got \(describe(node))") }
        return value
    }
    var jsonValue: Any { self }
}

extension String: ConfigValue {
    static func read(_ node: Node) throws -> String {
        guard node.scalar != nil, node.null == nil, let value = node.string else { throw KDError("expected a string, got \(describe(node))") }
        return value
    }
    var jsonValue: Any { self }
}

extension ByteSize: ConfigValue {
    static func read(_ node: Node) throws -> ByteSize {
        if let bytes = node.int, bytes >= 0 && bytes <= ByteSize.maximum { return ByteSize(bytes: bytes) }
        guard let text = node.string, let size = ByteSize(parsing: text) else {
            throw KDError("expected a size such as 80GiB, 512MiB or a number of bytes up to 1 EiB, got \(describe(node))")
        }
        return size
    }
    var jsonValue: Any { bytes }
}

extension Array: ConfigValue where Element: ConfigValue {
    static func read(_ node: Node) throws -> [Element] {
        guard let sequence = node.sequence else { throw KDError("expected a list") }
        return try sequence.map { try Element.read($0) }
    }
    var jsonValue: Any { map(\.jsonValue) }
}

extension Optional: ConfigValue where Wrapped: ConfigValue {
    static func read(_ node: Node) throws -> Wrapped? {
        if node.null != nil { return nil }
        return try Wrapped.read(node)
    }
    var jsonValue: Any { map(\.jsonValue) ?? NSNull() }
}

protocol ConfigEnum: ConfigValue, RawRepresentable<String>, CaseIterable {}
extension ConfigEnum {
    static func read(_ node: Node) throws -> Self {
        guard let text = node.string, let value = Self(rawValue: text) else {
            throw KDError("expected one of \(allCases.map(\.rawValue).joined(separator: ", ")), got \(describe(node))")
        }
        return value
    }
    var jsonValue: Any { rawValue }
}
extension LoRAInit: ConfigEnum {}
extension DataFormat: ConfigEnum {}
extension BadRecordPolicy: ConfigEnum {}
extension LRSchedule: ConfigEnum {}
extension Recompute: ConfigEnum {}
extension Concurrency: ConfigEnum {}
extension DivergenceName: ConfigEnum {}
extension WeightDType: ConfigEnum {}

extension RunConfig {
    private static func field<V: ConfigValue>(
        _ key: String, _ path: WritableKeyPath<RunConfig, V>, _ documentation: String
    ) -> ConfigField {
        ConfigField(
            key: key, documentation: documentation,
            apply: { config, node in config[keyPath: path] = try V.read(node) },
            value: { $0[keyPath: path].jsonValue })
    }

    /// Every key, in the order of the documentation.
    public static let fields: [ConfigField] = [
        field("run.output_dir", \.run.outputDir, "Directory for metrics.jsonl, checkpoints and the final model."),
        field("run.seed", \.run.seed, "Seed of every random choice: LoRA init, shuffling, dropout."),
        field("run.threads", \.run.threads, "Cores kd uses; null = all of them."),
        field("run.concurrency", \.run.concurrency, "Teacher and student at the same time: on, off, or auto (on from 2 threads up, on disjoint devices, when their work per token is within 1.5×)."),
        field("run.data_parallel", \.run.dataParallel,
              "Replicas of the whole run, one per MPI rank (mpirun -n N kd train ...): each takes its share of every micro-batch, and their LoRA gradients are summed in rank order before clipping."),
        field("devices.count", \.devices.count, "Number of logical devices; null = enough for the ids used."),
        field("devices.ranks", \.devices.ranks,
              "The MPI rank (within a replica) of each device, in device order; null = all on one rank, or device i on rank i when kd runs as data_parallel × devices.count ranks. The teacher may be on another rank than the student."),
        field("devices.memory_per_device", \.devices.memoryPerDevice, "Budget of each device (e.g. 80GiB), enforced; null = unlimited."),
        field("teacher.path", \.teacher.path, "Teacher model directory (config.json + safetensors)."),
        field("teacher.devices", \.teacher.devices, "Device ids the teacher's layers are sharded over, in order."),
        field("teacher.dtype", \.teacher.dtype,
              "How the teacher's weights are held: auto (bf16 checkpoints as bf16, memory-mapped; others as f32), bf16 (f32 weights rounded to nearest even), or f32. Compute is f32."),
        field("student.path", \.student.path, "Student model directory (config.json + safetensors)."),
        field("student.devices", \.student.devices, "Device ids the student's layers are sharded over, in order."),
        field("student.dtype", \.student.dtype,
              "How the student's frozen weights are held: auto, bf16 or f32, as teacher.dtype. LoRA, gradients and AdamW moments are always f32."),
        field("lora.r", \.lora.r, "LoRA rank."),
        field("lora.alpha", \.lora.alpha, "LoRA alpha; the update is scaled by alpha/r (alpha/sqrt(r) with use_rslora)."),
        field("lora.dropout", \.lora.dropout, "Dropout on the LoRA input path during training."),
        field("lora.target_modules", \.lora.targetModules, "Projections that get adapters (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)."),
        field("lora.use_rslora", \.lora.useRSLoRA, "Rank-stabilised scaling alpha/sqrt(r)."),
        field("lora.init", \.lora.initMethod, "Adapter init: default (A kaiming-uniform, B zero), gaussian, pissa."),
        field("lora.init_from", \.lora.initFrom, "A PEFT adapter directory to start from instead of a fresh init."),
        field("distill.alpha", \.distill.alpha, "Weight of the distillation term: loss = alpha*T^2*D + (1-alpha)*CE."),
        field("distill.temperature", \.distill.temperature, "Softmax temperature T of the distillation term."),
        field("distill.loss", \.distill.loss,
              "Divergence D between teacher p and student q at T: forward_kl KL(p||q), reverse_kl KL(q||p), or jsd (generalized Jensen-Shannon with distill.jsd_beta)."),
        field("distill.jsd_beta", \.distill.jsdBeta,
              "beta of jsd, in (0, 1): D = beta*KL(p||m) + (1-beta)*KL(q||m), m = beta*p + (1-beta)*q (TRL GKD's beta)."),
        field("distill.chunk_tokens", \.distill.chunkTokens, "Tokens per chunk of the fused output-projection + loss."),
        field("distill.on_policy.fraction", \.distill.onPolicy.fraction,
              "Probability, in [0, 1], that a micro-batch is on-policy: the student (with its current LoRA, no dropout) samples a continuation of each example's prompt and the divergence is taken over the sampled tokens only (no CE). 0 = off-policy only."),
        field("distill.on_policy.max_new_tokens", \.distill.onPolicy.maxNewTokens, "Most tokens sampled per on-policy continuation (it also stops at an end-of-sequence token)."),
        field("distill.on_policy.temperature", \.distill.onPolicy.temperature, "Sampling temperature of on-policy continuations (0 = greedy)."),
        field("distill.on_policy.top_p", \.distill.onPolicy.topP, "Nucleus (top-p) of on-policy sampling, in (0, 1]."),
        field("data.train", \.data.train, "Training JSONL file."),
        field("data.eval", \.data.eval, "Held-out JSONL file for evaluation."),
        field("data.format", \.data.format, "auto, chat, prompt_response, gsm8k, humaneval or tokens."),
        field("data.max_seq_len", \.data.maxSeqLen, "Longer records are truncated (and counted)."),
        field("data.shuffle", \.data.shuffle, "Shuffle the records each epoch (seeded)."),
        field("data.train_on_prompt", \.data.trainOnPrompt, "Score prompt tokens too (otherwise they are -100)."),
        field("data.on_bad_record", \.data.onBadRecord, "error (stop with file:line) or skip (count and go on)."),
        field("data.tokenizer", \.data.tokenizer, "Directory with tokenizer.json; null = the student's directory."),
        field("data.enable_thinking", \.data.enableThinking, "Render chat turns with Qwen3 thinking enabled."),
        field("data.teacher_cache", \.data.teacherCache,
              "A kd teacher-cache directory: train on the teacher's cached top-K logits instead of running it (teacher.path may then be absent); null = the live teacher."),
        field("train.max_steps", \.train.maxSteps, "Optimizer steps to run."),
        field("train.batch_size", \.train.batchSize, "Records per micro-batch."),
        field("train.grad_accum_steps", \.train.gradAccumSteps, "Micro-batches per optimizer step."),
        field("train.lr", \.train.lr, "Peak learning rate."),
        field("train.lr_schedule", \.train.lrSchedule, "constant, linear or cosine decay after warmup."),
        field("train.warmup_steps", \.train.warmupSteps, "Linear warmup steps."),
        field("train.weight_decay", \.train.weightDecay, "AdamW decoupled weight decay."),
        field("train.adam_beta1", \.train.adamBeta1, "AdamW beta1."),
        field("train.adam_beta2", \.train.adamBeta2, "AdamW beta2."),
        field("train.adam_eps", \.train.adamEps, "AdamW epsilon."),
        field("train.max_grad_norm", \.train.maxGradNorm, "Clip the global gradient norm to this (0 = no clipping)."),
        field("train.activation_checkpointing", \.train.activationCheckpointing,
              "Student layers keep only their input in the forward pass and are recomputed before their backward: less memory, one more forward per layer, the same numbers bit for bit."),
        field("train.recompute", \.train.recompute,
              "With activation checkpointing, what a layer recomputes before its backward: layers (its whole forward), attention (it also keeps its products, q, k, v, the middle residual, gate and up, 2 x intermediate_size + q + 2 kv + hidden floats a token, and recomputes only norms, rope and attention), or auto (attention in as many layers as fit beside the rest of kd plan within 90% of each device's memory_per_device and within this machine's memory less a fifth). The same numbers bit for bit."),
        field("checkpoint.every_steps", \.checkpoint.everySteps, "Write a checkpoint every this many steps (0 = only at the end)."),
        field("checkpoint.keep_last", \.checkpoint.keepLast, "Checkpoints kept; older ones are deleted."),
        field("checkpoint.save_merged", \.checkpoint.saveMerged, "Also write the merged model into final_model/."),
        field("log.every_steps", \.log.everySteps, "Log a metrics line every this many steps."),
    ]

    static let fieldsByKey = Dictionary(uniqueKeysWithValues: fields.map { ($0.key, $0) })
    static let sections = fields.reduce(into: [String]()) { list, field in
        let section = String(field.key.prefix { $0 != "." })
        if !list.contains(section) { list.append(section) }
    }

    // MARK: Loading

    /// Reads a YAML run config (`-` for standard input) and applies `key.path=value` overrides.
    public static func load(path: String, overrides: [String] = []) throws -> RunConfig {
        let text: String
        if path == "-" {
            text = String(decoding: FileHandle.standardInput.readDataToEndOfFile(), as: UTF8.self)
        } else {
            text = String(decoding: try InputFile.read(path, limit: 1 << 24), as: UTF8.self)
        }
        return try parse(yaml: text, file: path == "-" ? "<stdin>" : path, overrides: overrides)
    }

    public static func parse(yaml: String, file: String, overrides: [String] = []) throws -> RunConfig {
        var config = RunConfig()
        // A UTF-8 byte-order mark, as some editors write, is not part of the YAML.
        let yaml = yaml.hasPrefix("\u{FEFF}") ? String(yaml.unicodeScalars.dropFirst()) : yaml
        let root: Node?
        do {
            root = try Yams.compose(yaml: yaml)
        } catch {
            throw KDError("\(file): not valid YAML: \(escaped(String(describing: error).split(separator: "\n").joined(separator: " ")))")
        }
        if let root {
            guard let top = root.mapping else { throw KDError("\(file): expected a mapping of sections (run:, teacher:, ...)") }
            for (sectionNode, body) in top {
                let section = sectionNode.string ?? ""
                guard sections.contains(section) else {
                    throw KDError("\(file):\(line(sectionNode)): unknown section \(quoted(section, limit: 60))\(suggestion(for: section, among: sections))")
                }
                if body.null != nil { continue }
                guard let mapping = body.mapping else {
                    throw KDError("\(file):\(line(body)): section '\(section)' must be a mapping of keys")
                }
                for (keyNode, value) in mapping {
                    try set("\(section).\(keyNode.string ?? "")", value, in: &config, file: file, line: line(keyNode))
                }
            }
        }
        for assignment in overrides {
            guard let eq = assignment.firstIndex(of: "=") else {
                throw KDError("--set \(quoted(assignment)): expected key.path=value")
            }
            let key = String(assignment[..<eq]).trimmingCharacters(in: .whitespaces)
            let text = String(assignment[assignment.index(after: eq)...])
            let node = (try? Yams.compose(yaml: text)) ?? nil
            try set(key, node ?? Node("", Tag(.null)), in: &config, location: "--set")
        }
        try config.validate(file: file)
        return config
    }

    /// A key's value; a mapping under a key that is a group of keys (`distill.on_policy:`) sets
    /// each of them.
    private static func set(_ key: String, _ node: Node, in config: inout RunConfig, file: String, line: Int) throws {
        if fieldsByKey[key] == nil, let mapping = node.mapping, fields.contains(where: { $0.key.hasPrefix(key + ".") }) {
            for (keyNode, value) in mapping {
                try set("\(key).\(keyNode.string ?? "")", value, in: &config, file: file, line: self.line(keyNode))
            }
            return
        }
        try set(key, node, in: &config, location: "\(file):\(line)")
    }

    private static func set(_ key: String, _ node: Node, in config: inout RunConfig, location: String) throws {
        guard let field = fieldsByKey[key] else {
            throw KDError("\(location): unknown key \(quoted(key, limit: 60))\(suggestion(for: key, among: fields.map(\.key)))")
        }
        do {
            try field.apply(&config, node)
        } catch let error as KDError {
            throw KDError("\(location): \(key): \(error.message)")
        }
    }

    private static func line(_ node: Node) -> Int { (node.mark?.line ?? 0) }

    /// " (did you mean 'lora.r'?)" when a known name is close enough to be a likely typo.
    static func suggestion(for word: String, among candidates: [String]) -> String {
        guard word.count <= 100 else { return "" }
        let scored = candidates.map { ($0, editDistance(word.lowercased(), $0.lowercased())) }
        guard let best = scored.min(by: { $0.1 < $1.1 }) else { return "" }
        let tail = String(word.split(separator: ".").last ?? "")
        let sameTail = candidates.first { $0.split(separator: ".").last.map(String.init) == tail && tail != "" }
        if let sameTail { return " (did you mean '\(sameTail)'?)" }
        return best.1 <= max(2, word.count / 3) ? " (did you mean '\(best.0)'?)" : ""
    }

    static func editDistance(_ a: String, _ b: String) -> Int {
        let a = Array(a), b = Array(b)
        var previous = Array(0...b.count)
        for i in 1...max(1, a.count) where !a.isEmpty {
            var current = [i] + [Int](repeating: 0, count: b.count)
            for j in 1...max(1, b.count) where !b.isEmpty {
                current[j] = Swift.min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
            }
            previous = current
        }
        return a.isEmpty ? b.count : previous[b.count]
    }

    /// Range checks with the key named.
    func validate(file: String) throws {
        func require(_ ok: Bool, _ key: String, _ what: String) throws {
            if !ok { throw KDError("\(file): \(key) \(what)") }
        }
        func range<T: Comparable>(_ value: T, _ key: String, _ bounds: ClosedRange<T>) throws {
            try require(bounds.contains(value), key, "(\(value)) must be between \(bounds.lowerBound) and \(bounds.upperBound)")
        }
        try require(!run.outputDir.isEmpty, "run.output_dir", "must name a directory")
        try range(run.seed, "run.seed", 0...Int(Int64.max))
        if let threads = run.threads { try range(threads, "run.threads", 1...Limits.threads) }
        if let count = devices.count { try range(count, "devices.count", 1...Limits.devices) }
        try range(run.dataParallel, "run.data_parallel", 1...Limits.ranks)
        for (name, model) in [("teacher", teacher), ("student", student)] {
            try require(!model.devices.isEmpty, "\(name).devices", "must list at least one device id")
            try require(Set(model.devices).count == model.devices.count, "\(name).devices", "lists a device twice")
            try require(model.devices.allSatisfy { $0 >= 0 && $0 < Limits.devices }, "\(name).devices",
                        "\(model.devices) must be ids from 0 to \(Limits.devices - 1)")
        }
        if let ranks = devices.ranks {
            try require(ranks.count == deviceCount, "devices.ranks", "lists \(ranks.count) ranks for \(deviceCount) devices")
            try require(ranks.allSatisfy { (0..<Limits.ranks).contains($0) }, "devices.ranks",
                        "\(ranks) must be ranks from 0 to \(Limits.ranks - 1)")
        }
        for (name, model) in [("teacher", teacher), ("student", student)] {
            try require(model.devices.allSatisfy { $0 < deviceCount }, "\(name).devices",
                        "\(model.devices) must be ids below devices.count (\(deviceCount))")
        }
        try range(lora.r, "lora.r", 1...LoRASettings.maximumRank)
        try require(lora.alpha > 0, "lora.alpha", "must be positive")
        try require(lora.dropout >= 0 && lora.dropout < 1, "lora.dropout", "must be in [0, 1)")
        let modules = LoRASettings.allTargets
        for module in lora.targetModules where !modules.contains(module) {
            throw KDError("\(file): lora.target_modules: unknown module \(quoted(module, limit: 60))\(RunConfig.suggestion(for: module, among: modules))")
        }
        try require(!lora.targetModules.isEmpty, "lora.target_modules", "must name at least one module")
        try require(distill.alpha >= 0 && distill.alpha <= 1, "distill.alpha", "must be in [0, 1]")
        try range(distill.temperature, "distill.temperature", 1e-3...1e3)
        try require(distill.jsdBeta > 0 && distill.jsdBeta < 1, "distill.jsd_beta", "(\(distill.jsdBeta)) must be in (0, 1)")
        try range(distill.chunkTokens, "distill.chunk_tokens", 1...Limits.tokens)
        let onPolicy = distill.onPolicy
        try require(onPolicy.fraction >= 0 && onPolicy.fraction <= 1, "distill.on_policy.fraction", "(\(onPolicy.fraction)) must be in [0, 1]")
        try range(onPolicy.maxNewTokens, "distill.on_policy.max_new_tokens", 1...Limits.sequence)
        try require(onPolicy.temperature >= 0, "distill.on_policy.temperature", "must be 0 (greedy) or positive")
        try require(onPolicy.topP > 0 && onPolicy.topP <= 1, "distill.on_policy.top_p", "(\(onPolicy.topP)) must be in (0, 1]")
        if onPolicy.fraction > 0 && data.teacherCache != nil {
            throw KDError("\(file): distill.on_policy needs the live teacher to score the sampled tokens; it cannot run from data.teacher_cache")
        }
        try range(data.maxSeqLen, "data.max_seq_len", 2...Limits.sequence)
        try range(train.maxSteps, "train.max_steps", 0...Limits.steps)
        try range(train.batchSize, "train.batch_size", 1...Limits.batch)
        try range(train.gradAccumSteps, "train.grad_accum_steps", 1...Limits.batch)
        try require(train.batchSize * train.gradAccumSteps >= run.dataParallel, "train.batch_size",
                    "× train.grad_accum_steps (\(train.batchSize) × \(train.gradAccumSteps)) must be at least run.data_parallel "
                        + "(\(run.dataParallel)): every replica needs a row of each step")
        try require(train.batchSize * data.maxSeqLen <= Limits.tokens, "train.batch_size",
                    "× data.max_seq_len (\(train.batchSize) × \(data.maxSeqLen)) must be at most \(Limits.tokens) tokens per micro-batch")
        try require(train.lr >= 0, "train.lr", "must not be negative")
        try range(train.warmupSteps, "train.warmup_steps", 0...Limits.steps)
        try require(train.weightDecay >= 0, "train.weight_decay", "must not be negative")
        try require(train.adamBeta1 >= 0 && train.adamBeta1 < 1, "train.adam_beta1", "must be in [0, 1)")
        try require(train.adamBeta2 >= 0 && train.adamBeta2 < 1, "train.adam_beta2", "must be in [0, 1)")
        try require(train.adamEps > 0, "train.adam_eps", "must be positive")
        try require(train.maxGradNorm >= 0, "train.max_grad_norm", "must not be negative")
        try range(checkpoint.everySteps, "checkpoint.every_steps", 0...Limits.steps)
        try range(checkpoint.keepLast, "checkpoint.keep_last", 1...Limits.steps)
        try range(log.everySteps, "log.every_steps", 1...Limits.steps)
    }

    /// Bounds on run-config values: beyond any real run, and low enough that every count and size
    /// derived from them fits an Int.
    public enum Limits {
        public static let threads = 1024
        public static let devices = 1024
        public static let ranks = 1024
        public static let steps = 1 << 40
        public static let batch = 1 << 16
        public static let sequence = 1 << 20
        /// Tokens in one micro-batch (batch_size × max_seq_len), and in one loss chunk.
        public static let tokens = 1 << 24
    }

    /// Fails when a required path is not set.
    public func requireModelPaths() throws {
        if teacher.path.isEmpty && data.teacherCache == nil { throw KDError("teacher.path is required (the teacher model directory)") }
        if student.path.isEmpty { throw KDError("student.path is required (the student model directory)") }
    }

    /// The effective configuration, every key with its value.
    public var effectiveValues: [(key: String, value: Any)] {
        RunConfig.fields.map { ($0.key, $0.jsonValue(in: self)) }
    }
}
