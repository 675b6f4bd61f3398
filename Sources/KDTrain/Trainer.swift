import Foundation
import KDCore
import KDModels
import KDText

/// One logged optimizer step.
public struct StepMetrics: Sendable {
    public var step = 0
    public var loss = 0.0
    /// The forward KL(teacher‖student), whatever `distill.loss` is, and the chosen divergence
    /// (the same number for forward_kl); both means over the scored tokens at temperature T.
    public var klLoss = 0.0
    public var divergence = 0.0
    public var ceLoss = 0.0
    public var gradNorm = 0.0
    public var lr = 0.0
    /// Real (non-pad) input tokens of the step, and the positions the loss scored.
    public var tokens = 0
    public var scoredTokens = 0
    public var tokensPerSecond = 0.0
    public var teacherMs = 0.0
    public var studentMs = 0.0
    /// Bytes copied between devices for the step's batches: the teacher's logits and both
    /// models' activations (and the student's gradients) crossing stage boundaries.
    public var transferBytes = 0
    /// Scored tokens the student sampled itself (on-policy micro-batches), and the time it took.
    public var onPolicyTokens = 0
    public var generationMs = 0.0
    public var elapsedSeconds = 0.0
    public var agreement = 0.0
    /// The most bytes each device (by id) has held in live tensors since the process started
    /// (`Device.peakBytes`), and the process's peak resident set size. Neither is deterministic
    /// across runs (a resumed run starts counting afresh; the teacher's thread runs alongside).
    public var devicePeakBytes: [Int] = []
    public var peakRSSBytes = 0
    /// Milliseconds per phase: teacher_forward, teacher_head (the teacher's work on this step's
    /// batches, when it was prefetched during the step before too), student_forward, student_head,
    /// student_loss, student_recompute, student_backward (`Trainer.phases`) and optimizer. Teacher
    /// and student phases that ran side by side both count in full.
    public var phaseMs: [String: Double] = [:]
    /// The run's MPI ranks (1 alone), and the bytes that crossed between them for the step: the
    /// replicas' gradients, totals and stop check (what the step's own totals exchange sends counts
    /// in the next step), and a teacher rank's batches and logits.
    public var ranks = 1
    public var bytesSent = 0
    /// Each student stage's busy share of the step, in stage order: the ranks holding its first
    /// stages (their forward, backward and optimizer work), then the student's rank (its student
    /// phases). One entry when the student is on one rank.
    public var stageBusy: [Double] = []

    /// The metrics.jsonl object.
    public var json: [String: Any] {
        ["step": step, "loss": loss, "kl_loss": klLoss, "divergence": divergence, "ce_loss": ceLoss, "grad_norm": gradNorm, "lr": lr,
         "tokens": tokens, "scored_tokens": scoredTokens, "tokens_per_s": tokensPerSecond, "teacher_ms": teacherMs,
         "student_ms": studentMs, "transfer_bytes": transferBytes, "on_policy_tokens": onPolicyTokens, "generation_ms": generationMs, "elapsed_s": elapsedSeconds, "top1_agreement": agreement,
         "device_peak_bytes": devicePeakBytes, "peak_rss_bytes": peakRSSBytes, "phase_ms": phaseMs,
         "ranks": ranks, "bytes_sent": bytesSent, "stage_busy": stageBusy]
    }
}

/// A run's teacher and student on their device groups, with the tokenizer and the shared
/// vocabulary: what training and evaluation both start from.
public struct RunModels {
    public let budget: ComputeBudget
    public let devices: DeviceGroup
    /// The teacher's logits: the model, or the cache of `data.teacher_cache` (then no teacher is loaded).
    public let teacher: TeacherSource
    /// The teacher's shape (from its config.json, or the cache's manifest).
    public let teacherSpec: ModelSpec
    public let student: CausalLM
    /// The student's first stages, when they run on ranks of their own (`student.upstream`).
    public var studentStages: StudentStages? { student.upstream as? StudentStages }
    public let tokenizer: Tokenizer?
    public let vocab: Int
    public let padID: Int
    /// Notes for the user (a shared vocabulary range).
    public let notes: [String]

