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

    /// A MoE block runs its experts in groups side by side; how many groups does not change a bit,
    /// nor does holding the experts in bf16 rather than f32 where every expert has 2 to
    /// `WeightProducts.expertRows` tokens (kd_gemm_nt reads either dtype in one summation order).
    @Test func moeBlockBitsDoNotDependOnThreadsOrHeldDType() throws {
        let checkpoint = try Checkpoint(directory: Fixtures.path("forward", "moe-8x2"))
        func block(_ dtype: WeightDType) throws -> SparseMoE {
            let lm = try CausalLM.load(checkpoint, on: try DeviceGroup.make(count: 1), dtype: dtype)
            guard case .sparse(let moe) = lm.layers[0].feedForward else { throw KDError("layer 0 of moe-8x2 is not sparse") }
            return moe
        }
        let (bf16, f32) = (try block(.bf16), try block(.f32))
        #expect(bf16.experts[0].gateProj.weight.dtype == .bf16 && f32.experts[0].gateProj.weight.dtype == .f32)
        let rows = 40, hidden = bf16.router.shape[1]
        var random = RandomGenerator(seed: 7)
        let x = try Tensor((0..<(rows * hidden)).map { _ in random.nextUniform() * 2 - 1 }, shape: [rows, hidden], on: f32.router.device)
        let reference = try bf16.forward(x, rows: rows, parts: 1).toArray()
        for parts in [2, 3, 8] { #expect(try bf16.forward(x, rows: rows, parts: parts).toArray() == reference) }
        // 40 tokens × top-2 over 8 experts: every expert gets several.
        #expect(try f32.forward(x, rows: rows, parts: 2).toArray() == reference)
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
