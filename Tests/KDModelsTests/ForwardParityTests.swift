import Foundation
import Testing
import KDCore
import KDModels

/// Logits against transformers' fp32 forward on the committed random checkpoints.
@Suite struct ForwardParityTests {
    static func expected(_ model: String) throws -> (logits: Tensor, mask: [Bool]) {
        let file = try SafetensorsFile(path: Fixtures.path("forward", model, "expected.safetensors"))
        let logits = try file.load("logits", on: Device(id: 99))
        let mask = try file.bytes("attention_mask").withUnsafeBytes { raw in
            raw.bindMemory(to: Int64.self).map { $0 != 0 }
        }
        return (logits, mask)
    }

    @Test(arguments: Fixtures.forwardModels)
    func logitsMatchTransformers(model: String) throws {
        let checkpoint = try Checkpoint(directory: Fixtures.path("forward", model))
        let lm = try CausalLM.load(checkpoint, on: try DeviceGroup.make(count: 1))
        let batch = TokenBatch(rows: try Fixtures.tokenRows(model))
        let logits = try lm.logits(batch)
        let (expected, mask) = try Self.expected(model)
        #expect(expected.count == logits.count)
        let error = maxError(logits.data, expected.data, width: lm.spec.vocabSize, mask: mask)
        print("forward parity \(model): max |Δlogits| = \(error)")
        #expect(error < 1e-4)
    }

    @Test(arguments: ["dense-tied-gqa", "dense-mqa-headdim-sharded", "moe-8x2"])
    func placementDoesNotChangeLogits(model: String) throws {
        let checkpoint = try Checkpoint(directory: Fixtures.path("forward", model))
        let batch = TokenBatch(rows: try Fixtures.tokenRows(model))
        let reference = try CausalLM.load(checkpoint, on: try DeviceGroup.make(count: 1)).logits(batch)
        let everyRow = [Bool](repeating: true, count: batch.tokenCount)
        for devices in [2, 3, 6] {
            let lm = try CausalLM.load(checkpoint, on: try DeviceGroup.make(count: devices))
            #expect(lm.placement.stages.count == devices)
            let logits = try lm.logits(batch)
            #expect(logits.device === lm.group.last)
            #expect(maxError(logits.data, reference.data, width: lm.spec.vocabSize, mask: everyRow) <= 1e-6)
        }
    }
}