    /// Checks the plan and the vocabularies before any weight is read, then loads both models (the
    /// student alone with `cache`, `data.teacher_cache` opened, which must match the teacher and
    /// vocabulary).
    /// With a `layout` whose teacher is on another rank, the teacher is not loaded here: that rank
    /// serves its logits (`RemoteTeacher`).
    public static func load(_ config: RunConfig, cache: TeacherCache? = nil, layout: RankLayout? = nil,
                            onLoad: (String) -> Void = { _ in }) throws -> RunModels {
        try config.requireModelPaths()
        let remote = cache == nil && layout?.teacherElsewhere == true
        let plan = try MemoryPlan(config: config, teacherElsewhere: remote)
        let budget = plan.budget  // `cache` is config.data.teacher_cache opened, which the plan read too
        BLAS.threads = budget.threads
        if !plan.fits {
            let over = plan.devices.filter { !$0.fits }.map {
                "device \($0.id) needs \(formatBytes($0.totalBytes)) of \(formatBytes($0.capacityBytes ?? 0))"
            }
            throw KDError("the run does not fit its devices: \(over.joined(separator: "; ")) (see kd plan)")
        }
        if plan.student.spec.isMoE { throw KDError("student.path: MoE students are not supported (use a dense Qwen3 student)") }
        let tokenizer = try config.loadTokenizer(required: false)
        var notes: [String] = []
        let vocab = try sharedVocabulary(teacher: plan.teacher.spec, student: plan.student.spec, tokenizer: tokenizer,
                                         notes: &notes)
        let devices = try layout?.devices ?? DeviceGroup.make(count: config.deviceCount, capacity: config.devices.memoryPerDevice?.bytes)
        if let cache {
            // The teacher when it is at hand: the cache must have been made from it.
            var isDirectory: ObjCBool = false
            let fingerprint = !config.teacher.path.isEmpty && FileManager.default.fileExists(atPath: config.teacher.path, isDirectory: &isDirectory)
                && isDirectory.boolValue ? try TeacherCache.fingerprint(ofModel: config.teacher.path, dtype: config.teacher.dtype) : nil
            try cache.checkTeacher(vocab: vocab, fingerprint: fingerprint)
        }
        let start = ContinuousClock.now
        let teacher: TeacherSource
        if let cache {
            teacher = .cached(cache, split: "train")
        } else if remote, let layout {
            teacher = .remote(RemoteTeacher(communicator: layout.world, ranks: layout.teacherRanks,
                                            device: layout.devices(of: config.teacher.devices, onRank: layout.teacherRanks.last!).last,
                                            spec: plan.teacher.spec))
        } else {
            teacher = .live(try CausalLM.load(try Checkpoint(directory: config.teacher.path),
                                              on: try DeviceGroup(config.teacher.devices.map { devices.devices[$0] }),
                                              dtype: config.teacher.dtype))
        }
        var stages: StudentStages?
        if let layout, !layout.studentPartRanks.isEmpty {
            // The student's stages on the ranks before its own, in the order its devices give them.
            stages = StudentStages(communicator: layout.world, ranks: layout.studentPartRanks,
                                   devices: layout.studentPartRanks.map { layout.devices(of: config.student.devices, onRank: $0).last },
                                   spec: plan.student.spec, settings: config.lora,
                                   pipelined: config.train.activationCheckpointing)
        }
        let student = try CausalLM.load(try Checkpoint(directory: config.student.path),
                                        on: try DeviceGroup(config.student.devices.map { devices.devices[$0] }),
                                        dtype: config.student.dtype, after: stages)
        student.activationCheckpointing = config.train.activationCheckpointing
        student.layersKeepingProducts = plan.studentLayersKeepingProducts
        let seconds = (ContinuousClock.now - start).seconds
        let parts = stages.map { "; its first stages: ranks " + $0.ranks.map(String.init).joined(separator: ",") } ?? ""
        onLoad(cache != nil ? String(format: "loaded the student in %.1f s (teacher: %@%@)", seconds, cache!.directory, parts)
            : remote ? String(format: "loaded the student in %.1f s (teacher: ranks %@%@)", seconds,
                              layout!.teacherRanks.map(String.init).joined(separator: ","), parts)
            : String(format: "loaded teacher and student in %.1f s%@", seconds, stages == nil ? "" : " (student" + parts + ")"))
        return RunModels(budget: budget, devices: devices, teacher: teacher, teacherSpec: plan.teacher.spec, student: student,
                         tokenizer: tokenizer, vocab: vocab, padID: tokenizer?.padID ?? 0, notes: notes)
    }

