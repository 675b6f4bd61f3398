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

    /// What a training forward keeps for backward: everything (`.all`), or only the layer's input
    /// (`.input`, activation checkpointing), in which case backward first recomputes the layer with
    /// a second training forward that keeps everything. Either way the numbers are the same bit for
    /// bit: the recompute starts from the same input, and dropout masks are drawn again from the
    /// adapters' keyed streams. The model sets this (`CausalLM.activationCheckpointing`).
    public enum Keep: Sendable { case all, input }
    public var keep = Keep.all

    /// The residual stream before each norm and the norms' 1/rms, kept for backward.
    private struct Activations {
        let input, inputInverseRMS, middle, middleInverseRMS: Tensor
    }
    private enum Saved {
        case all(Activations)
        case input(Tensor)
    }
    private var saved: Saved?

    /// Updates the residual stream `x` [rows, hidden] in place. In training, dropout is on and the
    /// layer keeps what `keep` says.
    public func forward(_ x: Tensor, context: ForwardContext, training: Bool = false) throws {
        let activations = try compute(x, context: context, training: training, keepAll: training && keep == .all)
        guard training else { return }
        saved = keep == .all ? .all(activations) : .input(activations.input)
    }

    /// The layer's forward pass over `x`, in place. In training, returns the residual streams to
    /// keep; without `keepAll` the attention and feed-forward blocks drop what they saved as soon
    /// as they are done, and only the returned input (a copy of `x` as it came in) is kept.
    /// (Outside training the returned tensors alias `x` and are not kept.)
    private func compute(_ x: Tensor, context: ForwardContext, training: Bool, keepAll: Bool) throws -> Activations {
        let rows = context.rows, hidden = x.shape[1]
        let input = training ? try x.clone() : x
        let inputInverseRMS = try Tensor(uninitializedShape: [rows], on: device)
        let normed = try Tensor(uninitializedShape: x.shape, on: device)
        Kernels.rmsNorm(x.data, weight: inputNorm.data, rows: rows, cols: hidden, eps: eps, into: normed.data,
                        inverseRMS: inputInverseRMS.data)
        let attended = try attention.forward(normed, context: context, training: training)
        if training && !keepAll { attention.clearSaved() }
        Kernels.add(attended.data, into: x.data, count: x.count)
        let middle = training && keepAll ? try x.clone() : x
        let middleInverseRMS = try Tensor(uninitializedShape: [rows], on: device)
        // Kept, the adapters keep `normed`, so the second norm needs its own buffer.
        let normed2 = training && keepAll ? try Tensor(uninitializedShape: x.shape, on: device) : normed
        Kernels.rmsNorm(x.data, weight: postAttentionNorm.data, rows: rows, cols: hidden, eps: eps, into: normed2.data,
                        inverseRMS: middleInverseRMS.data)
        let fed = try feedForward.forward(normed2, rows: rows, training: training)
        if training && !keepAll { feedForward.clearSaved() }
        Kernels.add(fed.data, into: x.data, count: x.count)
        return Activations(input: input, inputInverseRMS: inputInverseRMS, middle: middle, middleInverseRMS: middleInverseRMS)
    }

    /// Hands out the input a checkpointed training forward kept (nil when it kept nothing or
    /// everything), so that the layer can run another micro-batch's forward before this one's
    /// backward (a pipeline stage); `keepInput` gives it back.
    public func takeKeptInput() -> Tensor? {
        guard case .input(let input) = saved else { return nil }
        saved = nil
        return input
    }

    /// Makes `input` the kept input of a checkpointed training forward again (see `takeKeptInput`).
    public func keepInput(_ input: Tensor) { saved = .input(input) }

    /// A layer that kept only its input runs its training forward again from it, now keeping
    /// everything its backward reads; a layer that kept everything has nothing to do.
    public func recompute(context: ForwardContext) throws {
        guard case .input(let input) = saved else { return }
        // The kept input is not needed afterwards: the recompute copies it and runs in place over it.
        saved = .all(try compute(input, context: context, training: true, keepAll: true))
    }

    /// Turns d(output) [rows, hidden] into d(input) in place, accumulating adapter gradients.
    /// Without `inputGradient` (the first layer: embeddings do not train) d(input) is not formed.
    /// A layer that kept only its input recomputes its forward first (`recompute`).
    public func backward(_ dx: Tensor, context: ForwardContext, inputGradient: Bool = true) throws {
        try recompute(context: context)
        guard case .all(let saved) = self.saved else { throw KDError("layer \(index) backward without a training forward pass") }
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
