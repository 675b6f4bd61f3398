import Foundation
import KDCore
import KDModels

extension LRSchedule {
    /// The multiplier of the peak learning rate at optimizer step `step` (0-based), as the
    /// Hugging Face schedulers with warmup compute it: linear warmup from 0 over `warmup` steps,
    /// then constant, linear decay to 0, or half a cosine to 0 at `total` steps.
    public func factor(step: Int, warmup: Int, total: Int) -> Double {
        if step < warmup { return Double(step) / Double(max(1, warmup)) }
        switch self {
        case .constant:
            return 1
        case .linear:
            return max(0, Double(total - step) / Double(max(1, total - warmup)))
        case .cosine:
            let progress = Double(step - warmup) / Double(max(1, total - warmup))
            return max(0, 0.5 * (1 + cos(Double.pi * progress)))
        }
    }
}

/// torch.optim.AdamW on the LoRA matrices, with torch's order of operations in f32: decoupled
/// decay first, then the moments, then the bias-corrected update. Moments live beside their
/// parameter on its device.
public final class AdamW {
    public struct Hyperparameters: Sendable {
        public var beta1: Double
        public var beta2: Double
        public var eps: Double
        public var weightDecay: Double
    }

    /// A trainable tensor with its gradient and moments.
    public struct Slot {
        public let name: String
        public let parameter: Tensor
        public let gradient: () -> Tensor
        public let exponentialAverage: Tensor
        public let exponentialAverageSquare: Tensor
    }

    /// A parameter's moments, by its name (`<linear>.lora_A`).
    public struct Moments {
        public let name: String
        public let average: Tensor
        public let averageSquare: Tensor
    }

    public let hyper: Hyperparameters
    public private(set) var slots: [Slot] = []
    /// Completed optimizer steps (torch's `state["step"]`).
    public var stepCount = 0

    public init(hyper: Hyperparameters) {
        self.hyper = hyper
    }

    public func add(name: String, parameter: Tensor, gradient: @escaping () -> Tensor) throws {
        slots.append(Slot(name: name, parameter: parameter, gradient: gradient,
                          exponentialAverage: try Tensor.zeros(parameter.shape, on: parameter.device),
                          exponentialAverageSquare: try Tensor.zeros(parameter.shape, on: parameter.device)))
    }

    /// Σ g² of each slot's gradient, in slot order, accumulated in f64 (the terms of torch's
    /// clip_grad_norm_ total, `norm(squareSums:)`).
    public func gradientSquareSums() -> [Double] {
        slots.map { slot in
            let g = slot.gradient(), values = g.data
            var sum = 0.0
            for i in 0..<g.count { sum += Double(values[i]) * Double(values[i]) }
            return sum
        }
    }

    /// ‖g‖₂ from slots' Σ g² added in the order given: a model whose slots live in several
    /// processes gives the one process's bits when their sums come together in slot order.
    public static func norm(squareSums: [Double]) -> Double {
        var total = 0.0
        for sum in squareSums { total += sum }
        return total.squareRoot()
    }

    /// Each slot's moments under its parameter's name (the checkpoint's optimizer file).
    public var moments: [Moments] {
        slots.map { Moments(name: $0.name, average: $0.exponentialAverage, averageSquare: $0.exponentialAverageSquare) }
    }

    /// Scales every gradient by min(1, maxNorm/(norm + 1e-6)), as clip_grad_norm_ does.
    public func clip(norm: Double, maxNorm: Double) {
        let coefficient = Float(min(1, maxNorm / (norm + 1e-6)))
        for slot in slots { Kernels.scale(slot.gradient().data, by: coefficient, count: slot.parameter.count) }
    }

    /// One AdamW step at learning rate `lr`.
    public func step(lr: Double) {
        stepCount += 1
        let decay = Float(1 - lr * hyper.weightDecay)
        let beta1Weight = Float(1 - hyper.beta1), beta2 = Float(hyper.beta2), beta2Weight = Float(1 - hyper.beta2)
        let biasCorrection1 = 1 - pow(hyper.beta1, Double(stepCount))
        let biasCorrection2Root = Float((1 - pow(hyper.beta2, Double(stepCount))).squareRoot())
        let stepSize = Float(lr / biasCorrection1)
        let eps = Float(hyper.eps)
        for slot in slots {
            let p = slot.parameter.data, g = slot.gradient().data
            let m = slot.exponentialAverage.data, v = slot.exponentialAverageSquare.data
            for i in 0..<slot.parameter.count {
                p[i] *= decay
                m[i] += beta1Weight * (g[i] - m[i])  // torch's lerp for weights below 0.5
                v[i] = v[i] * beta2 + beta2Weight * g[i] * g[i]
                let denominator = v[i].squareRoot() / biasCorrection2Root + eps
                p[i] += -stepSize * (m[i] / denominator)
            }
        }
    }
}
