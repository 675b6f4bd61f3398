import ArgumentParser
import Foundation
import KDCore
import KDEval
import KDModels
import KDText
import KDTrain

struct Compare: KDCommand {
    static let configuration = CommandConfiguration(
        abstract: "Base vs distilled student, side by side on a data file's prompts, at one or more temperatures.",
        discussion: "quick = the first 10 records, medium = 50 drawn with --seed, full = all. A table goes to stderr; "
            + "the report (JSON) to --output, or to stdout.")

    @Option(help: "The base (student) model directory.") var base: String
    @Option(help: "The distilled LoRA adapter (PEFT directory).") var adapter: String
    @Option(help: "JSONL prompts (chat, prompt_response, gsm8k or humaneval).") var data: String
    @Option(help: "quick, medium or full.") var mode: String = "quick"
    @Option(help: "Temperatures, comma-separated (0 = greedy).") var temperature: String = "0.7"
    @Option(help: "Seed of sampling and of the medium selection.") var seed: UInt64 = 42
    @Option(name: .customLong("max-new-tokens"), help: "Most tokens per response.") var maxNewTokens: Int = 256
    @Option(help: "Write the report here instead of stdout.") var output: String?
    @Option(help: "Device ids for the student's layers.") var devices: String = "0"
    @Option(help: "How frozen weights are held: auto (bf16 checkpoints as bf16), bf16 or f32.") var dtype: String = "auto"
    @Option(help: "BLAS threads per call.") var threads: Int?

    func execute() throws {
        try setThreads(threads)
        guard let selection = Comparison.Mode(rawValue: mode) else { throw KDError("--mode must be quick, medium or full") }
        let temperatures = try temperature.split(separator: ",").map { text -> Float in
            guard let t = Float(text.trimmingCharacters(in: .whitespaces)), t >= 0 else {
                throw KDError("--temperature '\(temperature)': expected numbers such as 0.1,0.7,1.2")
            }
            return t
        }
        guard !temperatures.isEmpty else { throw KDError("--temperature needs at least one value") }
        let (_, records) = try EvalRecords.read(data)
        let tokenizer = try Tokenizer.load(directory: base)
        let model = try loadModel(try Checkpoint(directory: base), devices: devices, dtype: dtype, adapter: adapter)
        let comparison = Comparison(model: model, tokenizer: tokenizer,
                                    stop: StopCondition.defaults(modelDirectory: base, spec: model.spec, eosID: tokenizer.eosID),
                                    maxNewTokens: maxNewTokens)
        let chosen = selection.select(records.count, seed: seed).map { ($0, records[$0]) }
        var sections: [[String: Any]] = []
        for t in temperatures {
            let section = try comparison.section(chosen, temperature: t, seed: seed, batchSize: min(selection.batchSize, chosen.count))
            Console.info(Comparison.table(section))
            sections.append(["temperature": Double(t), "summary": section.summary, "samples": section.samples.map(\.json)])
        }
        let report: [String: Any] = ["base": base, "adapter": adapter, "data": data, "mode": mode, "seed": seed,
                                     "max_new_tokens": maxNewTokens, "sections": sections]
        if let output {
            try writeJSON(report, to: output)
            Console.info("wrote \(output)")
        } else {
            Console.json(report)
        }
    }
}

struct Evaluate: KDCommand {
    static let configuration = CommandConfiguration(
        commandName: "eval",
        abstract: "Score a run's student, base vs distilled, on held-out data.",
        discussion: "Held-out KL(teacher‖student) at the run's temperature, top-1 agreement with the teacher, student CE and "
            + "perplexity; on GSM8K-format data the exact match of the final number, on HumanEval records pass@1 (the "
            + "completion runs with its tests in a sandbox). JSON on stdout, a table on stderr.")

    @Option(help: "Run config YAML.") var config: String
    @Option(name: .customLong("set"), help: "Override a key: key.path=value (repeatable).") var overrides: [String] = []
    @Option(help: "The distilled adapter (default: <output_dir>/final_model).") var adapter: String?
    @Option(help: "Held-out JSONL (default: data.eval).") var data: String?
    @Option(name: .customLong("max-new-tokens"), help: "Most tokens per generated answer.") var maxNewTokens: Int = 384
    @Flag(name: .customLong("no-tasks"), help: "Skip the generation-based task scores.") var noTasks = false
    @Option(help: "Also write an SVG of the run's metrics.jsonl here.") var plot: String?
    @Option(help: "How both models' frozen weights are held (auto, bf16 or f32); default: the config's teacher.dtype and student.dtype.")
    var dtype: String?