    /// The vocabulary the loss uses: equal sizes, or sizes differing only in embedding padding
    /// rows beyond the tokenizer's length (then the shared range).
    static func sharedVocabulary(teacher: ModelSpec, student: ModelSpec, tokenizer: Tokenizer?, notes: inout [String]) throws -> Int {
        if teacher.vocabSize == student.vocabSize { return teacher.vocabSize }
        let shared = min(teacher.vocabSize, student.vocabSize)
        guard let tokenizer else {
            throw KDError("teacher vocab_size \(teacher.vocabSize) differs from student vocab_size \(student.vocabSize), and "
                + "without a tokenizer kd cannot tell whether the difference is only padding (set data.tokenizer)")
        }
        guard tokenizer.count <= shared else {
            throw KDError("teacher vocab_size \(teacher.vocabSize) and student vocab_size \(student.vocabSize) differ within "
                + "the tokenizer's \(tokenizer.count) tokens: the models do not share a vocabulary")
        }
        notes.append("teacher vocab_size \(teacher.vocabSize), student \(student.vocabSize): the loss uses the shared "
            + "first \(shared) logits (the tokenizer has \(tokenizer.count) tokens; the rest are embedding padding)")
        return shared
    }

    /// Lets a teacher and student stages on other ranks go (their ranks then leave the job).
    public func releaseRanks() throws {
        if case .remote(let remote) = teacher { try remote.stop() }
        try studentStages?.stop()
    }

    /// The distillation pass of a run's settings over these models.
    public func pass(_ config: RunConfig) -> DistillationPass {
        DistillationPass(teacher: teacher, student: student, alpha: Float(config.distill.alpha),
                         temperature: Float(config.distill.temperature), divergence: config.distill.divergence,
                         chunkTokens: config.distill.chunkTokens,
                         vocab: vocab, budget: budget)
    }
}

/// A training run's models, data and optimizer, advanced one optimizer step at a time.
public final class Trainer {
    public let config: RunConfig
    public let models: RunModels
    /// The data-parallel replicas' student ranks: each takes its share of every micro-batch.
    public let communicator: Communicator
    /// The whole job (replicas, and teachers on ranks of their own).
    let world: Communicator
    public let dataset: Dataset
    public let pass: DistillationPass
    public let optimizer: AdamW
    public let onPolicy: OnPolicy
    public private(set) var sampler: BatchSampler
    public private(set) var step = 0
    /// Notes for the user (a shared vocabulary range, changed config keys on resume).
    public private(set) var notes: [String] = []
    /// The adapters held on this rank (all of them unless the student's first stages run elsewhere).
    let adapters: [NamedAdapter]
    /// Where the student and the optimizer report their time; taken into each step's metrics.
    public let phases = PhaseTimes()
    /// Called with each step's number and its gradients before clipping.
    public var optimizerHook: ((Int, [(name: String, tensor: Tensor)]) throws -> Void)?

    public var budget: ComputeBudget { models.budget }
    public var devices: DeviceGroup { models.devices }
    public var student: CausalLM { models.student }
    public var padID: Int { models.padID }

    /// Builds the run: the models (see `RunModels.load`), the adapters, the data, and the state of
    /// `resumeFrom` (a checkpoint directory) when given.
    public init(config: RunConfig, resumeFrom: String? = nil, layout: RankLayout? = nil,
                onLoad: (String) -> Void = { _ in }) throws {
        self.config = config
        let layout = try layout ?? RankLayout(config: config)
        guard let replicas = layout.replicas else { throw KDError("rank \(layout.world.rank) holds no student to train") }
        self.communicator = replicas
        world = layout.world
        dataset = try config.loadDataset(config.data.train, key: "data.train")
        try config.checkVocabulary(dataset)
        if config.distill.onPolicy.fraction > 0 { try OnPolicy.checkPrompts(dataset, key: "data.train") }
        let cache = try config.data.teacherCache.map { try TeacherCache(directory: $0) }
        try cache?.checkData(split: "train", dataset: dataset, key: "data.train")
        if let cache, config.distill.loss == .reverseKL, config.distill.temperature != 1,
           config.distill.temperature != cache.manifest.temperature {
            throw KDError("distill.loss reverse_kl with data.teacher_cache needs distill.temperature 1 or the cache's "
                + "(\(cache.manifest.temperature)): at other temperatures the cache holds no teacher probability outside its "
                + "top-K ids, and KL(q||p) is infinite there")
        }
        let models = try RunModels.load(config, cache: cache, layout: layout, onLoad: onLoad)
        self.models = models
        let student = models.student
        try Self.attachAdapters(config, to: student, resumeFrom: resumeFrom)
        student.timing = PhaseTimes.Scope(phases, prefix: "student")
        adapters = student.namedAdapters
        optimizer = try Self.optimizer(config, adapters: adapters)
        try models.studentStages?.start(resumeFrom: resumeFrom)
        pass = models.pass(config)
        onPolicy = OnPolicy(config: config, stop: StopCondition.defaults(
            modelDirectory: config.student.path, spec: models.student.spec, eosID: models.tokenizer?.eosID))
        sampler = BatchSampler(count: dataset.examples.count, batchSize: config.train.batchSize,
                               shuffle: config.data.shuffle, seed: UInt64(config.run.seed))
        notes = models.notes
        if let resumeFrom { try restore(from: resumeFrom) }
    }

