import Foundation
import KDCore
import KDModels
import KDText

/// On-policy distillation (`distill.on_policy`): with probability `fraction` a micro-batch is
/// replaced by the student's own continuations of its examples' prompts, sampled with the KV cache
/// from the base model and the current LoRA (no dropout), and the divergence is taken over the
/// sampled tokens (no CE: they are the student's, not the data's).
///
/// Every draw comes from a stream keyed by (run.seed, step, micro-batch): whether the micro-batch is
/// on-policy, then the seed of its sampling (each row its own stream of that seed). So a resumed
/// run draws exactly what the uninterrupted one did, with nothing to save but the step.
public struct OnPolicy {
    public let settings: RunConfig.Distill.OnPolicy
    let seed: UInt64
    let maxSeqLen: Int
    let stop: StopCondition

    public init(config: RunConfig, stop: StopCondition) {
        settings = config.distill.onPolicy
        seed = UInt64(config.run.seed)
        maxSeqLen = config.data.maxSeqLen
        self.stop = stop
    }

    /// The prompt of an example: its tokens before the first scored label; nil when the example is
    /// all target (its first token is labelled, as with data.train_on_prompt).
    public static func prompt(of example: Example) -> [Int]? {
        guard let first = example.labels.firstIndex(where: { $0 != Example.ignored }), first >= 1 else { return nil }
        return Array(example.inputIDs[..<first])
    }

    /// Refuses a dataset with an example that has no prompt, naming its line.
    public static func checkPrompts(_ dataset: Dataset, key: String) throws {
        if let bad = dataset.examples.first(where: { prompt(of: $0) == nil }) {
            throw KDError("\(dataset.path):\(bad.line): distill.on_policy needs a prompt in every example of \(key) (tokens before the "
                + "first scored label), and this one is all target (data.train_on_prompt scores every token)")
        }
    }

    private func stream(step: Int, micro: Int) -> RandomGenerator {
        RandomGenerator(seed: seed, stream: RandomGenerator.hash("on_policy"), UInt64(step), UInt64(micro))
    }

    /// Whether micro-batch `micro` of optimizer step `step` (counted from 0) is on-policy.
    public func isOnPolicy(step: Int, micro: Int) -> Bool {
        guard settings.fraction > 0 else { return false }
        var rng = stream(step: step, micro: micro)
        return Double(rng.nextUniform()) < settings.fraction
    }

    /// The on-policy micro-batch of `examples[rows]` (a data-parallel replica's share; all of them
    /// alone): each prompt followed by the student's sampled continuation (at most max_new_tokens,
    /// and within data.max_seq_len for every prompt of the micro-batch), only those tokens scored.
    /// Row i samples from stream i of the micro-batch's seed, whichever replica holds it.
    public func batch(_ examples: [Example], rows: Range<Int>, student: CausalLM, step: Int, micro: Int, padID: Int) throws
        -> PaddedBatch {
        var rng = stream(step: step, micro: micro)
        _ = rng.nextUniform()  // the on-policy draw
        let allPrompts = try examples.map { example in
            guard let prompt = OnPolicy.prompt(of: example) else { throw KDError("line \(example.line): the example has no prompt") }
            return prompt
        }
        let room = allPrompts.map { maxSeqLen - $0.count }.min() ?? 1
        let examples = Array(examples[rows]), prompts = Array(allPrompts[rows])
        let sampling = Sampling(temperature: Float(settings.temperature), topP: settings.topP < 1 ? Float(settings.topP) : nil,
                                seed: rng.next())
        let generations = try Generator(model: student).generate(
            prompts, maxNewTokens: max(1, min(settings.maxNewTokens, room)), sampling: sampling, stop: stop, firstStream: rows.lowerBound)
        let sampled = zip(examples, zip(prompts, generations)).map { example, pair in
            Example(inputIDs: pair.0 + pair.1.ids, labels: [Int](repeating: Example.ignored, count: pair.0.count) + pair.1.ids,
                    line: example.line)
        }
        return PaddedBatch(sampled, padID: padID)
    }
}
