import Foundation
import KDCore

/// Qwen3 self-attention: q/k/v projections, RMSNorm of each query and key head (before the
/// rotary embedding), half-split RoPE, grouped-query causal attention with a key-padding mask,
/// and the output projection.
///
/// Training keeps the projections before and after norm + rope and the attention output; the
/// attention probabilities are recomputed in backward rather than stored (S² per head).
public final class Attention {
    public let qProj, kProj, vProj, oProj: Linear
    public let qNorm, kNorm: Tensor
    public let heads, kvHeads, headDim: Int
    public let eps: Float

    struct Saved {
        let qRaw, kRaw: Tensor  // projections before the head norms
        let qInverseRMS, kInverseRMS: Tensor  // [rows·heads], [rows·kvHeads]
        let q, k, v: Tensor  // after norm and rope: what attention consumed
        let attended: Tensor  // attention output before o_proj
    }
    private var saved: Saved?

    public init(
        qProj: Linear, kProj: Linear, vProj: Linear, oProj: Linear, qNorm: Tensor, kNorm: Tensor,
        heads: Int, kvHeads: Int, headDim: Int, eps: Float
    ) {
        (self.qProj, self.kProj, self.vProj, self.oProj) = (qProj, kProj, vProj, oProj)
        (self.qNorm, self.kNorm) = (qNorm, kNorm)
        (self.heads, self.kvHeads, self.headDim, self.eps) = (heads, kvHeads, headDim, eps)
    }

    public var linears: [Linear] { [qProj, kProj, vProj, oProj] }

    /// The q, k and v projections [rows, heads·headDim] and [rows, kvHeads·headDim], adapters
    /// included: three of the block's four products, which a layer may keep across a checkpointed
    /// forward (`DecoderLayer.Keep.inputAndProducts`).
    public struct Projections {
        let q, k, v: Tensor
    }

    /// x: the normed hidden states [rows, hidden]; returns the attention output [rows, hidden].
    public func forward(_ x: Tensor, context: ForwardContext, training: Bool = false) throws -> Tensor {
        let rows = context.rows
        let qRaw = try qProj.forward(x, rows: rows, training: training)
        let kRaw = try kProj.forward(x, rows: rows, training: training)
        let v = try vProj.forward(x, rows: rows, training: training)
        let attended = try attend(Projections(q: qRaw, k: kRaw, v: v), context: context, training: training)
        return try oProj.forward(attended, rows: rows, training: training)
    }

    /// The head norms, rope and attention over `projections`; returns the attention output before
    /// o_proj. In training keeps what backward reads, the raw projections unchanged.
    private func attend(_ projections: Projections, context: ForwardContext, training: Bool) throws -> Tensor {
        let rows = context.rows, device = projections.q.device
        let (qRaw, kRaw, v) = (projections.q, projections.k, projections.v)
        let q = training ? try Tensor(uninitializedShape: qRaw.shape, on: device) : qRaw
        let k = training ? try Tensor(uninitializedShape: kRaw.shape, on: device) : kRaw
        let qInverseRMS = try Tensor(uninitializedShape: [rows * heads], on: device)
        let kInverseRMS = try Tensor(uninitializedShape: [rows * kvHeads], on: device)
        // Per-head RMSNorm: each head is a row of headDim values.
        Kernels.rmsNorm(qRaw.data, weight: qNorm.data, rows: rows * heads, cols: headDim, eps: eps, into: q.data,
                        inverseRMS: qInverseRMS.data)
        Kernels.rmsNorm(kRaw.data, weight: kNorm.data, rows: rows * kvHeads, cols: headDim, eps: eps, into: k.data,
                        inverseRMS: kInverseRMS.data)
        rotate(q, heads: heads, context: context, inverse: false)
        rotate(k, heads: kvHeads, context: context, inverse: false)
        let attended = try Tensor(uninitializedShape: [rows, heads * headDim], on: device)
        try attend(q: q, k: k, v: v, into: attended, context: context)
        if training {
            saved = Saved(qRaw: qRaw, kRaw: kRaw, qInverseRMS: qInverseRMS, kInverseRMS: kInverseRMS, q: q, k: k, v: v,
                          attended: attended)
        }
        return attended
    }

