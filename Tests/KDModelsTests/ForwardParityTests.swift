import Foundation
import Testing
import KDCore
import KDModels

/// Logits against transformers' fp32 forward on the committed random checkpoints, whose weights
/// are exact in bf16: held as f32 and as bf16 (`WeightDType`), a dense model's logits are the same
/// bit for bit; in a MoE model an expert given a single token takes the single-row product
/// (sgemv, or kd's bf16 kernel), which sums in another order, and the logits agree to 1e-6 of
/// their largest magnitude.
@Suite struct ForwardParityTests {
    static func expected(_ model: String) throws -> (logits: Tensor, mask: [Bool]) {
        let file = try SafetensorsFile(path: Fixtures.path("forward", model, "expected.safetensors"))
        let logits = try file.load("logits", on: Device(id: 99))
        let mask = try file.bytes("attention_mask").withUnsafeBytes { raw in
            raw.bindMemory(to: Int64.self).map { $0 != 0 }
        }
        return (logits, mask)
    }

    @Test(arguments: Fixtures.forwardModels, [WeightDType.f32, .bf16])
    func logitsMatchTransformers(model: String, dtype: WeightDType) throws {
        let checkpoint = try Checkpoint(directory: Fixtures.path("forward", model))
        let lm = try CausalLM.load(checkpoint, on: try DeviceGroup.make(count: 1), dtype: dtype)
        #expect(lm.lmHead.dtype == (dtype == .bf16 ? .bf16 : .f32))
        let batch = TokenBatch(rows: try Fixtures.tokenRows(model))
        let logits = try lm.logits(batch)
        let (expected, mask) = try Self.expected(model)
        #expect(expected.count == logits.count)
        let error = maxError(logits.data, expected.data, width: lm.spec.vocabSize, mask: mask)
        print("forward parity \(model) \(dtype): max |Δlogits| = \(error)")
        #expect(error < 1e-4)
        if dtype == .bf16 {
            let widened = try CausalLM.load(checkpoint, on: try DeviceGroup.make(count: 1), dtype: .f32).logits(batch)
            if lm.spec.isMoE {
                let largest = widened.toArray().reduce(0) { max($0, abs($1)) }
                let everyRow = [Bool](repeating: true, count: batch.tokenCount)
                #expect(maxError(logits.data, widened.data, width: lm.spec.vocabSize, mask: everyRow) <= 1e-6 * largest)
            } else {
                #expect(logits.toArray() == widened.toArray())
            }
        }
    }

    @Test(arguments: ["dense-tied-gqa", "dense-mqa-headdim-sharded", "moe-8x2"])
    func placementDoesNotChangeLogits(model: String) throws {
        let checkpoint = try Checkpoint(directory: Fixtures.path("forward", model))
        let batch = TokenBatch(rows: try Fixtures.tokenRows(model))
        let reference = try CausalLM.load(checkpoint, on: try DeviceGroup.make(count: 1), dtype: .bf16).logits(batch)
        let everyRow = [Bool](repeating: true, count: batch.tokenCount)
        for devices in [2, 3, 6] {
            let lm = try CausalLM.load(checkpoint, on: try DeviceGroup.make(count: devices), dtype: .bf16)
            #expect(lm.placement.stages.count == devices)
            let logits = try lm.logits(batch)
            #expect(logits.device === lm.group.last)
            #expect(maxError(logits.data, reference.data, width: lm.spec.vocabSize, mask: everyRow) <= 1e-6)
        }
    }
}
