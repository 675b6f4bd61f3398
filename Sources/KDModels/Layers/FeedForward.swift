import KDCore

/// A decoder layer's feed-forward block: the dense SwiGLU MLP, or Qwen3-MoE's routed experts.
public enum FeedForward {
    case dense(MLP)
    case sparse(SparseMoE)

    public func forward(_ x: Tensor, rows: Int) throws -> Tensor {
        switch self {
        case .dense(let mlp): try mlp.forward(x, rows: rows)
        case .sparse(let moe): try moe.forward(x, rows: rows)
        }
    }

    public var linears: [Linear] {
        switch self {
        case .dense(let mlp): mlp.linears
        case .sparse(let moe): moe.experts.flatMap(\.linears)
        }
    }
}

/// The SwiGLU MLP: down(silu(gate(x)) · up(x)).
public final class MLP {
    public let gateProj, upProj, downProj: Linear

    public init(gateProj: Linear, upProj: Linear, downProj: Linear) {
        (self.gateProj, self.upProj, self.downProj) = (gateProj, upProj, downProj)
    }

    public var linears: [Linear] { [gateProj, upProj, downProj] }

    public func forward(_ x: Tensor, rows: Int) throws -> Tensor {
        let gate = try gateProj.forward(x, rows: rows)
        let up = try upProj.forward(x, rows: rows)
        Kernels.swiglu(gate: gate.data, up: up.data, into: gate.data, count: gate.count)
        return try downProj.forward(gate, rows: rows)
    }
}
