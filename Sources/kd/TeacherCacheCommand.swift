import ArgumentParser
import Foundation
import KDCore
import KDModels
import KDTrain

struct TeacherCacheCommand: KDCommand {
    static let configuration = CommandConfiguration(
        commandName: "teacher-cache",
        abstract: "Run the teacher once over the run's data and cache its top-K logits for training without it.",
        discussion: """
            For every scored token of data.train (and data.eval when set) writes the teacher's K most likely token \
            ids, their raw logits, and the log-sum-exp of the whole row and the log of the probability outside the K \
            ids, both at temperature 1 and at distill.temperature, in safetensors shards with a manifest (teacher \
            fingerprint, data fingerprint, K, temperature). Train from it \
            with data.teacher_cache: DIR (README, "Offline teacher cache"). Each shard is written whole or not at \
            all: run the same command again to finish an interrupted cache. Prints a JSON summary on stdout.
            """)

    @Option(help: "Run config YAML (- for stdin): teacher, data and batch settings.") var config: String
    @Option(name: .customLong("set"), help: "Override a key: key.path=value (repeatable).") var overrides: [String] = []
    @Option(name: .customLong("top-k"), help: "Token ids cached per scored token (1 to the vocabulary size).") var topK: Int
    @Option(help: "Cache directory (default: data.teacher_cache, else <run.output_dir>/teacher-cache).") var output: String?
    @Option(name: .customLong("shard-rows"), help: "Scored tokens per shard (default: about 64 MiB of ids and logits).")
    var shardRows: Int?

    func execute() throws {
        let run = try RunConfig.load(path: config, overrides: overrides)
        let directory = output ?? run.data.teacherCache ?? (run.run.outputDir as NSString).appendingPathComponent("teacher-cache")
        if let shardRows, shardRows < 1 { throw KDError("--shard-rows must be at least 1") }
        let start = ContinuousClock.now
        let terminal = Console.stderrIsTerminal
        var computed = 0, lastShown = ContinuousClock.now - .seconds(10)
        let manifest = try TeacherCacheWriter.write(config: run, k: topK, output: directory, shardRows: shardRows, onProgress: { p in
            if !p.skipped { computed = p.rowsDone }
            let now = ContinuousClock.now
            let shardDone = p.skipped || p.rowsDone == p.rows
            guard terminal || shardDone || (now - lastShown).seconds >= 10 else { return }
            lastShown = now
            let seconds = (now - start).seconds
            let rate = Double(computed) / max(seconds, 1e-9)
            let text = String(format: "%@: shard %d/%d  %d/%d tokens  %.0f tok/s%@", p.split, p.shard, p.shards, p.rowsDone, p.rows,
                              rate, p.skipped ? "  (already written)" : "")
            if terminal {
                let width = 20, filled = p.rows > 0 ? width * p.rowsDone / p.rows : width
                let bar = String(repeating: "█", count: filled) + String(repeating: "·", count: width - filled)
                let eta = rate > 0 ? Int(Double(p.rows - p.rowsDone) / rate) : 0
                FileHandle.standardError.write(Data("\r\u{1B}[2K[\(bar)] \(text)  ETA \(eta / 60):\(String(format: "%02d", eta % 60))".utf8))
            } else {
                Console.info(text)
            }
        }, onNote: { Console.info($0) })
        if terminal { FileHandle.standardError.write(Data("\n".utf8)) }
        let files = manifest.splits.values.flatMap { $0.shards.map { ($0.file as NSString) } }
        let bytes = files.reduce(0) { total, name in
            let path = (directory as NSString).appendingPathComponent(name as String)
            return total + ((try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0)
        }
        let rows = manifest.splits.values.reduce(0) { $0 + $1.rows }
        Console.info("wrote \(directory): \(rows) tokens, K = \(manifest.topK), \(formatBytes(bytes))")
        Console.json([
            "output": directory, "top_k": manifest.topK, "vocab": manifest.vocab,
            "splits": manifest.splits.mapValues { ["rows": $0.rows, "examples": $0.examples, "shards": $0.shards.count] },
            "bytes": bytes, "bytes_per_token": Double(bytes) / Double(max(1, rows)), "seconds": (ContinuousClock.now - start).seconds,
        ])
    }
}
