import Foundation
import KDCore
import KDModels
import KDText

/// Base student vs distilled student, side by side on the same prompts, seeds and temperatures.
public struct Comparison {
    public enum Mode: String, CaseIterable, Sendable {
        case quick, medium, full

        /// quick: the first 10 records; medium: 50 drawn with the seed; full: all.
        public func select(_ count: Int, seed: UInt64) -> [Int] {
            switch self {
            case .quick: return Array(0..<min(10, count))
            case .medium:
                return Array(BatchSampler.order(count: count, shuffle: true, seed: seed, epoch: 0).prefix(50)).sorted()
            case .full: return Array(0..<count)
            }
        }

        public var batchSize: Int { self == .full ? 16 : 10 }
    }

    public struct Sample {
        public let index: Int
        public let prompt: String
        public let original: String
        public let distilled: String
        public let originalTokens: Int
        public let distilledTokens: Int
        public let reference: String?

        public var same: Bool { original == distilled }
        public var originalHasAnswer: Bool? { reference.map { EvalRecords.contains(original, answer: $0) } }
        public var distilledHasAnswer: Bool? { reference.map { EvalRecords.contains(distilled, answer: $0) } }

        public var json: [String: Any] {
            var object: [String: Any] = [
                "index": index, "prompt": prompt, "original_response": original, "kd_response": distilled,
                "same_response": same, "original_length": original.count, "kd_length": distilled.count,
                "original_tokens": originalTokens, "kd_tokens": distilledTokens,
            ]
            if let reference {
                object["reference_answer"] = reference
                object["original_contains_answer"] = originalHasAnswer!
                object["kd_contains_answer"] = distilledHasAnswer!
            }
            return object
        }
    }

    public struct Section {
        public let temperature: Float
        public let samples: [Sample]
        public let tokensPerSecond: Double

        public var summary: [String: Any] {
            let n = Double(max(1, samples.count))
            let originalLength = Double(samples.reduce(0) { $0 + $1.original.count }) / n
            let distilledLength = Double(samples.reduce(0) { $0 + $1.distilled.count }) / n
            var summary: [String: Any] = [
                "samples": samples.count, "same_response_rate": Double(samples.filter(\.same).count) / n,
                "mean_original_length": originalLength, "mean_kd_length": distilledLength,
                "length_difference": distilledLength - originalLength, "tokens_per_s": tokensPerSecond,
            ]
            let scored = samples.filter { $0.reference != nil }
            if !scored.isEmpty {
                summary["original_answer_rate"] = Double(scored.filter { $0.originalHasAnswer! }.count) / Double(scored.count)
                summary["kd_answer_rate"] = Double(scored.filter { $0.distilledHasAnswer! }.count) / Double(scored.count)
            }
            return summary
        }
    }

    public let model: CausalLM
    public let tokenizer: Tokenizer
    public let stop: StopCondition
    public let maxNewTokens: Int

    public init(model: CausalLM, tokenizer: Tokenizer, stop: StopCondition, maxNewTokens: Int) {
        self.model = model
        self.tokenizer = tokenizer
        self.stop = stop
        self.maxNewTokens = maxNewTokens
    }

    /// Responses of the base (adapters detached) and distilled model to `records` at `temperature`.
    public func section(_ records: [(index: Int, record: EvalRecord)], temperature: Float, seed: UInt64, batchSize: Int) throws -> Section {
        let prompts = try records.map { try Prompt.messages($0.record.prompt).tokens(tokenizer: tokenizer, enableThinking: false) }
        let sampling = Sampling(temperature: temperature, seed: seed)
        var generated = 0
        let start = ContinuousClock.now
        func responses() throws -> [[Int]] {
            var out: [[Int]] = []
            for batchStart in stride(from: 0, to: prompts.count, by: batchSize) {
                let batch = Array(prompts[batchStart..<min(prompts.count, batchStart + batchSize)])
                let results = try Generator(model: model).generate(batch, maxNewTokens: maxNewTokens, sampling: sampling, stop: stop)
                out += results.map { result in
                    generated += result.ids.count
                    return result.finish == .stop ? Array(result.ids.dropLast()) : result.ids
                }
            }
            return out
        }
        let original = try model.withAdaptersDetached { try responses() }
        let distilled = try responses()
        let seconds = (ContinuousClock.now - start).seconds
        let samples = try records.indices.map { i in
            Sample(index: records[i].index, prompt: records[i].record.promptText,
                   original: try tokenizer.decode(original[i], skipUnknown: true),
                   distilled: try tokenizer.decode(distilled[i], skipUnknown: true),
                   originalTokens: original[i].count, distilledTokens: distilled[i].count,
                   reference: records[i].record.referenceAnswer)
        }
        return Section(temperature: temperature, samples: samples, tokensPerSecond: Double(generated) / seconds)
    }

