import Foundation
import KDCore
import KDModels
import KDText

/// How many cores kd may use, and whether teacher and student compute side by side.
///
/// Concurrently, each side's BLAS calls get half the cores; in turn, every call gets all of them.
/// Side by side wins when the two sides have about the same work, because the teacher runs back
/// to back while the student finishes each batch (measured on 2 cores, Qwen3 1.7B→0.6B shapes,
/// work ratio 1.4: 103 vs 89 tokens/s). When one side has much more, half the cores would wait on
/// it (a 1-layer Qwen3-30B-A3B teacher beside a 4-layer Qwen3-8B student, ratio ~10: 219 s a step
/// side by side on 2 cores, against 121 s for PyTorch using both for everything). So `auto` runs
/// them concurrently from 2 threads up when the teacher's and the student's devices are disjoint
/// (a shared device thread would only interleave them) and neither side's FLOPs per token exceed
/// the other's `balancedRatio` times (`workRatio`).
public struct ComputeBudget: Sendable {
    public let threads: Int
    public let concurrent: Bool

    /// The largest work ratio at which `auto` runs the sides concurrently: with perfect scaling
    /// in turn is never slower, and side by side gains from the parts that do not scale (the
    /// loss, the norms, OpenBLAS's ~85% on 2 threads), which stop covering the imbalance near
    /// 1/(2·0.85)·(1 + r) = r, r ≈ 1.4.
    public static let balancedRatio = 1.5

    public init(threads: Int?, concurrency: Concurrency = .auto, disjointDevices: Bool = true, workRatio: Double = 1) {
        // Ranks of an MPI job on one host share its cores.
        let threads = max(1, threads ?? ProcessInfo.processInfo.activeProcessorCount / Communicator.world.ranksOnHost)
        self.threads = threads
        switch concurrency {
        case .auto: concurrent = threads >= 2 && disjointDevices && workRatio <= Self.balancedRatio
        case .on: concurrent = threads >= 2
        case .off: concurrent = false
        }
    }

    /// The budget of a run of these models: `run.threads` and `run.concurrency`, whether the models
    /// share a device, and how their work compares.
    public init(_ config: RunConfig, teacher: ModelSpec, student: ModelSpec) {
        self.init(threads: config.run.threads, concurrency: config.run.concurrency,
                  disjointDevices: Set(config.teacher.devices).isDisjoint(with: config.student.devices),
                  workRatio: Self.workRatio(teacher: teacher, student: student,
                                            checkpointing: config.train.activationCheckpointing))
    }

    /// The larger side's FLOPs per token over the smaller's: the teacher's forward (2 per active
    /// parameter) against the student's forward and its backward, which forms input gradients
    /// only (the weights are frozen; as much again), plus the layers' second forward under
    /// activation checkpointing.
    public static func workRatio(teacher: ModelSpec, student: ModelSpec, checkpointing: Bool) -> Double {
        let teacherWork = 2 * Double(teacher.activeParameterCount)
        let studentBody = Double(student.activeParameterCount - student.vocabSize * student.hiddenSize)
        let studentWork = 4 * Double(student.activeParameterCount) + (checkpointing ? 2 * studentBody : 0)
        return max(teacherWork, studentWork) / max(1, min(teacherWork, studentWork))
    }

    /// Threads of one BLAS call.
    public var blasThreads: Int { concurrent ? max(1, threads / 2) : threads }
}

/// `run.concurrency`: whether teacher and student compute at the same time.
public enum Concurrency: String, CaseIterable, Sendable { case auto, on, off }

/// The teacher's side of a batch, chunk by chunk: for a live teacher its forward pass, then its
/// logits for the scored positions, moved with `to()` onto the student's loss device (with a
/// concurrent budget on its own thread, one chunk ahead of the student, starting while the student
/// is still finishing the previous batch); for a cached teacher the batch's rows of the cache.
public final class TeacherStream: @unchecked Sendable {
    private let condition = NSCondition()
    private var ready: [Result<Chunk, Error>] = []
    private var cancelled = false
    private var produced = 0
    private let concurrent: Bool
    private let produce: (Int) throws -> Chunk
    private let chunkCount: Int
    /// Called once by `cancel` with the chunks delivered so far (a remote teacher's stream takes
    /// the rest off the wire).
    private let finish: ((Int) -> Void)?
    private var finished = false

    /// A chunk of the teacher's side, with the seconds the teacher spent on it, by phase
    /// (`teacher_forward` with the first chunk, `teacher_head`; nothing for a cache), and the
    /// bytes it moved between devices for it (its forward's share with the first chunk).
    struct Chunk {
        enum Targets {
            /// Logits [rows, teacher vocab] on the student's loss device.
            case logits(Tensor)
            /// The cache's top-K rows.
            case topK(TopKRows)
        }
        let targets: Targets
        let seconds: Double
        var phases: [String: Double] = [:]
        let movedBytes: Int
    }