    // MARK: Stepping

    /// The learning rate of the next optimizer step.
    public var nextLearningRate: Double {
        config.train.lr * config.train.lrSchedule.factor(step: step, warmup: config.train.warmupSteps, total: config.train.maxSteps)
    }

    /// The next step's micro-batches' examples, drawn ahead (with the sampler position after
    /// them) so the teacher can start on the first while the student finishes the current step.
    private var upcoming: (batches: [[Example]], sampler: BatchSampler)?
    /// The teacher side of the next micro-batch, already started.
    private var prefetched: TeacherStream?

    private func drawBatches(from sampler: BatchSampler) -> (batches: [[Example]], sampler: BatchSampler) {
        var sampler = sampler
        let batches = (0..<config.train.gradAccumSteps).map { _ in sampler.next().map { dataset.examples[$0] } }
        return (batches, sampler)
    }

    /// This replica's rows of micro-batch `micro` of a step, of `count` examples: the replicas cut
    /// it into `size` contiguous shares as even as it goes, and replica r takes share (r + micro)
    /// mod size, so that micro-batches of fewer rows than replicas still spread over all of them.
    func replicaRows(_ count: Int, micro: Int) -> Range<Int> {
        let size = communicator.size, share = (communicator.rank + micro) % size
        return count * share / size ..< count * (share + 1) / size
    }

    /// This replica's share of a micro-batch drawn off-policy (perhaps no row).
    private func replicaBatch(_ examples: [Example], micro: Int) -> PaddedBatch {
        PaddedBatch(Array(examples[replicaRows(examples.count, micro: micro)]), padID: padID)
    }