    /// A readable table of a section: one line per sample and the summary.
    public static func table(_ section: Section) -> String {
        // Pads or cuts (with …) to `width` terminal columns, so wide characters keep the columns aligned.
        func clip(_ text: String, _ width: Int) -> String {
            let flat = String(text.map { character -> Character in
                if character.isNewline { return "⏎" }
                if character == "\t" { return "⇥" }
                return character.unicodeScalars.first?.properties.generalCategory == .control ? "�" : character
            })
            let total = flat.reduce(0) { $0 + columns($1) }
            if total <= width { return flat + String(repeating: " ", count: width - total) }
            var kept = "", used = 0
            for character in flat {
                let next = columns(character)
                if used + next > width - 1 { break }
                kept.append(character)
                used += next
            }
            return kept + "…" + String(repeating: " ", count: width - 1 - used)
        }
        var lines = ["temperature \(section.temperature)",
                     "  #    same  len base→kd   base response                  kd response"]
        for sample in section.samples {
            let answer = sample.reference == nil ? "" : "  answer \(sample.originalHasAnswer! ? "✓" : "✗")→\(sample.distilledHasAnswer! ? "✓" : "✗")"
            lines.append(String(format: "  %-4d %@  %5d→%-5d  ", sample.index, sample.same ? "yes " : "no  ", sample.original.count,
                                sample.distilled.count) + clip(sample.original, 30) + " " + clip(sample.distilled, 30) + answer)
        }
        let s = section.summary
        var summary = String(format: "  same response %.0f%%; mean length %.0f → %.0f (%+.0f); %.1f tokens/s",
                             (s["same_response_rate"] as! Double) * 100, s["mean_original_length"] as! Double,
                             s["mean_kd_length"] as! Double, s["length_difference"] as! Double, s["tokens_per_s"] as! Double)
        if let a = s["original_answer_rate"] as? Double, let b = s["kd_answer_rate"] as? Double {
            summary += String(format: "; answer rate %.0f%% → %.0f%%", a * 100, b * 100)
        }
        lines.append(summary)
        return lines.joined(separator: "\n")
    }
}

extension Comparison {
    /// Terminal columns of a character: 2 for East Asian wide and fullwidth characters and emoji,
    /// 0 for control and zero-width format characters, else 1 (combining marks ride on their base).
    static func columns(_ character: Character) -> Int {
        guard let scalar = character.unicodeScalars.first else { return 0 }
        let properties = scalar.properties
        if properties.generalCategory == .control || properties.generalCategory == .format { return 0 }
        if properties.isEmojiPresentation { return 2 }
        switch scalar.value {
        case 0x1100...0x115F, 0x2E80...0x303E, 0x3041...0x33FF, 0x3400...0x4DBF, 0x4E00...0x9FFF, 0xA000...0xA4CF,
             0xAC00...0xD7A3, 0xF900...0xFAFF, 0xFE30...0xFE4F, 0xFF00...0xFF60, 0xFFE0...0xFFE6, 0x20000...0x3FFFD:
            return 2
        default:
            return 1
        }
    }
}

/// Task scores of a student with and without its adapters: GSM8K exact match of the final
/// number, HumanEval pass@1 in the sandbox.
public struct TaskScores {
    public let model: CausalLM
    public let tokenizer: Tokenizer
    public let stop: StopCondition
    public let maxNewTokens: Int
    public let batchSize: Int

    public init(model: CausalLM, tokenizer: Tokenizer, stop: StopCondition, maxNewTokens: Int, batchSize: Int) {
        self.model = model
        self.tokenizer = tokenizer
        self.stop = stop
        self.maxNewTokens = maxNewTokens
        self.batchSize = batchSize
    }

    /// Greedy responses to every record's prompt.
    func responses(_ records: [EvalRecord]) throws -> [String] {
        let prompts = try records.map { try Prompt.messages($0.prompt).tokens(tokenizer: tokenizer, enableThinking: false) }
        var out: [String] = []
        for start in stride(from: 0, to: prompts.count, by: batchSize) {
            let batch = Array(prompts[start..<min(prompts.count, start + batchSize)])
            for result in try Generator(model: model).generate(batch, maxNewTokens: maxNewTokens, sampling: Sampling(), stop: stop) {
                out.append(try tokenizer.decode(result.finish == .stop ? Array(result.ids.dropLast()) : result.ids, skipUnknown: true))
            }
        }
        return out
    }

    /// The fraction of records the model gets right, base then distilled.
    public func score(_ format: DataFormat, _ records: [EvalRecord], sandbox: Sandbox?) throws -> (base: Double, distilled: Double)? {
        let check: (EvalRecord, String) -> Bool
        switch format {
        case .gsm8k:
            check = { record, response in GSM8K.isCorrect(generated: response, reference: "#### " + (record.referenceAnswer ?? "")) }
        case .humaneval:
            guard let sandbox else { return nil }
            check = { record, response in
                let task = record.humanEval!
                return sandbox.run(HumanEval.program(prompt: task.prompt, completion: response, test: task.test,
                                                     entryPoint: task.entryPoint)).passed
            }
        default:
            return nil
        }
        func accuracy(_ responses: [String]) -> Double {
            Double(zip(records, responses).filter { check($0, $1) }.count) / Double(max(1, records.count))
        }
        let base = try model.withAdaptersDetached { try responses(records) }
        return (accuracy(base), accuracy(try responses(records)))
    }
}