    func execute() throws {
        let held = try dtype.map { try WeightDType(parsing: $0, what: "--dtype").rawValue }
        var run = try RunConfig.load(
            path: config, overrides: overrides + (held.map { ["teacher.dtype=\($0)", "student.dtype=\($0)"] } ?? []))
        // Held-out figures are against the live teacher, also for a run trained from a cache.
        run.data.teacherCache = nil
        let adapterDirectory = adapter ?? (run.run.outputDir as NSString).appendingPathComponent("final_model")
        guard let dataPath = data ?? run.data.eval else { throw KDError("give --data or set data.eval") }
        let dataset = try run.loadDataset(dataPath, key: "data.eval")
        let models = try RunModels.load(run) { Console.info($0) }
        for note in models.notes { Console.info(note) }
        try PEFTAdapter.attach(directory: adapterDirectory, to: models.student)
        let (base, distilled) = try Evaluation.baseAndAdapted(models.pass(run), dataset: dataset,
                                                              batchSize: run.train.batchSize, padID: models.padID)
        Console.info(Evaluation.table(base: base, adapted: distilled, title: "held-out (\(dataPath), \(distilled.tokens) scored tokens):"))
        var report: [String: Any] = ["data": dataPath, "adapter": adapterDirectory,
                                     "held_out": ["base": base.json, "distilled": distilled.json]]
        if !noTasks, dataset.format == .gsm8k || dataset.format == .humaneval, let tokenizer = models.tokenizer {
            let (format, records) = try EvalRecords.read(dataPath, format: dataset.format)
            let sandbox = format == .humaneval ? try Sandbox.make() : nil
            if let sandbox { Console.info("HumanEval sandbox: \(sandbox.isolation)") }
            let scores = TaskScores(model: models.student, tokenizer: tokenizer,
                                    stop: StopCondition.defaults(modelDirectory: run.student.path, spec: models.student.spec, eosID: tokenizer.eosID),
                                    maxNewTokens: maxNewTokens, batchSize: max(1, run.train.batchSize))
            if let (a, b) = try scores.score(format, records, sandbox: sandbox) {
                let name = format == .gsm8k ? "gsm8k_exact_match" : "humaneval_pass@1"
                report[name] = ["base": a, "distilled": b, "records": records.count]
                Console.info(String(format: "  %-22@ %11.1f%% %11.1f%% %+9.1f pts", name, a * 100, b * 100, (b - a) * 100))
            }
        }
        if let plot {
            let metrics = (run.run.outputDir as NSString).appendingPathComponent("metrics.jsonl")
            try writeDurably(Data(MetricsPlot.svg(try MetricsPlot.read(metrics), title: run.run.outputDir).utf8), to: plot)
            Console.info("wrote \(plot)")
        }
        Console.json(report)
    }
}

struct Plot: KDCommand {
    static let configuration = CommandConfiguration(
        abstract: "Draw a run's metrics.jsonl (loss, kl_loss, ce_loss, grad_norm against step) as an SVG.")

    @Argument(help: "The run's output directory (or a metrics.jsonl file).") var run: String
    @Option(help: "The SVG to write (default: <run>/metrics.svg).") var output: String?

    func execute() throws {
        var isDirectory: ObjCBool = false
        _ = FileManager.default.fileExists(atPath: run, isDirectory: &isDirectory)
        let metrics = isDirectory.boolValue ? (run as NSString).appendingPathComponent("metrics.jsonl") : run
        let target = output ?? ((isDirectory.boolValue ? run : (run as NSString).deletingLastPathComponent) as NSString)
            .appendingPathComponent("metrics.svg")
        let points = try MetricsPlot.read(metrics)
        try writeDurably(Data(MetricsPlot.svg(points, title: run).utf8), to: target)
        Console.info("wrote \(target) (\(points.count) steps)")
    }
}
