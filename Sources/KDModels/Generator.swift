import Foundation
import KDCore

/// What ends a row's generation, besides max_new_tokens.
public struct StopCondition: Sendable {
    public var tokenIDs: Set<Int>
    public var strings: [String]

    public init(tokenIDs: Set<Int> = [], strings: [String] = []) {
        self.tokenIDs = tokenIDs
        self.strings = strings
    }

    /// The stop tokens of a model directory: config.json's and generation_config.json's eos ids
    /// and the tokenizer's eos token (`eosID`).
    public static func defaults(modelDirectory: String, spec: ModelSpec, eosID: Int?) -> StopCondition {
        var ids = Set(spec.eosTokenIDs)
        if let eosID { ids.insert(eosID) }
        let path = (modelDirectory as NSString).appendingPathComponent("generation_config.json")
        if let data = try? InputFile.read(path, limit: 1 << 24),
           let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] {
            if let one = object["eos_token_id"] as? Int { ids.insert(one) }
            if let many = object["eos_token_id"] as? [Int] { ids.formUnion(many) }
        }
        return StopCondition(tokenIDs: ids)
    }
}

public struct Generation: Sendable {
    public enum Finish: String, Sendable { case stop, length }
    public var ids: [Int] = []
    public var finish = Finish.length
}

/// Batch generation with a KV cache: every prompt is prefilled, then all unfinished rows advance
/// one token per step together; each row stops on its own.
public struct Generator {
    public let model: CausalLM

    public init(model: CausalLM) {
        self.model = model
    }

    /// Generates for each prompt. `onToken(row, id)` sees every token as it is chosen; the stop
    /// strings are checked on the text `decode` gives (when a tokenizer is at hand). Prompt i
    /// samples from stream `firstStream + i` of the sampling seed (a batch's rows held by
    /// several processes sample as they would together).
    public func generate(
        _ prompts: [[Int]], maxNewTokens: Int, sampling: Sampling, stop: StopCondition,
        decode: (([Int]) -> String)? = nil, firstStream: Int = 0, onToken: (Int, Int) -> Void = { _, _ in }
    ) throws -> [Generation] {
        guard !prompts.isEmpty else { return [] }
        guard prompts.allSatisfy({ !$0.isEmpty }) else { throw KDError("a prompt needs at least one token") }
        try sampling.validate()
        let capacity = (prompts.map(\.count).max() ?? 0) + maxNewTokens
        let cache = try KVCache(model: model, rows: prompts.count, capacity: capacity)
        var rngs = prompts.indices.map { RandomGenerator(seed: sampling.seed, stream: UInt64(firstStream + $0)) }
        var results = [Generation](repeating: Generation(), count: prompts.count)
        var active = Array(prompts.indices)
        let vocab = model.spec.vocabSize
        // Prefill row by row (each is one batch of its prompt), then decode together.
        var logitsByRow: [Int: Tensor] = [:]
        for row in prompts.indices {
            logitsByRow[row] = try model.extend([Extension(row: row, tokens: prompts[row])], cache: cache)
        }
        var pending = active.map { (row: $0, logits: logitsByRow[$0]!, index: 0) }
        for _ in 0..<maxNewTokens {
            var nextTokens: [(row: Int, id: Int)] = []
            for (row, logits, index) in pending {
                let id = sampling.next(logits.data + index * vocab, count: vocab, rng: &rngs[row])
                results[row].ids.append(id)
                onToken(row, id)
                if stop.tokenIDs.contains(id) {
                    results[row].finish = .stop
                } else if !stop.strings.isEmpty, let decode,
                          stop.strings.contains(where: decode(results[row].ids).hasSuffix) {
                    results[row].finish = .stop
                } else {
                    nextTokens.append((row, id))
                }
            }
            active = nextTokens.map(\.row)
            if active.isEmpty || results[active[0]].ids.count >= maxNewTokens { break }
            let logits = try model.extend(nextTokens.map { Extension(row: $0.row, tokens: [$0.id]) }, cache: cache)
            pending = nextTokens.enumerated().map { (row: $0.element.row, logits: logits, index: $0.offset) }
        }
        return results
    }
}
