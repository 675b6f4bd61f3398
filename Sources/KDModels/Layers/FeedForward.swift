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

    /// The dense MLP's `takeGateUp` (a MoE block does not train).
    public func takeGateUp() -> MLP.GateUp? {
        guard case .dense(let mlp) = self else { return nil }
        return mlp.takeGateUp()
    }

    /// The dense MLP's `prepareBackward`.
    public func prepareBackward(_ x: Tensor, rows: Int, gateUp: MLP.GateUp?) throws {
        guard case .dense(let mlp) = self else { throw KDError("training through a Qwen3-MoE block is not supported") }
        try mlp.prepareBackward(x, rows: rows, gateUp: gateUp)
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

    /// gate(x) and up(x) [rows, intermediate], adapters included: what backward reads beside the
    /// adapters' own, and two thirds of the block's products.
    public struct GateUp {
        let gate, up: Tensor
    }
    private var saved: GateUp?

    public init(gateProj: Linear, upProj: Linear, downProj: Linear) {
        (self.gateProj, self.upProj, self.downProj) = (gateProj, upProj, downProj)
    }

    public var linears: [Linear] { [gateProj, upProj, downProj] }

    public func forward(_ x: Tensor, rows: Int, training: Bool = false) throws -> Tensor {
        let gate = try gateProj.forward(x, rows: rows, training: training)
        let up = try upProj.forward(x, rows: rows, training: training)
        let activation = training ? try Tensor(uninitializedShape: gate.shape, on: gate.device) : gate
        Kernels.swiglu(gate: gate.data, up: up.data, into: activation.data, count: gate.count)
        if training { saved = GateUp(gate: gate, up: up) }
        return try downProj.forward(activation, rows: rows, training: training)
    }

    /// Takes gate(x) and up(x) of the last training forward and drops the rest it kept (the
    /// adapters'), for a layer that keeps them across a checkpointed forward.
    public func takeGateUp() -> GateUp? {
        defer { clearSaved() }
        return saved
    }

    /// Recomputes what a training forward over `x` keeps for `backward`, without the output
    /// (nothing reads it): gate(x) and up(x), or with `gateUp` the kept ones, of which only the
    /// adapters' A·x̃ is formed again; then the down projection's adapter input, silu(gate)·up,
    /// without the down projection's product. The saved values are those of the forward bit for bit.
    public func prepareBackward(_ x: Tensor, rows: Int, gateUp: GateUp?) throws {
        let kept: GateUp
        if let gateUp {
            try gateProj.keepForBackward(x, rows: rows)
            try upProj.keepForBackward(x, rows: rows)
            kept = gateUp
        } else {
            kept = GateUp(gate: try gateProj.forward(x, rows: rows, training: true), up: try upProj.forward(x, rows: rows, training: true))
        }
        if downProj.adapter != nil {
            let activation = try Tensor(uninitializedShape: kept.gate.shape, on: kept.gate.device)
            Kernels.swiglu(gate: kept.gate.data, up: kept.up.data, into: activation.data, count: kept.gate.count)
            try downProj.keepForBackward(activation, rows: rows)
        }
        saved = kept
    }

    /// Drops what a training forward kept, the adapters' included.
    public func clearSaved() {
        saved = nil
        for linear in linears { linear.adapter?.clearSaved() }
    }

    public func backward(_ dOut: Tensor, rows: Int) throws -> Tensor {
        guard let kept = saved else { throw KDError("MLP backward without a training forward pass") }
        saved = nil
        let (gate, up) = (kept.gate, kept.up)
        let dActivation = try Tensor(uninitializedShape: gate.shape, on: gate.device)
        try downProj.backward(dOut, rows: rows, into: dActivation, accumulate: false)
        Kernels.swigluBackward(dActivation.data, gate: gate.data, up: up.data, count: gate.count)
        let dx = try Tensor(uninitializedShape: [rows, gateProj.inFeatures], on: gate.device)
        try gateProj.backward(gate, rows: rows, into: dx, accumulate: false)
        try upProj.backward(up, rows: rows, into: dx, accumulate: true)
        return dx
    }
}
