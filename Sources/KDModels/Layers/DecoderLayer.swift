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
    /// (`.input`, activation checkpointing), in which case backward first recomputes the layer
    /// (`recompute`), or the input and the layer's products (`.inputAndProducts`: q, k and v, the
    /// middle residual, the feed-forward's gate and up, 2·intermediate + q + 2·kv + hidden f32 a
    /// token), whose recompute then forms none of the layer's products but its adapters' A·x̃: the
    /// norms, rope and attention. A recompute never forms the down projection's product either: the
    /// layer's output is not read in backward. Either way the numbers are the same bit for bit: the
    /// recompute starts from the same input (and the kept products are those it would form), and
    /// dropout masks are drawn again from the adapters' keyed streams. The model sets this
    /// (`CausalLM.activationCheckpointing`, `layersKeepingProducts`).
    public enum Keep: Sendable { case all, input, inputAndProducts }
    public var keep = Keep.all

    /// Each layer's `keep`: `.all` without checkpointing, else `.inputAndProducts` for the layers
    /// (by index) in `keepingProducts` and `.input` for the others.
    public static func setKeep(_ layers: [DecoderLayer], checkpointing: Bool, keepingProducts: Set<Int>) {
        for layer in layers {
            layer.keep = !checkpointing ? .all : keepingProducts.contains(layer.index) ? .inputAndProducts : .input
        }
    }

    /// The residual stream before each norm and the norms' 1/rms, kept for backward.
    private struct Activations {
        let input, inputInverseRMS, middle, middleInverseRMS: Tensor
    }
    /// The products a layer keeps with `.inputAndProducts`.
    struct Products {
        let projections: Attention.Projections
        let middle: Tensor
        let gateUp: MLP.GateUp
    }
    /// What a checkpointed training forward keeps: the input, and the products with `.inputAndProducts`.
    public struct Kept {
        let input: Tensor
        let products: Products?
    }
    private enum Saved {
        case all(Activations)
        case kept(Kept)
    }
    private var saved: Saved?

    /// Updates the residual stream `x` [rows, hidden] in place. In training, dropout is on and the
    /// layer keeps what `keep` says.
    public func forward(_ x: Tensor, context: ForwardContext, training: Bool = false) throws {
        let (activations, products) = try compute(x, context: context, pass: training ? .training : .inference)
        guard training else { return }
        saved = keep == .all ? .all(activations) : .kept(Kept(input: activations.input, products: products))
    }

    /// How `compute` runs: outside training, a training forward (keeping what `keep` says), or the
    /// recompute before backward of a layer that kept only its input.
    private enum Pass { case inference, training, recompute }

    /// The layer's pass over `x`, in place. In training, returns the residual streams to keep and,
    /// with `.inputAndProducts`, the products; a checkpointed forward has the attention and
    /// feed-forward blocks drop what they saved as soon as they are done, and keeps only the
    /// returned input (a copy of `x` as it came in). A recompute keeps everything and stops after
    /// the feed-forward's `prepareBackward`, `x` then holding the middle residual. (Outside
    /// training the returned tensors alias `x` and are not kept.)
    private func compute(_ x: Tensor, context: ForwardContext, pass: Pass) throws -> (Activations, Products?) {
        let training = pass != .inference, keepAll = pass == .recompute || (pass == .training && keep == .all)
        let keepProducts = pass == .training && keep == .inputAndProducts
        let rows = context.rows
        let input = training ? try x.clone() : x
        let normed = try Tensor(uninitializedShape: x.shape, on: device)
        let inputInverseRMS = try norm(x, inputNorm, rows: rows, into: normed)
        let attended = try attention.forward(normed, context: context, training: training)
        var projections: Attention.Projections?
        if keepProducts { projections = attention.takeProjections() } else if training && !keepAll { attention.clearSaved() }
        Kernels.add(attended.data, into: x.data, count: x.count)
        // Kept, `x` goes on to the output in place unless this is the recompute, which stops here.
        let middle = (keepAll && pass != .recompute) || keepProducts ? try x.clone() : x
        // Kept, the adapters keep `normed`, so the second norm needs its own buffer.
        let normed2 = keepAll ? try Tensor(uninitializedShape: x.shape, on: device) : normed
        let middleInverseRMS = try norm(x, postAttentionNorm, rows: rows, into: normed2)
        let activations = Activations(input: input, inputInverseRMS: inputInverseRMS, middle: middle,
                                      middleInverseRMS: middleInverseRMS)
        if pass == .recompute {
            try feedForward.prepareBackward(normed2, rows: rows, gateUp: nil)
            return (activations, nil)
        }
        let fed = try feedForward.forward(normed2, rows: rows, training: training)
        var products: Products?
        if keepProducts, let projections, let gateUp = feedForward.takeGateUp() {
            products = Products(projections: projections, middle: middle, gateUp: gateUp)
        } else if training && !keepAll {
            feedForward.clearSaved()
        }
        Kernels.add(fed.data, into: x.data, count: x.count)
        return (activations, products)
    }

    /// RMSNorm of `x` [rows, hidden] with `weight` into `normed`; returns each row's 1/rms.
    private func norm(_ x: Tensor, _ weight: Tensor, rows: Int, into normed: Tensor) throws -> Tensor {
        let inverseRMS = try Tensor(uninitializedShape: [rows], on: device)
        Kernels.rmsNorm(x.data, weight: weight.data, rows: rows, cols: x.shape[1], eps: eps, into: normed.data,
                        inverseRMS: inverseRMS.data)
        return inverseRMS
    }

    /// The recompute of a layer that kept its products: from its input and middle residual, the
    /// norms, and each block's `prepareBackward` over them, forming no product but the adapters' A·x̃.
    private func recompute(_ input: Tensor, products: Products, context: ForwardContext) throws -> Activations {
        let rows = context.rows
        let normed = try Tensor(uninitializedShape: input.shape, on: device)
        let inputInverseRMS = try norm(input, inputNorm, rows: rows, into: normed)
        try attention.prepareBackward(normed, context: context, projections: products.projections)
        let normed2 = try Tensor(uninitializedShape: input.shape, on: device)
        let middleInverseRMS = try norm(products.middle, postAttentionNorm, rows: rows, into: normed2)
        try feedForward.prepareBackward(normed2, rows: rows, gateUp: products.gateUp)
        return Activations(input: input, inputInverseRMS: inputInverseRMS, middle: products.middle,
                           middleInverseRMS: middleInverseRMS)
    }

    /// Hands out what a checkpointed training forward kept (nil when it kept nothing or
    /// everything), so that the layer can run another micro-batch's forward before this one's
    /// backward (a pipeline stage); `restoreKept` gives it back.
    public func takeKept() -> Kept? {
        guard case .kept(let kept) = saved else { return nil }
        saved = nil
        return kept
    }

    /// Makes `kept` what a checkpointed training forward kept again (see `takeKept`).
    public func restoreKept(_ kept: Kept) { saved = .kept(kept) }

    /// A layer that kept only its input (and perhaps its products) runs its training forward
    /// again from it, now keeping everything its backward reads; a layer that kept everything has
    /// nothing to do.
    public func recompute(context: ForwardContext) throws {
        guard case .kept(let kept) = saved else { return }
        if let products = kept.products {
            saved = .all(try recompute(kept.input, products: products, context: context))
        } else {
            // The kept input is not needed afterwards: the recompute copies it and runs in place over it.
            saved = .all(try compute(kept.input, context: context, pass: .recompute).0)
        }
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