    /// Takes q, k and v of the last training forward and drops the rest it kept (the adapters'
    /// included), for a layer that keeps them across a checkpointed forward.
    public func takeProjections() -> Projections? {
        defer { clearSaved() }
        return saved.map { Projections(q: $0.qRaw, k: $0.kRaw, v: $0.v) }
    }

    /// Recomputes what a training forward over `x` keeps for `backward` from the kept `projections`,
    /// without their products or o_proj's (the output is not read): the adapters' A·x̃, the head
    /// norms, rope and attention, and o_proj's adapter input. The same values bit for bit.
    public func prepareBackward(_ x: Tensor, context: ForwardContext, projections: Projections) throws {
        let rows = context.rows
        for linear in [qProj, kProj, vProj] { try linear.keepForBackward(x, rows: rows) }
        let attended = try attend(projections, context: context, training: true)
        try oProj.keepForBackward(attended, rows: rows)
    }

    /// Drops what a training forward kept, the adapters' included (the layer keeps only its input).
    public func clearSaved() {
        saved = nil
        for linear in linears { linear.adapter?.clearSaved() }
    }

    func rotate(_ x: Tensor, heads: Int, context: ForwardContext, inverse: Bool) {
        context.cos.withUnsafeBufferPointer { cos in
            context.sin.withUnsafeBufferPointer { sin in
                Kernels.rope(x.data, rows: context.rows, heads: heads, headDim: headDim, stride: heads * headDim,
                             cos: cos.baseAddress!, sin: sin.baseAddress!, inverse: inverse)
            }
        }
    }

    /// The pointers of one (batch row, head) block and its kv head within [rows, heads·headDim] buffers.
    private struct Block {
        let q, k, v, out: Int  // element offsets
    }

    private func block(batch b: Int, head h: Int, sequence: Int) -> Block {
        let kvHead = h / (heads / kvHeads)
        return Block(q: b * sequence * heads * headDim + h * headDim,
                     k: b * sequence * kvHeads * headDim + kvHead * headDim,
                     v: b * sequence * kvHeads * headDim + kvHead * headDim,
                     out: b * sequence * heads * headDim + h * headDim)
    }

    /// Scores q·kᵀ/√d of one block into `scores` [seq, seq], then the causal, key-masked softmax
    /// row by row (entries after the diagonal are zero).
    private func probabilities(q: UnsafePointer<Float>, k: UnsafePointer<Float>, mask: UnsafePointer<UInt8>,
                               sequence seq: Int, into scores: UnsafeMutablePointer<Float>) {
        BLAS.gemm(transB: true, m: seq, n: seq, k: headDim, alpha: 1 / Float(headDim).squareRoot(), a: q,
                  lda: heads * headDim, b: k, ldb: kvHeads * headDim, c: scores, ldc: seq)
        for i in 0..<seq {
            let row = scores + i * seq
            var visible = 0
            for j in 0...i {
                if mask[j] == 0 { row[j] = -.infinity } else { visible += 1 }
            }
            if visible > 0 {
                Kernels.softmax(row, count: i + 1)
            } else {
                row.update(repeating: 0, count: i + 1)
            }
            (row + i + 1).update(repeating: 0, count: seq - i - 1)
        }
    }

    /// Causal grouped-query attention, one (batch row, head) at a time through sgemm.
    func attend(q: Tensor, k: Tensor, v: Tensor, into out: Tensor, context: ForwardContext) throws {
        let seq = context.sequenceLength
        let scores = try Tensor(uninitializedShape: [seq, seq], on: q.device)
        context.keyMask.withUnsafeBufferPointer { keyMask in
            for b in 0..<context.batchSize {
                for h in 0..<heads {
                    let p = block(batch: b, head: h, sequence: seq)
                    probabilities(q: q.data + p.q, k: k.data + p.k, mask: keyMask.baseAddress! + b * seq,
                                  sequence: seq, into: scores.data)
                    BLAS.gemm(m: seq, n: headDim, k: seq, a: scores.data, lda: seq, b: v.data + p.v,
                              ldb: kvHeads * headDim, c: out.data + p.out, ldc: heads * headDim)
                }
            }
        }
    }

