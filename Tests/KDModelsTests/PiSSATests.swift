import Foundation
import Testing
import KDCore
@testable import KDModels

/// PiSSA: the base + adapter model equals the original at the start; A and B are the principal
/// singular directions; the saved (converted) adapter gives the same model on the original weights.
@Suite struct PiSSATests {
    static let model = Fixtures.path("forward", "dense-mqa-headdim-sharded")

    @Test func startsAsTheOriginalModelAndSavesAsPlainLoRA() throws {
        let batch = TokenBatch(rows: [[1, 5, 9, 3, 7, 2], [4, 4, 8]])
        let original = try CausalLM.load(try Checkpoint(directory: Self.model), on: try DeviceGroup.make(count: 1))
        let reference = try original.logits(batch)
        var settings = LoRASettings()
        settings.r = 3
        settings.alpha = 6
        settings.initMethod = .pissa
        let model = try CausalLM.load(try Checkpoint(directory: Self.model), on: try DeviceGroup.make(count: 1))
        try PEFTAdapter.attachFresh(to: model, settings: settings, seed: 0)
        let start = try model.logits(batch)
        let rows = [Bool](repeating: true, count: batch.tokenCount)
        #expect(maxError(start.data, reference.data, width: model.spec.vocabSize, mask: rows) < 1e-3)

        // A·Aᵀ and Bᵀ·B are diagonal with the top singular values over s, in decreasing order.
        let linear = model.linears[0], adapter = linear.adapter!
        let (r, n, out) = (settings.r, linear.inFeatures, linear.outFeatures)
        var diagonal: [Float] = []
        for i in 0..<r {
            for j in 0..<r {
                let aa = Kernels.dot(adapter.a.data + i * n, adapter.a.data + j * n, count: n)
                var bb: Float = 0
                for o in 0..<out { bb += adapter.b.data[o * r + i] * adapter.b.data[o * r + j] }
                if i == j { diagonal.append(aa); #expect(abs(aa - bb) < 1e-3 * abs(aa)) } else { #expect(abs(aa) < 1e-3 && abs(bb) < 1e-3) }
            }
        }
        #expect(diagonal == diagonal.sorted(by: >))

        // Train a little: change B; the converted save on the original weights gives the same model.
        var rng = RandomGenerator(seed: 9)
        for linear in model.linears { for i in 0..<linear.adapter!.b.count { linear.adapter!.b.data[i] += rng.nextNormal() * 0.05 } }
        let trained = try model.logits(batch)
        let dir = Fixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try PEFTAdapter.save(model.namedAdapters, settings: settings, baseModel: Self.model, to: dir)
        let saved = try PEFTAdapter.settings(directory: dir)
        #expect(saved.r == 6 && saved.alpha == 12 && saved.scale == settings.scale)
        let reloaded = try CausalLM.load(try Checkpoint(directory: Self.model), on: try DeviceGroup.make(count: 1))
        try PEFTAdapter.attach(directory: dir, to: reloaded)
        #expect(maxError(try reloaded.logits(batch).data, trained.data, width: model.spec.vocabSize, mask: rows) < 1e-3)
        // And the PiSSA state (current and initial matrices) comes back exactly from it.
        let resumed = try CausalLM.load(try Checkpoint(directory: Self.model), on: try DeviceGroup.make(count: 1))
        try PEFTAdapter.attachPiSSA(savedIn: dir, to: resumed, settings: settings)
        #expect(try resumed.logits(batch).toArray() == trained.toArray())
    }
}
