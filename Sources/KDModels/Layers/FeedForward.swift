import KDCore

/// A decoder layer's feed-forward block: the dense SwiGLU MLP, or Qwen3-MoE's routed experts.
public enum FeedForward {
    case dense(MLP)
    case sparse(SparseMoE)

    public func forward(_ x: Tensor, rows: Int, training: Bool = false) throws -> Tensor {
        switch self {
        case .dense(let mlp): return try mlp.forward(x, rows: rows, training: training)
        case .sparse(let moe):
            if training { throw KDError("training through a Qwen3-MoE block is not supported (MoE models can be teachers)") }
            return try moe.forward(x, rows: rows)
        }
    }

    public func backward(_ dOut: Tensor, rows: Int) throws -> Tensor {
        switch self {
        case .dense(let mlp): try mlp.backward(dOut, rows: rows)
        case .sparse: throw KDError("training through a Qwen3-MoE block is not supported")
        }
    }

    /// Drops what a training forward kept, the adapters' included.
    public func clearSaved() {
        if case .dense(let mlp) = self { mlp.clearSaved() }
    }

    public var linears: [Linear] {
        switch self {
        case .dense(let mlp): mlp.linears
        case .sparse(let moe): moe.experts.flatMap(\.linears)
        }
    }
}

/// The SwiGLU MLP: down(silu(gate(x)) · up(x)). Training keeps gate(x) and up(x).
public final class MLP {
    public let gateProj, upProj, downProj: Linear
    private var saved: (gate: Tensor, up: Tensor)?

    public init(gateProj: Linear, upProj: Linear, downProj: Linear) {
        (self.gateProj, self.upProj, self.downProj) = (gateProj, upProj, downProj)
    }

    public var linears: [Linear] { [gateProj, upProj, downProj] }

    public func forward(_ x: Tensor, rows: Int, training: Bool = false) throws -> Tensor {
        let gate = try gateProj.forward(x, rows: rows, training: training)
        let up = try upProj.forward(x, rows: rows, training: training)
        let activation = training ? try Tensor(uninitializedShape: gate.shape, on: gate.device) : gate
        Kernels.swiglu(gate: gate.data, up: up.data, into: activation.data, count: gate.count)
        if training { saved = (gate, up) }
        return try downProj.forward(activation, rows: rows, training: training)
    }

    /// Drops what a training forward kept, the adapters' included.
    public func clearSaved() {
        saved = nil
        for linear in linears { linear.adapter?.clearSaved() }
    }

    public func backward(_ dOut: Tensor, rows: Int) throws -> Tensor {
        guard let (gate, up) = saved else { throw KDError("MLP backward without a training forward pass") }
        saved = nil
        let dActivation = try Tensor(uninitializedShape: gate.shape, on: gate.device)
        try downProj.backward(dOut, rows: rows, into: dActivation, accumulate: false)
        Kernels.swigluBackward(dActivation.data, gate: gate.data, up: up.data, count: gate.count)
        let dx = try Tensor(uninitializedShape: [rows, gateProj.inFeatures], on: gate.device)
        try gateProj.backward(gate, rows: rows, into: dx, accumulate: false)
        try upProj.backward(up, rows: rows, into: dx, accumulate: true)
        return dx
    }
}