    private init(chunkCount: Int, concurrent: Bool, finish: ((Int) -> Void)? = nil, produce: @escaping (Int) throws -> Chunk) {
        self.concurrent = concurrent && chunkCount > 0
        self.produce = produce
        self.chunkCount = chunkCount
        self.finish = finish
        if self.concurrent {
            DispatchQueue.global().async { [self] in
                for index in 0..<chunkCount {
                    condition.lock()
                    while !ready.isEmpty && !cancelled { condition.wait() }
                    let stop = cancelled
                    condition.unlock()
                    if stop { return }
                    let result = Result { try produce(index) }
                    condition.withLock {
                        ready.append(result)
                        condition.broadcast()
                    }
                    if case .failure = result { return }
                }
            }
        }
    }

    static func ranges(_ rows: Int, _ chunkTokens: Int) -> [Range<Int>] {
        stride(from: 0, to: rows, by: chunkTokens).map { $0..<min(rows, $0 + chunkTokens) }
    }

    /// A live teacher's forward over `tokens` and its logits at `rows`, delivered to `target`.
    static func live(teacher: CausalLM, tokens: TokenBatch, rows: [Int], chunkTokens: Int, target: Device,
                     concurrent: Bool) -> TeacherStream {
        let chunks = ranges(rows.count, chunkTokens)
        var hidden: Tensor?
        return TeacherStream(chunkCount: chunks.count, concurrent: concurrent) { index in
            let start = ContinuousClock.now
            let movedBefore = teacher.movedBytes
            var phases: [String: Double] = [:]
            if hidden == nil {
                hidden = try teacher.hiddenStates(tokens)
                phases["teacher_forward"] = (ContinuousClock.now - start).seconds
            }
            let headStart = ContinuousClock.now
            let range = chunks[index]
            let logits = try projectRows(hidden!, rows: rows[range], vocab: teacher.spec.vocabSize, through: teacher.project)
            phases["teacher_head"] = (ContinuousClock.now - headStart).seconds
            let moved = try logits.to(target)
            return Chunk(targets: .logits(moved), seconds: (ContinuousClock.now - start).seconds, phases: phases,
                         movedBytes: teacher.movedBytes - movedBefore + (target === logits.device ? 0 : logits.byteCount))
        }
    }

    /// A teacher on another rank: the batch goes to it now, its chunks arrive on `target` one by one.
    static func remote(_ teacher: RemoteTeacher, tokens: TokenBatch, rows: [Int], chunkTokens: Int, target: Device) -> TeacherStream {
        let chunks = ranges(rows.count, chunkTokens)
        let sent = Result { try teacher.request(tokens, rows: rows, chunkTokens: chunkTokens) }
        let receive = { (index: Int) throws -> Chunk in
            try sent.get()
            return try teacher.receiveChunk(rows: chunks[index].count, on: target)
        }
        return TeacherStream(chunkCount: chunks.count, concurrent: false, finish: { delivered in
            guard case .success = sent else { return }
            for index in delivered..<chunks.count { _ = try? receive(index) }
        }, produce: receive)
    }

    /// The cached rows of the examples at `lines` of `split`, `rowCount` of them.
    static func cached(_ cache: TeacherCache, split: String, lines: [Int], rowCount: Int, chunkTokens: Int) -> TeacherStream {
        let chunks = ranges(rowCount, chunkTokens)
        var all: TopKRows?
        return TeacherStream(chunkCount: chunks.count, concurrent: false) { index in
            let start = ContinuousClock.now
            if all == nil {
                all = try cache.rows(split: split, lines: lines)
                guard all!.count == rowCount else {
                    throw KDError("data.teacher_cache \(cache.directory): \(all!.count) cached rows for a batch that scores \(rowCount)")
                }
            }
            return Chunk(targets: .topK(all!.rows(chunks[index])), seconds: (ContinuousClock.now - start).seconds, movedBytes: 0)
        }
    }

    /// The next chunk.
    func next() throws -> Chunk {
        if !concurrent {
            defer { produced += 1 }
            return try produce(produced)
        }
        condition.lock()
        defer { condition.unlock() }
        while ready.isEmpty { condition.wait() }
        let result = ready.removeFirst()
        condition.broadcast()
        return try result.get()
    }

    /// Stops producing (the student side failed, or the prefetched batch is not needed).
    public func cancel() {
        let delivered: Int? = condition.withLock {
            cancelled = true
            condition.broadcast()
            if finished { return nil }
            finished = true
            return produced
        }
        if let delivered, let finish, delivered < chunkCount { finish(delivered) }
    }
}

