import Foundation
import Testing
import KDCore
@testable import KDModels

/// Each layer's backward against central finite differences of a scalar loss L = Σ y ⊙ R.
/// f32 differences are noisy, so the loss is accumulated in Double and entries are compared at
/// a relative tolerance that a wrong formula (a missing term, a transposed product) cannot meet.
@Suite struct BackwardTests {
    static let device = Device(id: 0)

    static func random(_ shape: [Int], scale: Float, seed: UInt64) throws -> Tensor {
        var rng = RandomGenerator(seed: seed)
        return try Tensor((0..<shape.reduce(1, *)).map { _ in rng.nextNormal() * scale }, shape: shape, on: device)
    }

    static func linear(_ name: String, out: Int, in inFeatures: Int, rank: Int = 0, seed: UInt64) throws -> Linear {
        let linear = Linear(name: name, weight: try random([out, inFeatures], scale: 1 / Float(inFeatures).squareRoot(), seed: seed))
        if rank > 0 {
            linear.adapter = LoRAAdapter(a: try random([rank, inFeatures], scale: 0.3, seed: seed + 1),
                                         b: try random([out, rank], scale: 0.3, seed: seed + 2), scale: 1.5)
            try linear.adapter!.zeroGradients()
        }
        return linear
    }

    static func loss(_ y: Tensor, _ r: Tensor) -> Double {
        (0..<y.count).reduce(0.0) { $0 + Double(y.data[$1]) * Double(r.data[$1]) }
    }

    /// Compares analytic gradients `grad` of the values in `parameter` against finite differences
    /// of `evaluate()` at `samples` entries.
    static func check(_ what: String, parameter: Tensor, grad: Tensor, samples: Int = 12, h: Float = 1e-2,
                      evaluate: () throws -> Double) throws {
        var rng = RandomGenerator(seed: 7)
        var worst = 0.0
        // Entries far below the tensor's largest gradient are dominated by f32 noise in the differences.
        let floor = max(1e-2, 0.05 * Double(grad.toArray().map { abs($0) }.max() ?? 0))
        for _ in 0..<samples {
            let i = Int(rng.next() % UInt64(parameter.count))
            let saved = parameter.data[i]
            parameter.data[i] = saved + h
            let plus = try evaluate()
            parameter.data[i] = saved - h
            let minus = try evaluate()
            parameter.data[i] = saved
            let numeric = (plus - minus) / Double(2 * h)
            let analytic = Double(grad.data[i])
            let error = abs(numeric - analytic) / max(floor, abs(numeric) + abs(analytic))
            worst = max(worst, error)
        }
        #expect(worst < 2e-2, "\(what): worst relative error \(worst)")
    }

    static func context(batch: Int, sequence: Int, headDim: Int, lengths: [Int]) -> ForwardContext {
        let rows = (0..<batch).map { b in (0..<lengths[b]).map { ($0 * 7 + b) % 50 } }
        return ForwardContext(batch: TokenBatch(rows: rows, padID: 0, length: sequence), headDim: headDim, ropeTheta: 10_000)
    }

    @Test func rmsNormKernel() throws {
        let rows = 3, cols = 10
        let x = try Self.random([rows, cols], scale: 1, seed: 1), w = try Self.random([cols], scale: 1, seed: 2)
        let r = try Self.random([rows, cols], scale: 1, seed: 3)
        let y = try Tensor.zeros([rows, cols], on: Self.device), inv = try Tensor.zeros([rows], on: Self.device)
        let dx = try Tensor.zeros([rows, cols], on: Self.device)
        Kernels.rmsNorm(x.data, weight: w.data, rows: rows, cols: cols, eps: 1e-6, into: y.data, inverseRMS: inv.data)
        Kernels.rmsNormBackward(r.data, x: x.data, weight: w.data, inverseRMS: inv.data, rows: rows, cols: cols, into: dx.data, accumulate: false)
        try Self.check("rmsnorm dx", parameter: x, grad: dx, h: 1e-3) {
            Kernels.rmsNorm(x.data, weight: w.data, rows: rows, cols: cols, eps: 1e-6, into: y.data)
            return Self.loss(y, r)
        }
    }