    /// Runs one optimizer step over `grad_accum_steps` micro-batches. Fails, without updating
    /// anything, when the loss or the gradient is not finite.
    public func trainStep() throws -> StepMetrics {
        let start = ContinuousClock.now
        let (drawn, samplerAfter) = upcoming ?? drawBatches(from: sampler)
        upcoming = nil
        sampler = samplerAfter
        var metrics = StepMetrics()
        // On-policy micro-batches are sampled first, with the adapters as they are before the step:
        // N, the step's scored tokens, must be known before any gradient is formed.
        let onPolicyMicro = drawn.indices.map { onPolicy.isOnPolicy(step: step, micro: $0) }
        var batches: [PaddedBatch] = []
        for (micro, examples) in drawn.enumerated() {
            guard onPolicyMicro[micro] else {
                batches.append(replicaBatch(examples, micro: micro))
                continue
            }
            let generationStart = ContinuousClock.now
            let batch = try onPolicy.batch(examples, rows: replicaRows(examples.count, micro: micro), student: student, step: step, micro: micro,
                                           padID: padID)
            metrics.generationMs += (ContinuousClock.now - generationStart).seconds * 1000
            metrics.onPolicyTokens += batch.scoredTokens
            batches.append(batch)
        }
        // N counts every replica's scored tokens: each replica's gradients are already of the global mean.
        let scored = try communicator.sum([batches.reduce(0) { $0 + $1.scoredTokens }])[0]
        guard scored > 0 else { throw KDError("step \(step + 1): the batch has no scored tokens") }
        for named in adapters { try named.adapter.zeroGradients() }
        let stages = models.studentStages
        try stages?.zeroGradients()
        var totals = DistillationLoss.Totals()
        var requestedAhead = -1
        for (micro, batch) in batches.enumerated() where batch.batchSize > 0 {
            if let stages {
                // The student's first stages get each micro-batch's forward, with its dropout key,
                // before its turn; with activation checkpointing also the next one's, which they run
                // while this one finishes, here and in their backward (GPipe).
                let next = stages.pipelined ? batches[(micro + 1)...].firstIndex { $0.batchSize > 0 } : nil
                for ahead in [micro] + [next].compactMap({ $0 }) where ahead > requestedAhead {
                    try stages.requestForward(DistillationPass.tokens(batches[ahead]), key: (step, ahead), onto: student.firstDevice)
                    requestedAhead = ahead
                }
            }
            for named in adapters {
                named.adapter.dropoutStream = Self.dropoutStream(
                    seed: config.run.seed, step: step, micro: micro, linear: named.name, replicas: communicator)
            }
            let stream = prefetched ?? pass.startTeacher(batch)
            prefetched = nil
            let result = try pass.run(batch, gradientScale: 1 / Float(scored), crossEntropy: !onPolicyMicro[micro],
                                      teacherStream: stream) {
                // While the student finishes this micro-batch, the teacher starts on the next one
                // (not on the next step's when that one is on-policy: it is sampled after this step):
                // on its own cores, or on its own rank.
                guard budget.concurrent || teacherElsewhere else { return }
                if let next = batches[(micro + 1)...].firstIndex(where: { $0.batchSize > 0 }) {
                    if next == micro + 1 { prefetched = pass.startTeacher(batches[next]) }
                } else if step + 1 < config.train.maxSteps && !onPolicy.isOnPolicy(step: step + 1, micro: 0) {
                    upcoming = drawBatches(from: sampler)
                    let first = replicaBatch(upcoming!.batches[0], micro: 0)
                    if first.batchSize > 0 { prefetched = pass.startTeacher(first) }
                }
            }
            totals.add(result.totals)
            metrics.teacherMs += result.teacherSeconds * 1000
            metrics.studentMs += result.studentSeconds * 1000
            metrics.phaseMs.merge(result.teacherPhases.mapValues { $0 * 1000 }, uniquingKeysWith: +)
            metrics.transferBytes += result.transferBytes
            metrics.tokens += batch.attentionMask.reduce(0) { $0 + Int($1) }
        }
        if communicator.size > 1 {
            try Self.sum(adapters, over: communicator)
            try totals.sum(over: communicator)
            metrics.tokens = try communicator.sum([metrics.tokens])[0]
        }
        let n = Double(scored)
        let alpha = config.distill.alpha, temperature = config.distill.temperature
        metrics.klLoss = totals.kl / n
        metrics.divergence = totals.divergence / n
        // CE is the mean over the tokens it applies to (all but on-policy ones); in the loss it is
        // summed over those and divided by N, as the gradient has it.
        metrics.ceLoss = totals.ce / Double(max(1, totals.ceRows))
        metrics.loss = alpha * temperature * temperature * metrics.divergence + (1 - alpha) * (totals.ce / n)
        metrics.agreement = Double(totals.agreements) / n
        // The parts' slots come first in slot order (their layers come first).
        let remote = try stages?.squareSums()
        metrics.gradNorm = phases.time("optimizer") {
            AdamW.norm(squareSums: (remote?.sums ?? []) + optimizer.gradientSquareSums())
        }
        guard metrics.loss.isFinite else {
            discardPrefetch()
            throw NonFiniteStep(step: step + 1, what: "loss")
        }
        guard metrics.gradNorm.isFinite else {
            discardPrefetch()
            throw NonFiniteStep(step: step + 1, what: "gradient norm")
        }
        metrics.lr = nextLearningRate
        if let optimizerHook { try optimizerHook(step + 1, try (stages?.gradients(on: student.firstDevice) ?? []) + gradients()) }
        try stages?.step(norm: metrics.gradNorm, maxNorm: config.train.maxGradNorm, lr: metrics.lr)
        phases.time("optimizer") {
            if config.train.maxGradNorm > 0 { optimizer.clip(norm: metrics.gradNorm, maxNorm: config.train.maxGradNorm) }
            optimizer.step(lr: metrics.lr)
        }
        step += 1
        metrics.step = step
        metrics.scoredTokens = scored
        let seconds = (ContinuousClock.now - start).seconds
        metrics.tokensPerSecond = Double(metrics.tokens) / seconds
        metrics.devicePeakBytes = devices.devices.map(\.peakBytes)
        metrics.peakRSSBytes = Self.peakResidentBytes()
        let own = phases.take()
        metrics.phaseMs.merge(own.mapValues { $0 * 1000 }, uniquingKeysWith: +)
        // Each student stage's busy share of the step: the parts' work, and this rank's student phases.
        metrics.stageBusy = ((remote?.busySeconds ?? []) + [own.filter { $0.key.hasPrefix("student_") || $0.key == "optimizer" }
            .values.reduce(0, +)]).map { $0 / seconds }
        metrics.ranks = world.size
        let sent = bytesOnWire
        metrics.bytesSent = try communicator.sum([sent - bytesSentBefore])[0]
        bytesSentBefore = sent
        return metrics
    }

    /// The 8-byte numbers a rank sends every other rank each step besides the gradients: the
    /// scored-token count, the loss totals (3 sums, 3 counts), the tokens, bytes_sent and the stop check.
    public static let exchangedNumbersPerStep = 10