/// Where a pass's teacher side comes from: the teacher model, run live, or a split of an offline
/// cache of its top-K logits.
public enum TeacherSource {
    case live(CausalLM)
    case cached(TeacherCache, split: String)
    /// The teacher on another rank of the job.
    case remote(RemoteTeacher)
}

/// One teacher-and-student pass over a batch: both forwards (concurrently when cores allow), the
/// fused chunked loss over the scored positions, and, in training, the student's backward.
///
/// Only scored positions (those whose next label is not -100) get logits. For each chunk of them
/// the teacher's logits (or, from a cache, its top-K rows: `DistillationLoss.cachedChunk`) are
/// computed on its last device and moved with `to()` to the student's
/// last device, where the student's logits, the loss and d(logits) are formed and d(hidden) is
/// accumulated through the output projection. Memory for the loss is O(chunk × vocab).
public struct DistillationPass {
    public let teacher: TeacherSource
    public let student: CausalLM
    public let alpha: Float
    public let temperature: Float
    public let divergence: DistillationLoss.Divergence
    public let chunkTokens: Int
    public let vocab: Int
    public let budget: ComputeBudget

    public struct Result: Sendable {
        public var totals = DistillationLoss.Totals()
        public var teacherSeconds = 0.0
        /// The teacher's seconds by phase (`teacher_forward`, `teacher_head`), for this batch
        /// wherever and whenever they ran (a prefetch included).
        public var teacherPhases: [String: Double] = [:]
        public var studentSeconds = 0.0
        /// Bytes both models copied between devices for this batch (teacher logits included).
        public var transferBytes = 0
    }

    public init(teacher: TeacherSource, student: CausalLM, alpha: Float, temperature: Float,
                divergence: DistillationLoss.Divergence = .forwardKL, chunkTokens: Int, vocab: Int, budget: ComputeBudget) {
        self.teacher = teacher
        self.student = student
        self.alpha = alpha
        self.temperature = temperature
        self.divergence = divergence
        self.chunkTokens = chunkTokens
        self.vocab = vocab
        self.budget = budget
        BLAS.threads = budget.blasThreads
    }

    /// The scored positions of a batch: flat row index t (predicting labels[t+1]) and that label.
    public static func scoredPositions(_ batch: PaddedBatch) -> (rows: [Int], labels: [Int32]) {
        var rows: [Int] = [], labels: [Int32] = []
        for b in 0..<batch.batchSize {
            for t in 0..<max(0, batch.length - 1) {
                let label = batch.labels[b * batch.length + t + 1]
                if label != Example.ignored {
                    rows.append(b * batch.length + t)
                    labels.append(Int32(label))
                }
            }
        }
        return (rows, labels)
    }

    static func tokens(_ batch: PaddedBatch) -> TokenBatch {
        TokenBatch(batchSize: batch.batchSize, sequenceLength: batch.length, inputIDs: batch.inputIDs.map { Int32($0) },
                   attentionMask: batch.attentionMask)
    }

    /// Starts the teacher's side of `batch` (on another thread when the budget is concurrent).
    public func startTeacher(_ batch: PaddedBatch) -> TeacherStream {
        let rows = DistillationPass.scoredPositions(batch).rows
        switch teacher {
        case .live(let model):
            return .live(teacher: model, tokens: DistillationPass.tokens(batch), rows: rows, chunkTokens: chunkTokens,
                         target: student.lastDevice, concurrent: budget.concurrent)
        case .cached(let cache, let split):
            return .cached(cache, split: split, lines: batch.lines, rowCount: rows.count, chunkTokens: chunkTokens)
        case .remote(let teacher):
            return .remote(teacher, tokens: DistillationPass.tokens(batch), rows: rows, chunkTokens: chunkTokens,
                           target: student.lastDevice)
        }
    }

    /// This pass with its cached teacher reading `split` (a live teacher is unchanged).
    public func reading(split: String) -> DistillationPass {
        guard case .cached(let cache, _) = teacher else { return self }
        return DistillationPass(teacher: .cached(cache, split: split), student: student, alpha: alpha, temperature: temperature,
                                divergence: divergence, chunkTokens: chunkTokens, vocab: vocab, budget: budget)
    }

