import Foundation
import Testing
import KDCore
@testable import KDModels

/// Incremental decoding with the KV cache equals recomputing the whole sequence.
@Suite struct KVCacheTests {
    static func argmax(_ p: UnsafePointer<Float>, _ n: Int) -> Int {
        var best = 0
        for i in 1..<n where p[i] > p[best] { best = i }
        return best
    }

    @Test(arguments: ["dense-mqa-headdim-sharded", "moe-8x2"], [WeightDType.f32, .bf16])
    func cachedDecodingEqualsFullRecomputation(model name: String, dtype: WeightDType) throws {
        let model = try CausalLM.load(try Checkpoint(directory: Fixtures.path("forward", name)), on: try DeviceGroup.make(count: 2),
                                      dtype: dtype)
        let vocab = model.spec.vocabSize
        var sequences = [[3, 17, 42, 8, 99], [5, 1]]
        let cache = try KVCache(model: model, rows: 2, capacity: 16)
        // Prefill both rows in one call, then decode both a token at a time.
        var logits = try model.extend(sequences.enumerated().map { Extension(row: $0.offset, tokens: $0.element) }, cache: cache)
        for _ in 0..<6 {
            var next: [Int] = []
            for (row, sequence) in sequences.enumerated() {
                let full = try model.logits(TokenBatch(rows: [sequence]))
                let last = full.data + (sequence.count - 1) * vocab
                var worst: Float = 0
                for v in 0..<vocab { worst = max(worst, abs(last[v] - logits.data[row * vocab + v])) }
                #expect(worst < 1e-4, "row \(row) at length \(sequence.count): \(worst)")
                next.append(Self.argmax(logits.data + row * vocab, vocab))
            }
            for row in sequences.indices { sequences[row].append(next[row]) }
            logits = try model.extend(next.enumerated().map { Extension(row: $0.offset, tokens: [$0.element]) }, cache: cache)
        }
        #expect(cache.lengths == [11, 8])
        // A multi-token extension of a row with a past (chunked prefill) agrees too.
        let more = try model.extend([Extension(row: 1, tokens: [7, 7, 9])], cache: cache)
        let full = try model.logits(TokenBatch(rows: [sequences[1] + [7, 7, 9]]))
        let last = full.data + (sequences[1].count + 2) * vocab
        var worst: Float = 0
        for v in 0..<vocab { worst = max(worst, abs(last[v] - more.data[v])) }
        #expect(worst < 1e-4)
        #expect(throws: KDError.self) { _ = try model.extend([Extension(row: 0, tokens: [Int](repeating: 1, count: 6))], cache: cache) }
    }
}