    /// What crossed between this student rank and others: what it sent its replicas and its
    /// teacher's rank, and what that teacher sent it.
    private var bytesOnWire: Int {
        var bytes = communicator.bytesSent + (world === communicator ? 0 : world.bytesSent)
        if case .remote(let teacher) = models.teacher { bytes += teacher.bytesReceived }
        return bytes + (models.studentStages?.bytesReceived ?? 0)
    }

    /// Whether the teacher runs on another rank.
    private var teacherElsewhere: Bool {
        if case .remote = models.teacher { return true }
        return false
    }

    /// This rank's `bytesOnWire` when the last step's metrics were taken.
    private var bytesSentBefore = 0

    /// The process's peak resident set size in bytes (getrusage's ru_maxrss, in KiB on Linux); 0
    /// when it cannot be read.
    public static func peakResidentBytes() -> Int {
        var usage = rusage()
        guard getrusage(RUSAGE_SELF.rawValue, &usage) == 0, usage.ru_maxrss >= 0 else { return 0 }
        let (bytes, overflow) = Int(usage.ru_maxrss).multipliedReportingOverflow(by: 1024)
        return overflow ? Int.max : bytes
    }

    /// Drops the teacher work started for the next step (the run is stopping).
    public func discardPrefetch() {
        prefetched?.cancel()
        prefetched = nil
        upcoming = nil
    }

    /// The adapters' gradients by PEFT key (clipped once the step has been applied).
    public func gradients() -> [(name: String, tensor: Tensor)] {
        adapters.flatMap { named in
            [(PEFTAdapter.key(named.name, "A"), named.adapter.gradA!), (PEFTAdapter.key(named.name, "B"), named.adapter.gradB!)]
        }
    }

    // MARK: Checkpoints

    var shapes: [String: String] {
        var shapes: [String: String] = [:]
        for (role, spec) in [("teacher", models.teacherSpec), ("student", student.spec)] {
            shapes["\(role).model_type"] = spec.modelType
            shapes["\(role).hidden_size"] = "\(spec.hiddenSize)"
            shapes["\(role).num_hidden_layers"] = "\(spec.numLayers)"
            shapes["\(role).vocab_size"] = "\(spec.vocabSize)"
            shapes["\(role).num_attention_heads"] = "\(spec.numHeads)"
            shapes["\(role).num_key_value_heads"] = "\(spec.numKVHeads)"
            shapes["\(role).head_dim"] = "\(spec.headDim)"
            shapes["\(role).feed_forward"] = "\(spec.feedForward.first.map { "\($0)" } ?? "")"
        }
        shapes["lora.r"] = "\(config.lora.r)"
        shapes["lora.alpha"] = "\(config.lora.alpha)"
        shapes["lora.target_modules"] = config.lora.targetModules.joined(separator: ",")
        shapes["lora.use_rslora"] = "\(config.lora.useRSLoRA)"
        return shapes
    }

    /// FNV-1a of every key that changes the numbers of a step (not max_steps, bookkeeping,
    /// activation checkpointing, what it recomputes, or devices.ranks, which give the same numbers
    /// bit for bit).
    /// distill.loss enters unless it is forward_kl, and distill.jsd_beta only with jsd, so the hash of a forward_kl
    /// run is the one kd computed before these keys existed (its checkpoints resume unchanged).
    /// teacher.dtype and student.dtype enter only as bf16, the one setting that can round
    /// weights: auto and f32 hold the same values and give the same numbers bit for bit.
    /// data.teacher_cache enters when set, and distill.on_policy's keys when its fraction is not 0.
    var configHash: String {
        var ignored: Set<String> = ["train.max_steps", "run.output_dir", "run.threads", "run.concurrency", "checkpoint.every_steps",
                                    "checkpoint.keep_last", "checkpoint.save_merged", "log.every_steps",
                                    "train.activation_checkpointing", "train.recompute", "devices.ranks"]
        if config.distill.loss == .forwardKL { ignored.insert("distill.loss") }
        if config.distill.loss != .jsd { ignored.insert("distill.jsd_beta") }
        if config.teacher.dtype != .bf16 { ignored.insert("teacher.dtype") }
        if config.student.dtype != .bf16 { ignored.insert("student.dtype") }
        if config.data.teacherCache == nil { ignored.insert("data.teacher_cache") }
        // Replicas sum the gradients in another order (and draw dropout masks per replica).
        if config.run.dataParallel == 1 { ignored.insert("run.data_parallel") }
        if config.distill.onPolicy.fraction == 0 {
            ignored.formUnion(["distill.on_policy.fraction", "distill.on_policy.max_new_tokens", "distill.on_policy.temperature",
                               "distill.on_policy.top_p"])
        }
        let text = config.effectiveValues.filter { !ignored.contains($0.key) }.map { "\($0.key)=\($0.value)" }
            .joined(separator: "\n")
        return String(RandomGenerator.hash(text), radix: 16)
    }

