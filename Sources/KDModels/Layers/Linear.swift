import KDCore

/// A frozen linear layer `y = x·Wᵀ` with an optional LoRA adapter, named as in the checkpoint
/// (`model.layers.3.self_attn.q_proj`). Backward produces the input gradient and accumulates
/// the adapter's gradients; W itself never trains, and is held as f32 or bf16 (`WeightProducts`).
public final class Linear {
    public let name: String
    /// The frozen weight [out, in]; PiSSA replaces it with the residual W − s·B₀·A₀.
    public private(set) var weight: Tensor
    public var adapter: LoRAAdapter?

    public var inFeatures: Int { weight.shape[1] }
    public var outFeatures: Int { weight.shape[0] }
    public var device: Device { weight.device }

    public init(name: String, weight: Tensor) {
        self.name = name
        self.weight = weight
    }

    public func replaceWeight(_ weight: Tensor) {
        precondition(weight.shape == self.weight.shape && weight.dtype == self.weight.dtype)
        self.weight = weight
    }

    /// y[rows, out] = x[rows, in]·Wᵀ (+ s·B·A·dropout(x) with an adapter). In training the
    /// adapter keeps what its backward needs.
    public func forward(_ x: Tensor, rows: Int, training: Bool = false) throws -> Tensor {
        let y = try Tensor(uninitializedShape: [rows, outFeatures], on: device)
        try WeightProducts.linear(x.data, rows: rows, weight: weight, into: y.data)
        if let adapter {
            try adapter.forward(x, rows: rows, accumulateInto: y, training: training)
        }
        return y
    }

    /// Keeps what a training `forward` over `x` keeps for `backward` (the adapter's x̃ and A·x̃)
    /// without forming y: the recompute of a layer whose output nothing reads.
    public func keepForBackward(_ x: Tensor, rows: Int) throws {
        try adapter?.keepForBackward(x, rows: rows)
    }

    /// dx (+)= dy·W plus the adapter's input path; the adapter's gradients accumulate. Without
    /// `dx` (nothing upstream trains) only the adapter's gradients are formed.
    public func backward(_ dy: Tensor, rows: Int, into dx: Tensor?, accumulate: Bool) throws {
        if let dx {
            try WeightProducts.backward(dy.data, rows: rows, weight: weight, into: dx.data, accumulate: accumulate)
        }
        try adapter?.backward(dy, rows: rows, accumulateInto: dx)
    }
}
