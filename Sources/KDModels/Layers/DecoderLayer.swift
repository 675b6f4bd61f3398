import KDCore

/// One pre-norm decoder layer: x + attn(norm(x)), then + ffn(norm(·)).
public final class DecoderLayer {
    public let index: Int
    public let inputNorm: Tensor
    public let attention: Attention
    public let postAttentionNorm: Tensor
    public let feedForward: FeedForward
    public let eps: Float

    public init(index: Int, inputNorm: Tensor, attention: Attention, postAttentionNorm: Tensor,
                feedForward: FeedForward, eps: Float) {
        self.index = index
        self.inputNorm = inputNorm
        self.attention = attention
        self.postAttentionNorm = postAttentionNorm
        self.feedForward = feedForward
        self.eps = eps
    }

    public var device: Device { inputNorm.device }
    public var linears: [Linear] { attention.linears + feedForward.linears }

    /// Updates the residual stream `x` [rows, hidden] in place.
    public func forward(_ x: Tensor, context: ForwardContext) throws {
        let rows = context.rows, hidden = x.shape[1]
        let normed = try Tensor(uninitializedShape: x.shape, on: device)
        Kernels.rmsNorm(x.data, weight: inputNorm.data, rows: rows, cols: hidden, eps: eps, into: normed.data)
        let attended = try attention.forward(normed, context: context)
        Kernels.add(attended.data, into: x.data, count: x.count)
        Kernels.rmsNorm(x.data, weight: postAttentionNorm.data, rows: rows, cols: hidden, eps: eps, into: normed.data)
        let fed = try feedForward.forward(normed, rows: rows)
        Kernels.add(fed.data, into: x.data, count: x.count)
    }
}