    /// Runs the pass. With `gradientScale` (1/N of the optimizer step), the student is trained:
    /// its adapters' gradients accumulate. Without `crossEntropy` the loss is the divergence term
    /// alone (on-policy batches, whose labels the student sampled). `teacherStream` is the batch's teacher side if it was
    /// started earlier; `teacherDone` runs once its last chunk has arrived, so the next batch's
    /// teacher can start while the student finishes this one.
    public func run(_ batch: PaddedBatch, gradientScale: Float?, crossEntropy: Bool = true, teacherStream: TeacherStream? = nil,
                    teacherDone: () -> Void = {}) throws -> Result {
        let training = gradientScale != nil
        if let bad = batch.labels.first(where: { $0 != Example.ignored && ($0 < 0 || $0 >= vocab) }) {
            teacherStream?.cancel()
            throw KDError("label \(bad) is outside the shared vocabulary (\(vocab))")
        }
        let (rows, labels) = DistillationPass.scoredPositions(batch)
        let stream = teacherStream ?? startTeacher(batch)
        defer { stream.cancel() }
        var result = Result()
        let studentMovedBefore = student.movedBytes
        let studentStart = ContinuousClock.now
        let studentHidden = try student.hiddenStates(DistillationPass.tokens(batch), training: training)
        result.studentSeconds += (ContinuousClock.now - studentStart).seconds

        let studentDevice = student.lastDevice
        let dHidden: Tensor? = training ? try Tensor.zeros(studentHidden.shape, on: studentDevice) : nil
        let settings = DistillationLoss.Settings(
            alpha: alpha, temperature: temperature, gradientScale: gradientScale ?? 0, stride: student.spec.vocabSize,
            vocab: vocab, divergence: divergence, crossEntropy: crossEntropy)
        let hiddenSize = student.spec.hiddenSize, studentVocab = student.spec.vocabSize
        for start in stride(from: 0, to: rows.count, by: chunkTokens) {
            let range = start..<min(rows.count, start + chunkTokens)
            // The student's logits first: when concurrent, they are computed while the teacher's arrive.
            var chunkStart = ContinuousClock.now
            let logits = try projectRows(studentHidden, rows: rows[range], vocab: studentVocab, through: student.project)
            result.studentSeconds += (ContinuousClock.now - chunkStart).seconds
            let teacherChunk = try stream.next()
            result.teacherSeconds += teacherChunk.seconds
            result.teacherPhases.merge(teacherChunk.phases, uniquingKeysWith: +)
            result.transferBytes += teacherChunk.movedBytes
            if range.upperBound == rows.count { teacherDone() }
            chunkStart = ContinuousClock.now
            let totals = try studentDevice.run { [budget, student] in
                let totals = student.timed("loss") {
                    switch teacherChunk.targets {
                    case .logits(let teacherLogits):
                        DistillationLoss.chunk(
                            teacher: teacherLogits.data, teacherStride: teacherLogits.shape[1], student: logits.data,
                            labels: Array(labels[range]), settings: settings, gradient: training, threads: budget.blasThreads)
                    case .topK(let targets):
                        DistillationLoss.cachedChunk(
                            targets: targets, student: logits.data, labels: Array(labels[range]), settings: settings,
                            gradient: training, threads: budget.blasThreads)
                    }
                }
                if let dHidden {
                    // d(hidden rows) = d(logits)·W_head, scattered back to their positions.
                    let dRows = try Tensor(uninitializedShape: [range.count, hiddenSize], on: studentDevice)
                    try student.projectBackward(logits.data, rows: range.count, into: dRows.data)
                    for (i, row) in rows[range].enumerated() {
                        Kernels.add(dRows.data + i * hiddenSize, into: dHidden.data + row * hiddenSize, count: hiddenSize)
                    }
                }
                return totals
            }
            result.studentSeconds += (ContinuousClock.now - chunkStart).seconds
            result.totals.add(totals)
        }
        if rows.isEmpty { teacherDone() }
        if let dHidden {
            let start = ContinuousClock.now
            try student.backward(dHidden)
            result.studentSeconds += (ContinuousClock.now - start).seconds
        }
        result.transferBytes += student.movedBytes - studentMovedBefore
        return result
    }
}

/// The logits [rows.count, vocab] of rows `rows` of `hidden` [n, hidden], through an output
/// projection (`CausalLM.project`, `ModelPart.project`), on the hidden states' device.
func projectRows(_ hidden: Tensor, rows: ArraySlice<Int>, vocab: Int,
                 through project: @escaping (UnsafePointer<Float>, Int, UnsafeMutablePointer<Float>) throws -> Void) throws -> Tensor {
    let device = hidden.device
    return try device.run {
        let gathered = try gather(hidden, rows: rows)
        let logits = try Tensor(uninitializedShape: [rows.count, vocab], on: device)
        try project(gathered.data, rows.count, logits.data)
        return logits
    }
}

/// Rows `rows` of a [n, width] tensor, gathered into a new [rows.count, width] tensor on its device.
func gather(_ tensor: Tensor, rows: ArraySlice<Int>) throws -> Tensor {
    let width = tensor.shape[1]
    let out = try Tensor(uninitializedShape: [rows.count, width], on: tensor.device)
    for (i, row) in rows.enumerated() {
        (out.data + i * width).update(from: tensor.data + row * width, count: width)
    }
    return out
}