    var state: TrainerState {
        TrainerState(
            step: step, cursor: sampler.cursor, seed: config.run.seed,
            rng: "xoshiro256** streams keyed by (run.seed, step, micro-batch): dropout (and module), on-policy draw and sampling",
            scheduler: .init(schedule: config.train.lrSchedule.rawValue, peakLR: config.train.lr,
                             warmupSteps: config.train.warmupSteps, maxSteps: config.train.maxSteps,
                             lastLR: config.train.lr * config.train.lrSchedule.factor(
                                step: max(0, step - 1), warmup: config.train.warmupSteps, total: config.train.maxSteps)),
            configHash: configHash, shapes: shapes, kdVersion: TrainingCheckpoint.version)
    }

    /// Every adapter of the student in layer order: the student's first stages' (copied here
    /// when they run elsewhere), then this rank's.
    public func allAdapters() throws -> [NamedAdapter] {
        try (models.studentStages?.adapters(on: student.firstDevice) ?? []) + adapters
    }

    /// Writes `checkpoint-<step>` into the output directory.
    @discardableResult
    public func saveCheckpoint() throws -> String {
        try FileManager.default.createDirectory(atPath: config.run.outputDir, withIntermediateDirectories: true)
        let moments = try (models.studentStages?.moments(on: student.firstDevice) ?? []) + optimizer.moments
        return try TrainingCheckpoint.write(
            outputDir: config.run.outputDir, step: step, adapters: try allAdapters(), settings: config.lora,
            baseModel: config.student.path, moments: moments, optimizerStep: optimizer.stepCount, state: state,
            keepLast: config.checkpoint.keepLast)
    }

    /// Restores adapters, moments, step and data position from a checkpoint, refusing one whose
    /// model or LoRA shapes differ.
    func restore(from directory: String) throws {
        let saved = try TrainingCheckpoint.readState(directory)
        for key in shapes.keys.sorted() where saved.shapes[key] != shapes[key] {
            throw KDError("cannot resume from \(directory): \(key) is \(saved.shapes[key] ?? "absent") in the checkpoint "
                + "but \(shapes[key]!) in this run")
        }
        if saved.seed != config.run.seed {
            throw KDError("cannot resume from \(directory): run.seed is \(saved.seed) in the checkpoint but \(config.run.seed) here")
        }
        if saved.configHash != configHash {
            notes.append("the configuration differs from the checkpoint's in keys other than shapes: the resumed run "
                + "will not match an uninterrupted one")
        }
        try checkCursor(saved, file: (directory as NSString).appendingPathComponent(TrainingCheckpoint.stateName))
        try Self.restore(adapters, optimizer: optimizer, from: directory, step: saved.step)
        step = saved.step
        sampler = BatchSampler(count: dataset.examples.count, batchSize: config.train.batchSize,
                               shuffle: config.data.shuffle, seed: UInt64(config.run.seed), cursor: saved.cursor)
    }
}

extension Trainer {
    /// Attaches the run's adapters to `model` (the student, or the part of it a rank holds): from
    /// `lora.init_from`, PiSSA's (from `resumeFrom`'s saved initial matrices when resuming), or
    /// fresh, each linear's values from its own seeded stream.
    static func attachAdapters(_ config: RunConfig, to model: some AdaptedModel, resumeFrom: String?) throws {
        if config.lora.initMethod == .pissa && config.lora.initFrom != nil {
            throw KDError("lora.init pissa and lora.init_from exclude each other")
        }
        if let resumeFrom, config.lora.initMethod == .pissa {
            // PiSSA's frozen residual comes from the saved initial matrices, exactly as at the start.
            try PEFTAdapter.attachPiSSA(savedIn: resumeFrom, to: model, settings: config.lora)
        } else if let initFrom = config.lora.initFrom {
            let given = try PEFTAdapter.settings(directory: initFrom)
            for (key, mine, theirs) in [("r", "\(config.lora.r)", "\(given.r)"), ("alpha", "\(config.lora.alpha)", "\(given.alpha)"),
                                        ("target_modules", "\(config.lora.targetModules.sorted())", "\(given.targetModules.sorted())"),
                                        ("use_rslora", "\(config.lora.useRSLoRA)", "\(given.useRSLoRA)")] where mine != theirs {
                throw KDError("lora.init_from \(initFrom): its \(key) is \(theirs) but lora.\(key) is \(mine)")
            }
            try PEFTAdapter.attach(directory: initFrom, to: model, dropout: Float(config.lora.dropout))
        } else {
            try PEFTAdapter.attachFresh(to: model, settings: config.lora, seed: UInt64(config.run.seed))
        }
    }

