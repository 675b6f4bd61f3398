import Foundation
import KDCore
import KDModels
import KDText

/// How many cores kd may use, and how they are split while teacher and student run side by side.
public struct ComputeBudget: Sendable {
    public let threads: Int

    public init(threads: Int?) {
        self.threads = max(1, threads ?? ProcessInfo.processInfo.activeProcessorCount)
    }

    /// Teacher and student work concurrently only when there is more than one core.
    public var concurrent: Bool { threads > 1 }
    /// BLAS threads per call while two models compute at once.
    public var sharedThreads: Int { max(1, threads / 2) }

    /// Runs `body` with BLAS using `count` threads, restoring the full budget after. Only called
    /// between phases, when no BLAS call is in flight on another thread.
    public func with<T>(blasThreads count: Int, _ body: () throws -> T) rethrows -> T {
        BLAS.threads = count
        defer { BLAS.threads = threads }
        return try body()
    }
}

/// A value computed on another thread, waited for once.
final class Pending<T>: @unchecked Sendable {
    private let done = DispatchSemaphore(value: 0)
    private var result: Result<T, Error>?

    init(concurrent: Bool, _ body: @escaping () throws -> T) {
        if concurrent {
            DispatchQueue.global().async { [self] in
                result = Result { try body() }
                done.signal()
            }
        } else {
            result = Result { try body() }
            done.signal()
        }
    }

    func wait() throws -> T {
        done.wait()
        done.signal()
        return try result!.get()
    }
}

/// One teacher-and-student pass over a batch: both forwards (concurrently when cores allow), the
/// fused chunked loss over the scored positions, and, in training, the student's backward.
///
/// Only scored positions (those whose next label is not -100) get logits. For each chunk of them
/// the teacher's logits are computed on its last device and moved with `to()` to the student's
/// last device, where the student's logits, the loss and d(logits) are formed and d(hidden) is
/// accumulated through the output projection. Memory for the loss is O(chunk × vocab).
public struct DistillationPass {
    public let teacher: CausalLM
    public let student: CausalLM
    public let alpha: Float
    public let temperature: Float
    public let chunkTokens: Int
    public let vocab: Int
    public let budget: ComputeBudget

    public struct Result: Sendable {
        public var totals = DistillationLoss.Totals()
        public var teacherSeconds = 0.0
        public var studentSeconds = 0.0
    }

    public init(teacher: CausalLM, student: CausalLM, alpha: Float, temperature: Float, chunkTokens: Int,
                vocab: Int, budget: ComputeBudget) {
        self.teacher = teacher
        self.student = student
        self.alpha = alpha
        self.temperature = temperature
        self.chunkTokens = chunkTokens
        self.vocab = vocab
        self.budget = budget
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

    /// Runs the pass. With `gradientScale` (1/N of the optimizer step), the student is trained:
    /// its adapters' gradients accumulate.
    public func run(_ batch: PaddedBatch, gradientScale: Float?) throws -> Result {
        let training = gradientScale != nil
        let tokens = TokenBatch(batchSize: batch.batchSize, sequenceLength: batch.length,
                                inputIDs: batch.inputIDs.map { Int32($0) }, attentionMask: batch.attentionMask)
        if let bad = batch.labels.first(where: { $0 != Example.ignored && ($0 < 0 || $0 >= vocab) }) {
            throw KDError("label \(bad) is outside the shared vocabulary (\(vocab))")
        }
        let (rows, labels) = DistillationPass.scoredPositions(batch)
        var result = Result()
        let shared = budget.concurrent ? budget.sharedThreads : budget.threads
        // Forwards: the teacher on another thread while the student runs here.
        let (teacherHidden, studentHidden) = try budget.with(blasThreads: shared) { () -> (Tensor, Tensor) in
            let teacherStart = ContinuousClock.now
            let pendingTeacher = Pending(concurrent: budget.concurrent) { [teacher] in
                let hidden = try teacher.hiddenStates(tokens)
                return (hidden, (ContinuousClock.now - teacherStart).seconds)
            }
            let studentStart = ContinuousClock.now
            let studentHidden = try student.hiddenStates(tokens, training: training)
            result.studentSeconds += (ContinuousClock.now - studentStart).seconds
            let (teacherHidden, seconds) = try pendingTeacher.wait()
            result.teacherSeconds += seconds
            return (teacherHidden, studentHidden)
        }
        // The loss, chunk by chunk; the teacher's next chunk is computed while the student's runs.
        let studentDevice = student.lastDevice
        let dHidden: Tensor? = training ? try Tensor.zeros(studentHidden.shape, on: studentDevice) : nil
        let chunks = stride(from: 0, to: rows.count, by: chunkTokens).map { $0..<min(rows.count, $0 + chunkTokens) }
        let settings = DistillationLoss.Settings(
            alpha: alpha, temperature: temperature, gradientScale: gradientScale ?? 0, stride: student.spec.vocabSize,
            vocab: vocab)
        try budget.with(blasThreads: shared) {
            func teacherLogits(_ range: Range<Int>) -> Pending<(Tensor, Double)> {
                Pending(concurrent: budget.concurrent) { [teacher] in
                    let start = ContinuousClock.now
                    let logits = try teacher.lastDevice.run {
                        let hidden = try gather(teacherHidden, rows: rows[range])
                        let logits = try Tensor(uninitializedShape: [range.count, teacher.spec.vocabSize], on: teacher.lastDevice)
                        teacher.project(hidden.data, rows: range.count, into: logits.data)
                        return logits
                    }
                    return (try logits.to(studentDevice), (ContinuousClock.now - start).seconds)
                }
            }
            var pending = chunks.first.map(teacherLogits)
            for (index, range) in chunks.enumerated() {
                let (teacherChunk, teacherSeconds) = try pending!.wait()
                result.teacherSeconds += teacherSeconds
                pending = index + 1 < chunks.count ? teacherLogits(chunks[index + 1]) : nil
                let start = ContinuousClock.now
                let totals = try studentDevice.run { [student] in
                    let hidden = try gather(studentHidden, rows: rows[range])
                    let logits = try Tensor(uninitializedShape: [range.count, student.spec.vocabSize], on: studentDevice)
                    student.project(hidden.data, rows: range.count, into: logits.data)
                    let totals = DistillationLoss.chunk(
                        teacher: teacherChunk.data, teacherStride: teacher.spec.vocabSize, student: logits.data,
                        labels: Array(labels[range]), settings: settings, gradient: training, threads: shared)
                    if let dHidden {
                        // d(hidden rows) = d(logits)·W_head, scattered back to their positions.
                        let dRows = try Tensor(uninitializedShape: [range.count, student.spec.hiddenSize], on: studentDevice)
                        BLAS.gemm(m: range.count, n: student.spec.hiddenSize, k: student.spec.vocabSize, a: logits.data,
                                  lda: student.spec.vocabSize, b: student.lmHead.data, ldb: student.spec.hiddenSize,
                                  c: dRows.data, ldc: student.spec.hiddenSize)
                        let h = student.spec.hiddenSize
                        for (i, row) in rows[range].enumerated() {
                            Kernels.add(dRows.data + i * h, into: dHidden.data + row * h, count: h)
                        }
                    }
                    return totals
                }
                result.studentSeconds += (ContinuousClock.now - start).seconds
                result.totals.add(totals)
            }
        }
        if let dHidden {
            let start = ContinuousClock.now
            try student.backward(dHidden)
            result.studentSeconds += (ContinuousClock.now - start).seconds
        }
        return result
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
