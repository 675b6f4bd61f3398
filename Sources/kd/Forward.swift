import ArgumentParser
import Foundation
import KDCore
import KDEval
import KDModels

struct Forward: KDCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a model on rows of token ids and write the logits.",
        discussion: "Each line of --tokens is {\"input_ids\": [...]}; rows are right-padded to the longest with an "
            + "attention mask. Writes logits [B, S, V] (f32) and attention_mask [B, S] (i64).")

    @Option(help: "Model directory.") var model: String
    @Option(help: "JSONL file of {\"input_ids\": [...]} rows.") var tokens: String
    @Option(help: "Output safetensors file.") var output: String
    @Option(help: "Device ids to shard the layers over, e.g. 0,1,2.") var devices: String = "0"
    @Option(help: "How frozen weights are held: auto (bf16 checkpoints as bf16), bf16 or f32.") var dtype: String = "auto"
    @Option(help: "A PEFT LoRA adapter to run with the model.") var adapter: String?
    @Option(name: .customLong("batch-rows"), help: "Rows per forward pass.") var batchRows: Int = 8
    @Option(help: "BLAS threads per call (default: one per core).") var threads: Int?
    @Flag(help: "Print a JSON summary on stdout.") var json = false

    func execute() throws {
        try setThreads(threads)
        guard batchRows >= 1 else { throw KDError("--batch-rows must be at least 1") }
        try requireReplaceableFile(output)
        let loadStart = ContinuousClock.now
        let lm = try loadModel(try Checkpoint(directory: model), devices: devices, dtype: dtype, adapter: adapter)
        let loadSeconds = (ContinuousClock.now - loadStart).seconds
        for line in lm.placement.describe(devices: lm.group.devices) { Console.info("  " + line) }
        let summary = try ForwardRun.run(model: lm, tokensPath: tokens, outputPath: output, batchRows: batchRows)
        let rss = peakResidentBytes()
        Console.info(String(
            format: "wrote %@: %d rows × %d positions; load %.2f s, forward %.3f s, %.1f tokens/s, peak RSS %@",
            output, summary.rows, summary.sequenceLength, loadSeconds, summary.forwardSeconds, summary.tokensPerSecond,
            formatBytes(rss)))
        if json {
            Console.json([
                "output": output, "rows": summary.rows, "sequence_length": summary.sequenceLength,
                "tokens": summary.tokens, "load_s": loadSeconds, "forward_s": summary.forwardSeconds,
                "layers_s": summary.layersSeconds, "head_s": summary.headSeconds,
                "tokens_per_s": summary.tokensPerSecond, "peak_rss_bytes": rss, "threads": BLAS.threads,
            ])
        }
    }
}
