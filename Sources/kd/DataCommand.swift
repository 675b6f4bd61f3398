import ArgumentParser
import Foundation
import KDCore
import KDText
import KDTrain

struct DataCommand: KDCommand {
    static let configuration = CommandConfiguration(
        commandName: "data",
        abstract: "Check a run's dataset: counts, truncations and a rendered sample (--stats), or the tokenized examples.",
        discussion: "Without --stats, prints each example as {\"input_ids\": [...], \"labels\": [...]} (the tokens format).")

    @Option(help: "Run config YAML (- for stdin).") var config: String
    @Option(name: .customLong("set"), help: "Override a key: key.path=value (repeatable).") var overrides: [String] = []
    @Option(help: "Which file: train or eval.") var split: String = "train"
    @Flag(help: "Print statistics (JSON on stdout) and a rendered sample (stderr).") var stats = false

    func execute() throws {
        let run = try RunConfig.load(path: config, overrides: overrides)
        guard split == "train" || split == "eval" else { throw KDError("--split must be train or eval") }
        let dataset = try run.loadDataset(split == "train" ? run.data.train : run.data.eval, key: "data.\(split)")
        try run.checkVocabulary(dataset)
        guard stats else {
            for example in dataset.examples { Console.json(["input_ids": example.inputIDs, "labels": example.labels]) }
            return
        }
        let s = dataset.stats
        Console.json([
            "path": dataset.path, "format": dataset.format.rawValue, "lines": s.lines, "examples": dataset.examples.count,
            "skipped": s.skipped.count, "truncated": s.truncated, "dropped_empty_target": s.droppedEmptyTarget,
            "tokens": s.tokens, "scored_tokens": s.scoredTokens, "longest": s.longest, "shortest": s.shortest,
            "max_seq_len": run.data.maxSeqLen,
        ])
        Console.info("""
            \(dataset.path): \(dataset.format.rawValue), \(dataset.examples.count) examples from \(s.lines) lines
              tokens \(s.tokens) (\(s.scoredTokens) scored), lengths \(s.shortest)–\(s.longest), mean \(s.tokens / max(1, dataset.examples.count))
              truncated to \(run.data.maxSeqLen): \(s.truncated); dropped with nothing to score: \(s.droppedEmptyTarget); bad lines skipped: \(s.skipped.count)
            """)
        for (line, problem) in s.skipped.prefix(5) { Console.info("  skipped line \(line): \(problem)") }
        if let tokenizer = try run.loadTokenizer(required: false), let example = dataset.examples.first {
            Console.info("sample (line \(example.line)); the scored part is between ⟦ and ⟧:")
            Console.info(try renderSample(example, tokenizer: tokenizer))
        }
    }

    /// The example's text with each run of scored tokens bracketed.
    func renderSample(_ example: Example, tokenizer: Tokenizer) throws -> String {
        var out = ""
        var start = 0
        while start < example.inputIDs.count {
            let scored = example.labels[start] != Example.ignored
            var end = start
            while end < example.inputIDs.count && (example.labels[end] != Example.ignored) == scored { end += 1 }
            let text = try tokenizer.decode(Array(example.inputIDs[start..<end]))
            out += scored ? "⟦" + text + "⟧" : text
            start = end
        }
        return out
    }
}