    /// AdamW over `adapters`' A and B (in that order, adapter by adapter), their gradients zeroed.
    static func optimizer(_ config: RunConfig, adapters: [NamedAdapter]) throws -> AdamW {
        let optimizer = AdamW(hyper: .init(beta1: config.train.adamBeta1, beta2: config.train.adamBeta2,
                                           eps: config.train.adamEps, weightDecay: config.train.weightDecay))
        for named in adapters {
            let adapter = named.adapter
            try adapter.zeroGradients()
            try optimizer.add(name: named.name + ".lora_A", parameter: adapter.a) { adapter.gradA! }
            try optimizer.add(name: named.name + ".lora_B", parameter: adapter.b) { adapter.gradB! }
        }
        return optimizer
    }

    /// Restores `adapters` (PiSSA's are restored when attached) and their moments from a checkpoint.
    static func restore(_ adapters: [NamedAdapter], optimizer: AdamW, from directory: String, step: Int) throws {
        let file = try SafetensorsFile(path: (directory as NSString).appendingPathComponent(PEFTAdapter.weightsName))
        for named in adapters where named.adapter.initial == nil {
            for (matrix, target) in [("A", named.adapter.a), ("B", named.adapter.b)] {
                let key = PEFTAdapter.key(named.name, matrix)
                guard let info = file.tensors[key], info.shape == target.shape else {
                    throw KDError("\(file.path): tensor '\(key)' is missing or has the wrong shape")
                }
                target.data.update(from: try file.load(key, on: target.device).data, count: target.count)
            }
        }
        try TrainingCheckpoint.readOptimizer(directory, into: optimizer, step: step)
    }

    /// The dropout stream of `linear` in micro-batch `micro` of step `step` (0-based). Replicas
    /// hold different rows, so each draws its own masks (`replicas`: a rank's counterparts in the
    /// other replicas).
    static func dropoutStream(seed: Int, step: Int, micro: Int, linear: String, replicas: Communicator) -> RandomGenerator {
        let replica = replicas.size == 1 ? [] : [UInt64(replicas.rank)]
        return RandomGenerator(
            seed: UInt64(seed), streams: [RandomGenerator.hash("dropout"), UInt64(step), UInt64(micro), RandomGenerator.hash(linear)] + replica)
    }

    /// Replaces the adapters' gradients by their sum over `replicas`, added in rank order: all
    /// replicas then clip and step identically. The gradients travel as one buffer.
    static func sum(_ adapters: [NamedAdapter], over replicas: Communicator) throws {
        let tensors = adapters.flatMap { [$0.adapter.gradA!, $0.adapter.gradB!] }
        var flat = [Float](repeating: 0, count: tensors.reduce(0) { $0 + $1.count })
        try flat.withUnsafeMutableBufferPointer { buffer in
            let base = buffer.baseAddress!
            var offset = 0
            for tensor in tensors {
                let at = base + offset
                try tensor.device.run { at.update(from: tensor.data, count: tensor.count) }
                offset += tensor.count
            }
            try replicas.sumInRankOrder(base, count: buffer.count)
            offset = 0
            for tensor in tensors {
                let at = base + offset
                try tensor.device.run { tensor.data.update(from: at, count: tensor.count) }
                offset += tensor.count
            }
        }
    }

    /// The saved data position must lie in this run's data: an index within data.train, and (when
    /// the settings that decide the draws are unchanged) no more epochs than micro-batches drawn.
    func checkCursor(_ saved: TrainerState, file: String) throws {
        let count = dataset.examples.count
        guard saved.cursor.index <= count else {
            throw KDError("\(file): cursor.index \(saved.cursor.index) is past the end of data.train (\(count) records)")
        }
        var epochs = Int.max - 1
        if saved.configHash == configHash {
            let (draws, overflow) = saved.step.multipliedReportingOverflow(by: config.train.gradAccumSteps)
            if !overflow { epochs = min(epochs, draws) }
        }
        guard saved.cursor.epoch <= epochs else {
            throw KDError("\(file): cursor.epoch \(saved.cursor.epoch) is more epochs than step \(saved.step) can have drawn")
        }
    }
}

/// A step whose loss or gradient was NaN or infinite.
public struct NonFiniteStep: Error, CustomStringConvertible {
    public let step: Int
    public let what: String
    public var description: String { "step \(step): the \(what) is not finite" }
}
