import KDCore

/// A frozen linear layer `y = x·Wᵀ` with an optional LoRA adapter, named as in the checkpoint
/// (`model.layers.3.self_attn.q_proj`).
public final class Linear {
    public let name: String
    public let weight: Tensor
    public var adapter: LoRAAdapter?

    public var inFeatures: Int { weight.shape[1] }
    public var outFeatures: Int { weight.shape[0] }
    public var device: Device { weight.device }

    public init(name: String, weight: Tensor) {
        self.name = name
        self.weight = weight
    }

    /// y[rows, out] = x[rows, in]·Wᵀ (+ s·B·A·dropout(x) when an adapter is attached).
    public func forward(_ x: Tensor, rows: Int, saving: Bool = false) throws -> Tensor {
        let y = try Tensor(uninitializedShape: [rows, outFeatures], on: device)
        BLAS.linear(x.data, rows: rows, inFeatures: inFeatures, weight: weight.data, outFeatures: outFeatures, into: y.data)
        if let adapter {
            try adapter.forward(x, rows: rows, accumulateInto: y, saving: saving)
        }
        return y
    }
}