    /// Given d(output) [rows, hidden], returns d(input) [rows, hidden] (unless `inputGradient` is
    /// false: nothing before this layer trains) and accumulates the adapters' gradients.
    @discardableResult
    public func backward(_ dOut: Tensor, context: ForwardContext, inputGradient: Bool = true) throws -> Tensor? {
        guard let saved else { throw KDError("attention backward without a training forward pass") }
        self.saved = nil
        let rows = context.rows, seq = context.sequenceLength, device = dOut.device
        let qStride = heads * headDim, kvStride = kvHeads * headDim
        let dAttended = try Tensor(uninitializedShape: [rows, qStride], on: device)
        try oProj.backward(dOut, rows: rows, into: dAttended, accumulate: false)

        let dq = try Tensor(uninitializedShape: [rows, qStride], on: device)
        let dk = try Tensor.zeros([rows, kvStride], on: device)
        let dv = try Tensor.zeros([rows, kvStride], on: device)
        let p = try Tensor(uninitializedShape: [seq, seq], on: device)
        let dp = try Tensor(uninitializedShape: [seq, seq], on: device)
        let scale = 1 / Float(headDim).squareRoot()
        context.keyMask.withUnsafeBufferPointer { keyMask in
            for b in 0..<context.batchSize {
                for h in 0..<heads {
                    let o = block(batch: b, head: h, sequence: seq)
                    probabilities(q: saved.q.data + o.q, k: saved.k.data + o.k, mask: keyMask.baseAddress! + b * seq,
                                  sequence: seq, into: p.data)
                    // dV += Pᵀ·dO; dP = dO·Vᵀ
                    BLAS.gemm(transA: true, m: seq, n: headDim, k: seq, a: p.data, lda: seq,
                              b: dAttended.data + o.out, ldb: qStride, beta: 1, c: dv.data + o.v, ldc: kvStride)
                    BLAS.gemm(transB: true, m: seq, n: seq, k: headDim, a: dAttended.data + o.out, lda: qStride,
                              b: saved.v.data + o.v, ldb: kvStride, c: dp.data, ldc: seq)
                    // dS = P ⊙ (dP − rowsum(P ⊙ dP)), in place over dP.
                    for i in 0..<seq {
                        let pr = p.data + i * seq, dr = dp.data + i * seq
                        let d = Kernels.dot(pr, dr, count: i + 1)
                        for j in 0...i { dr[j] = pr[j] * (dr[j] - d) }
                        (dr + i + 1).update(repeating: 0, count: seq - i - 1)
                    }
                    // dQ = dS·K/√d; dK += dSᵀ·Q/√d
                    BLAS.gemm(m: seq, n: headDim, k: seq, alpha: scale, a: dp.data, lda: seq, b: saved.k.data + o.k,
                              ldb: kvStride, c: dq.data + o.q, ldc: qStride)
                    BLAS.gemm(transA: true, m: seq, n: headDim, k: seq, alpha: scale, a: dp.data, lda: seq,
                              b: saved.q.data + o.q, ldb: qStride, beta: 1, c: dk.data + o.k, ldc: kvStride)
                }
            }
        }
        // Undo the rotation (it is orthogonal), then the head norms.
        rotate(dq, heads: heads, context: context, inverse: true)
        rotate(dk, heads: kvHeads, context: context, inverse: true)
        Kernels.rmsNormBackward(dq.data, x: saved.qRaw.data, weight: qNorm.data, inverseRMS: saved.qInverseRMS.data,
                                rows: rows * heads, cols: headDim, into: dq.data, accumulate: false)
        Kernels.rmsNormBackward(dk.data, x: saved.kRaw.data, weight: kNorm.data, inverseRMS: saved.kInverseRMS.data,
                                rows: rows * kvHeads, cols: headDim, into: dk.data, accumulate: false)
        let dx = inputGradient ? try Tensor(uninitializedShape: [rows, qProj.inFeatures], on: device) : nil
        try qProj.backward(dq, rows: rows, into: dx, accumulate: false)
        try kProj.backward(dk, rows: rows, into: dx, accumulate: true)
        try vProj.backward(dv, rows: rows, into: dx, accumulate: true)
        return dx
    }
}
