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

    /// The residual stream before each norm and the norms' 1/rms, kept for backward.
    private var saved: (input: Tensor, inputInverseRMS: Tensor, middle: Tensor, middleInverseRMS: Tensor)?

    /// Updates the residual stream `x` [rows, hidden] in place.
    public func forward(_ x: Tensor, context: ForwardContext, training: Bool = false) throws {
        let rows = context.rows, hidden = x.shape[1]
        let input = training ? try x.clone() : x
        let inputInverseRMS = try Tensor(uninitializedShape: [rows], on: device)
        let normed = try Tensor(uninitializedShape: x.shape, on: device)
        Kernels.rmsNorm(x.data, weight: inputNorm.data, rows: rows, cols: hidden, eps: eps, into: normed.data,
                        inverseRMS: inputInverseRMS.data)
        let attended = try attention.forward(normed, context: context, training: training)
        Kernels.add(attended.data, into: x.data, count: x.count)
        let middle = training ? try x.clone() : x
        let middleInverseRMS = try Tensor(uninitializedShape: [rows], on: device)
        // In training the adapters keep `normed`, so the second norm needs its own buffer.
        let normed2 = training ? try Tensor(uninitializedShape: x.shape, on: device) : normed
        Kernels.rmsNorm(x.data, weight: postAttentionNorm.data, rows: rows, cols: hidden, eps: eps, into: normed2.data,
                        inverseRMS: middleInverseRMS.data)
        let fed = try feedForward.forward(normed2, rows: rows, training: training)
        Kernels.add(fed.data, into: x.data, count: x.count)
        if training { saved = (input, inputInverseRMS, middle, middleInverseRMS) }
    }

    /// Turns d(output) [rows, hidden] into d(input) in place, accumulating adapter gradients.
    /// Without `inputGradient` (the first layer: embeddings do not train) d(input) is not formed.
    public func backward(_ dx: Tensor, context: ForwardContext, inputGradient: Bool = true) throws {
        guard let saved else { throw KDError("layer \(index) backward without a training forward pass") }
        self.saved = nil
        let rows = context.rows, hidden = dx.shape[1]
        let dNormed2 = try feedForward.backward(dx, rows: rows)
        Kernels.rmsNormBackward(dNormed2.data, x: saved.middle.data, weight: postAttentionNorm.data,
                                inverseRMS: saved.middleInverseRMS.data, rows: rows, cols: hidden, into: dx.data,
                                accumulate: true)
        guard let dNormed = try attention.backward(dx, context: context, inputGradient: inputGradient) else { return }
        Kernels.rmsNormBackward(dNormed.data, x: saved.input.data, weight: inputNorm.data,
                                inverseRMS: saved.inputInverseRMS.data, rows: rows, cols: hidden, into: dx.data,
                                accumulate: true)
    }
}