    @Test func linearWithLoRA() throws {
        let linear = try Self.linear("l", out: 6, in: 9, rank: 3, seed: 10)
        let x = try Self.random([4, 9], scale: 1, seed: 11), r = try Self.random([4, 6], scale: 1, seed: 12)
        func evaluate() throws -> Double { Self.loss(try linear.forward(x, rows: 4), r) }
        _ = try linear.forward(x, rows: 4, training: true)
        let dx = try Tensor.zeros([4, 9], on: Self.device)
        try linear.backward(r, rows: 4, into: dx, accumulate: false)
        try Self.check("linear dx", parameter: x, grad: dx, evaluate: evaluate)
        try Self.check("lora A", parameter: linear.adapter!.a, grad: linear.adapter!.gradA!, evaluate: evaluate)
        try Self.check("lora B", parameter: linear.adapter!.b, grad: linear.adapter!.gradB!, evaluate: evaluate)
    }

    @Test func loraDropoutMasksMatchBetweenForwardAndBackward() throws {
        let linear = try Self.linear("l", out: 5, in: 8, rank: 2, seed: 20)
        let adapter = linear.adapter!
        let dropped = LoRAAdapter(a: adapter.a, b: adapter.b, scale: adapter.scale, dropout: 0.5)
        try dropped.zeroGradients()
        linear.adapter = dropped
        let x = try Self.random([3, 8], scale: 1, seed: 21), r = try Self.random([3, 5], scale: 1, seed: 22)
        func evaluate() throws -> Double {
            dropped.dropoutStream = RandomGenerator(seed: 99)
            return Self.loss(try linear.forward(x, rows: 3, training: true), r)
        }
        dropped.dropoutStream = RandomGenerator(seed: 99)
        _ = try linear.forward(x, rows: 3, training: true)
        let dx = try Tensor.zeros([3, 8], on: Self.device)
        try linear.backward(r, rows: 3, into: dx, accumulate: false)
        try Self.check("dropout dx", parameter: x, grad: dx, evaluate: evaluate)
        try Self.check("dropout A", parameter: dropped.a, grad: dropped.gradA!, evaluate: evaluate)
    }

    static func attention(heads: Int, kvHeads: Int, headDim: Int, hidden: Int, seed: UInt64) throws -> Attention {
        Attention(
            qProj: try linear("q_proj", out: heads * headDim, in: hidden, rank: 2, seed: seed),
            kProj: try linear("k_proj", out: kvHeads * headDim, in: hidden, rank: 2, seed: seed + 10),
            vProj: try linear("v_proj", out: kvHeads * headDim, in: hidden, rank: 2, seed: seed + 20),
            oProj: try linear("o_proj", out: hidden, in: heads * headDim, rank: 2, seed: seed + 30),
            qNorm: try random([headDim], scale: 1, seed: seed + 40), kNorm: try random([headDim], scale: 1, seed: seed + 41),
            heads: heads, kvHeads: kvHeads, headDim: headDim, eps: 1e-6)
    }

    @Test func attentionWithGQAAndPadding() throws {
        let hidden = 12, headDim = 6
        let attention = try Self.attention(heads: 4, kvHeads: 2, headDim: headDim, hidden: hidden, seed: 30)
        let context = Self.context(batch: 2, sequence: 5, headDim: headDim, lengths: [5, 3])
        let x = try Self.random([10, hidden], scale: 1, seed: 31), r = try Self.random([10, hidden], scale: 1, seed: 32)
        // Padded query rows still produce outputs; exclude them from the loss as training does.
        for row in [8, 9] { for i in 0..<hidden { r.data[row * hidden + i] = 0 } }
        func evaluate() throws -> Double { Self.loss(try attention.forward(x, context: context), r) }
        _ = try attention.forward(x, context: context, training: true)
        let dx = try attention.backward(r, context: context)!
        try Self.check("attention dx", parameter: x, grad: dx, samples: 20, evaluate: evaluate)
        for linear in attention.linears {
            try Self.check("\(linear.name) A", parameter: linear.adapter!.a, grad: linear.adapter!.gradA!, evaluate: evaluate)
            try Self.check("\(linear.name) B", parameter: linear.adapter!.b, grad: linear.adapter!.gradB!, evaluate: evaluate)
        }
    }

