import Foundation
import KDCore

/// A LoRA adapter on one linear layer: `Δy = s · B·(A·dropout(x))`, A [r, in], B [out, r].
/// Only A and B train; their gradients accumulate in `gradA` / `gradB` across backward calls.
public final class LoRAAdapter {
    public let a: Tensor
    public let b: Tensor
    public let scale: Float
    public let dropout: Float
    public var gradA: Tensor?
    public var gradB: Tensor?
    /// Draws the dropout keep-mask for one forward pass (set by the trainer; nil = no dropout).
    public var dropoutMask: ((_ count: Int) -> [Float])?

    /// What forward keeps for backward: the (dropped-out) input and its projection A·x.
    var savedInput: Tensor?
    var savedProjection: Tensor?

    public var rank: Int { a.shape[0] }

    public init(a: Tensor, b: Tensor, scale: Float, dropout: Float = 0) {
        self.a = a
        self.b = b
        self.scale = scale
        self.dropout = dropout
    }

    func forward(_ x: Tensor, rows: Int, accumulateInto y: Tensor, saving: Bool) throws {
        let inFeatures = a.shape[1], outFeatures = b.shape[0]
        var input = x
        if dropout > 0, let dropoutMask {
            input = try Tensor(uninitializedShape: [rows, inFeatures], on: a.device)
            let mask = dropoutMask(rows * inFeatures)
            let keep = 1 / (1 - dropout)
            for i in 0..<(rows * inFeatures) { input.data[i] = x.data[i] * mask[i] * keep }
        }
        let projection = try Tensor(uninitializedShape: [rows, rank], on: a.device)
        BLAS.linear(input.data, rows: rows, inFeatures: inFeatures, weight: a.data, outFeatures: rank, into: projection.data)
        BLAS.linear(
            projection.data, rows: rows, inFeatures: rank, weight: b.data, outFeatures: outFeatures, into: y.data,
            accumulate: true, scale: scale)
        if saving {
            savedInput = input
            savedProjection = projection
        }
    }
}
