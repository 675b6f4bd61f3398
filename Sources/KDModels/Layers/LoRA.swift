import Foundation
import KDCore

/// A LoRA adapter on one linear layer: `Δy = s · B·(A·dropout(x))`, A [r, in], B [out, r].
/// Only A and B train; `gradA` / `gradB` accumulate across backward calls until zeroed.
public final class LoRAAdapter {
    public let a: Tensor
    public let b: Tensor
    public let scale: Float
    public let dropout: Float
    public private(set) var gradA: Tensor?
    public private(set) var gradB: Tensor?
    /// PiSSA's initial A₀ and B₀ (the base weight holds W − s·B₀·A₀); saved adapters are
    /// converted to plain LoRA on the original W with them.
    public var initial: (a: Tensor, b: Tensor)?
    /// The dropout stream of the current forward pass: masks are drawn from it in forward and
    /// drawn again, identically, in backward (so they need not be stored).
    public var dropoutStream: RandomGenerator?

    /// What training forward keeps for backward: the (dropped-out) input and its projection A·x.
    private var savedInput: Tensor?
    private var savedProjection: Tensor?

    public var rank: Int { a.shape[0] }
    public var inFeatures: Int { a.shape[1] }
    public var outFeatures: Int { b.shape[0] }
    public var parameterCount: Int { a.count + b.count }

    public init(a: Tensor, b: Tensor, scale: Float, dropout: Float = 0) {
        self.a = a
        self.b = b
        self.scale = scale
        self.dropout = dropout
    }

    /// Allocates zeroed gradients (once) or zeroes them for a new optimizer step.
    public func zeroGradients() throws {
        if gradA == nil {
            gradA = try Tensor.zeros(a.shape, on: a.device)
            gradB = try Tensor.zeros(b.shape, on: b.device)
        } else {
            gradA!.data.update(repeating: 0, count: gradA!.count)
            gradB!.data.update(repeating: 0, count: gradB!.count)
        }
    }

    /// Releases what training forward kept (after backward, or when a pass is abandoned).
    public func clearSaved() {
        savedInput = nil
        savedProjection = nil
    }

    /// The keep-mask scaled by 1/(1−p), as torch's Dropout: each element kept with probability 1−p.
    private func fillDropoutMask(_ mask: UnsafeMutablePointer<Float>, count: Int, stream: RandomGenerator) {
        var rng = stream
        let keep = 1 / (1 - dropout)
        for i in 0..<count { mask[i] = rng.nextUniform() >= dropout ? keep : 0 }
    }

    func forward(_ x: Tensor, rows: Int, accumulateInto y: Tensor, training: Bool) throws {
        let (input, projection) = try project(x, rows: rows, training: training)
        BLAS.linear(projection.data, rows: rows, inFeatures: rank, weight: b.data, outFeatures: outFeatures, into: y.data,
                    accumulate: true, scale: scale)
        if training {
            savedInput = input
            savedProjection = projection
        }
    }

    /// Keeps what a training `forward` over `x` keeps for backward (x̃ and A·x̃, the dropout mask
    /// drawn again from the same stream) without forming Δy: a recompute whose output nothing reads.
    func keepForBackward(_ x: Tensor, rows: Int) throws {
        (savedInput, savedProjection) = try project(x, rows: rows, training: true)
    }

    /// x̃ = dropout(x) in training (x itself otherwise) and its projection A·x̃ [rows, r].
    private func project(_ x: Tensor, rows: Int, training: Bool) throws -> (input: Tensor, projection: Tensor) {
        var input = x
        if training && dropout > 0, let stream = dropoutStream {
            input = try Tensor(uninitializedShape: [rows, inFeatures], on: a.device)
            let masked = input.data, values = x.data
            fillDropoutMask(masked, count: rows * inFeatures, stream: stream)
            for i in 0..<(rows * inFeatures) { masked[i] *= values[i] }
        }
        let projection = try Tensor(uninitializedShape: [rows, rank], on: a.device)
        BLAS.linear(input.data, rows: rows, inFeatures: inFeatures, weight: a.data, outFeatures: rank, into: projection.data)
        return (input, projection)
    }

    /// gradB += s·dyᵀ·(A·x̃); gradA += (s·dy·B)ᵀ·x̃; dx += mask ⊙ (s·dy·B)·A (when dx is wanted).
    func backward(_ dy: Tensor, rows: Int, accumulateInto dx: Tensor?) throws {
        guard let input = savedInput, let projection = savedProjection, let gradA, let gradB else {
            throw KDError("LoRA backward without a training forward pass")
        }
        BLAS.gemm(transA: true, m: outFeatures, n: rank, k: rows, alpha: scale, a: dy.data, lda: outFeatures,
                  b: projection.data, ldb: rank, beta: 1, c: gradB.data, ldc: rank)
        let dProjection = try Tensor(uninitializedShape: [rows, rank], on: a.device)
        BLAS.gemm(m: rows, n: rank, k: outFeatures, alpha: scale, a: dy.data, lda: outFeatures, b: b.data, ldb: rank,
                  c: dProjection.data, ldc: rank)
        BLAS.gemm(transA: true, m: rank, n: inFeatures, k: rows, a: dProjection.data, lda: rank, b: input.data,
                  ldb: inFeatures, beta: 1, c: gradA.data, ldc: inFeatures)
        if let dx, dropout > 0, let stream = dropoutStream {
            let dInput = try Tensor(uninitializedShape: [rows, inFeatures], on: a.device)
            BLAS.gemm(m: rows, n: inFeatures, k: rank, a: dProjection.data, lda: rank, b: a.data, ldb: inFeatures,
                      c: dInput.data, ldc: inFeatures)
            let mask = try Tensor(uninitializedShape: [rows, inFeatures], on: a.device)
            let (out, d, kept) = (dx.data, dInput.data, mask.data)
            fillDropoutMask(kept, count: rows * inFeatures, stream: stream)
            for i in 0..<(rows * inFeatures) { out[i] += d[i] * kept[i] }
        } else if let dx {
            BLAS.gemm(m: rows, n: inFeatures, k: rank, a: dProjection.data, lda: rank, b: a.data, ldb: inFeatures,
                      beta: 1, c: dx.data, ldc: inFeatures)
        }
        clearSaved()
    }
}