    @Test func mlp() throws {
        let mlp = MLP(gateProj: try Self.linear("gate_proj", out: 14, in: 8, rank: 2, seed: 40),
                      upProj: try Self.linear("up_proj", out: 14, in: 8, rank: 2, seed: 50),
                      downProj: try Self.linear("down_proj", out: 8, in: 14, rank: 2, seed: 60))
        let x = try Self.random([5, 8], scale: 1, seed: 41), r = try Self.random([5, 8], scale: 1, seed: 42)
        func evaluate() throws -> Double { Self.loss(try mlp.forward(x, rows: 5), r) }
        _ = try mlp.forward(x, rows: 5, training: true)
        let dx = try mlp.backward(r, rows: 5)
        try Self.check("mlp dx", parameter: x, grad: dx, evaluate: evaluate)
        for linear in mlp.linears {
            try Self.check("\(linear.name) A", parameter: linear.adapter!.a, grad: linear.adapter!.gradA!, evaluate: evaluate)
        }
    }

    @Test func decoderLayerAndWholeModel() throws {
        let hidden = 12, headDim = 6
        let layer = DecoderLayer(
            index: 0, inputNorm: try Self.random([hidden], scale: 1, seed: 70),
            attention: try Self.attention(heads: 2, kvHeads: 1, headDim: headDim, hidden: hidden, seed: 71),
            postAttentionNorm: try Self.random([hidden], scale: 1, seed: 72),
            feedForward: .dense(MLP(gateProj: try Self.linear("gate_proj", out: 20, in: hidden, rank: 2, seed: 73),
                                    upProj: try Self.linear("up_proj", out: 20, in: hidden, rank: 2, seed: 74),
                                    downProj: try Self.linear("down_proj", out: hidden, in: 20, rank: 2, seed: 75))),
            eps: 1e-6)
        let context = Self.context(batch: 1, sequence: 6, headDim: headDim, lengths: [6])
        let x = try Self.random([6, hidden], scale: 1, seed: 76), r = try Self.random([6, hidden], scale: 1, seed: 77)
        func evaluate() throws -> Double {
            let y = try x.clone()
            try layer.forward(y, context: context)
            return Self.loss(y, r)
        }
        let y = try x.clone()
        try layer.forward(y, context: context, training: true)
        let dx = try r.clone()
        try layer.backward(dx, context: context)
        try Self.check("layer dx", parameter: x, grad: dx, samples: 20, evaluate: evaluate)
        for linear in layer.linears {
            try Self.check("\(linear.name) A", parameter: linear.adapter!.a, grad: linear.adapter!.gradA!, samples: 6, evaluate: evaluate)
        }
    }

    @Test func wholeModelOnTwoDevices() throws {
        let checkpoint = try Checkpoint(directory: Fixtures.path("forward", "dense-mqa-headdim-sharded"))
        let model = try CausalLM.load(checkpoint, on: try DeviceGroup.make(count: 2))
        var settings = LoRASettings()
        settings.r = 2
        try PEFTAdapter.attachFresh(to: model, settings: settings, seed: 3)
        var rng = RandomGenerator(seed: 5)
        for linear in model.linears {
            let b = linear.adapter!.b
            for i in 0..<b.count { b.data[i] = rng.nextNormal() * 0.2 }
            try linear.adapter!.zeroGradients()
        }
        let batch = TokenBatch(rows: [[1, 5, 9, 3, 7], [2, 4, 6]])
        let r = try Self.random([10, model.spec.hiddenSize], scale: 1, seed: 6)
        for i in 0..<model.spec.hiddenSize { r.data[8 * model.spec.hiddenSize + i] = 0; r.data[9 * model.spec.hiddenSize + i] = 0 }
        func evaluate() throws -> Double { Self.loss(try model.hiddenStates(batch), r) }
        _ = try model.hiddenStates(batch, training: true)
        try model.backward(try r.to(model.lastDevice))
        // The fixture's weights are large, so the loss is sharply curved: a smaller step.
        for linear in [model.linears[0], model.linears[5], model.linears.last!] {
            try Self.check("\(linear.name) A", parameter: linear.adapter!.a, grad: linear.adapter!.gradA!, samples: 6, h: 2e-3, evaluate: evaluate)
            try Self.check("\(linear.name) B", parameter: linear.adapter!.b, grad: linear.adapter!.gradB!, samples: 6, h: 2e-3, evaluate: evaluate)
        }
    }
}
