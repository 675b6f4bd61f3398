import Foundation
import KDCore

/// Qwen3 self-attention: q/k/v projections, RMSNorm of each query and key head (before the
/// rotary embedding), half-split RoPE, grouped-query causal attention with a key-padding mask,
/// and the output projection.
public final class Attention {
    public let qProj, kProj, vProj, oProj: Linear
    public let qNorm, kNorm: Tensor
    public let heads, kvHeads, headDim: Int
    public let eps: Float

    public init(
        qProj: Linear, kProj: Linear, vProj: Linear, oProj: Linear, qNorm: Tensor, kNorm: Tensor,
        heads: Int, kvHeads: Int, headDim: Int, eps: Float
    ) {
        (self.qProj, self.kProj, self.vProj, self.oProj) = (qProj, kProj, vProj, oProj)
        (self.qNorm, self.kNorm) = (qNorm, kNorm)
        (self.heads, self.kvHeads, self.headDim, self.eps) = (heads, kvHeads, headDim, eps)
    }

    public var linears: [Linear] { [qProj, kProj, vProj, oProj] }

    /// x: the normed hidden states [rows, hidden]; returns the attention output [rows, hidden].
    public func forward(_ x: Tensor, context: ForwardContext) throws -> Tensor {
        let rows = context.rows
        let q = try qProj.forward(x, rows: rows)
        let k = try kProj.forward(x, rows: rows)
        let v = try vProj.forward(x, rows: rows)
        // Per-head RMSNorm in place: each head is a row of headDim values.
        Kernels.rmsNorm(q.data, weight: qNorm.data, rows: rows * heads, cols: headDim, eps: eps, into: q.data)
        Kernels.rmsNorm(k.data, weight: kNorm.data, rows: rows * kvHeads, cols: headDim, eps: eps, into: k.data)
        context.cos.withUnsafeBufferPointer { cos in
            context.sin.withUnsafeBufferPointer { sin in
                Kernels.rope(q.data, rows: rows, heads: heads, headDim: headDim, stride: heads * headDim,
                             cos: cos.baseAddress!, sin: sin.baseAddress!)
                Kernels.rope(k.data, rows: rows, heads: kvHeads, headDim: headDim, stride: kvHeads * headDim,
                             cos: cos.baseAddress!, sin: sin.baseAddress!)
            }
        }
        let attended = try Tensor(uninitializedShape: [rows, heads * headDim], on: x.device)
        try attend(q: q, k: k, v: v, into: attended, context: context)
        return try oProj.forward(attended, rows: rows)
    }

    /// Causal grouped-query attention, one (batch row, head) at a time through sgemm:
    /// scores = q·kᵀ/√d over keys j ≤ i that are not padding, softmax, then · v.
    func attend(q: Tensor, k: Tensor, v: Tensor, into out: Tensor, context: ForwardContext) throws {
        let seq = context.sequenceLength
        let qStride = heads * headDim, kvStride = kvHeads * headDim
        let group = heads / kvHeads
        let scale = 1 / Float(headDim).squareRoot()
        let scores = try Tensor(uninitializedShape: [seq, seq], on: q.device)
        let s = scores.data
        context.keyMask.withUnsafeBufferPointer { keyMask in
          for b in 0..<context.batchSize {
            let mask = keyMask.baseAddress! + b * seq
            for h in 0..<heads {
                let kvHead = h / group
                let qBase = q.data + b * seq * qStride + h * headDim
                let kBase = k.data + b * seq * kvStride + kvHead * headDim
                let vBase = v.data + b * seq * kvStride + kvHead * headDim
                BLAS.gemm(transB: true, m: seq, n: seq, k: headDim, alpha: scale, a: qBase, lda: qStride,
                          b: kBase, ldb: kvStride, c: s, ldc: seq)
                for i in 0..<seq {
                    let row = s + i * seq
                    var visible = 0
                    for j in 0...i {
                        if mask[j] == 0 { row[j] = -.infinity } else { visible += 1 }
                    }
                    if visible > 0 {
                        Kernels.softmax(row, count: i + 1)
                    } else {
                        (row).update(repeating: 0, count: i + 1)
                    }
                    (row + i + 1).update(repeating: 0, count: seq - i - 1)
                }
                BLAS.gemm(m: seq, n: headDim, k: seq, a: s, lda: seq, b: vBase, ldb: kvStride,
                          c: out.data + b * seq * qStride + h * headDim, ldc: qStride)
            }
          }
        }
    }
}
