import KDCore

/// How a model's frozen weights are held in memory: `teacher.dtype`, `student.dtype` and
/// `--dtype`. `auto` keeps a bf16 checkpoint in bf16 (memory-mapped, never widened as a whole)
/// and holds anything else as f32; `bf16` narrows f32 and f16 weights (round-to-nearest-even, as
/// torch's `.to(torch.bfloat16)`); `f32` widens everything. Only matrices follow the setting:
/// vectors (the norms) and the MoE router are small and always f32. Compute is f32 throughout.
public enum WeightDType: String, Sendable, CaseIterable {
    case auto, bf16, f32

    /// Parses a setting, naming `what` (a key or an option) in the error.
    public init(parsing text: String, what: String) throws {
        guard let value = WeightDType(rawValue: text.lowercased()) else {
            let hint = text.lowercased() == "f16" || text.lowercased() == "float16"
                ? " (kd holds weights as f32 or bf16; f16 checkpoints are widened to f32 by auto)" : ""
            throw KDError("\(what): '\(text)' is not a weight dtype: expected auto, bf16 or f32\(hint)")
        }
        self = value
    }

    /// Whether the setting applies to tensor `name` of `shape`: every matrix but the MoE router.
    public static func applies(to name: String, shape: [Int]) -> Bool {
        shape.count == 2 && !name.hasSuffix("mlp.gate.weight")
    }

    /// The dtype tensor `name` of `shape`, stored as `stored`, is held in.
    public func held(_ name: String, shape: [Int], stored: DType) -> DType {
        guard WeightDType.applies(to: name, shape: shape) else { return .f32 }
        switch self {
        case .auto: return stored == .bf16 ? .bf16 : .f32
        case .bf16: return .bf16
        case .f32: return .f32
        }
    }
}
