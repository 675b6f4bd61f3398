import Foundation
import Testing

/// kd eval, kd compare and kd plot on tiny models with the real Qwen3 vocabulary and tokenizer.
@Suite(.serialized) struct EvaluateCommandTests {
    static let tokenizer = KDProcess.repository + "/Configs/tokenizer/qwen3"
    static let gsm8k = KDProcess.fixtures + "/data/gsm8k-mini.jsonl"

    /// A teacher and a student (tied, hidden 32, one layer) and a two-step run on GSM8K records.
    static func setUp(_ dir: String) throws {
        for (name, seed) in [("teacher", "1"), ("student", "2")] {
            let made = try KDProcess.run([
                "init", "--preset", "qwen3-0.6b", "--set", "num_hidden_layers=1", "--set", "hidden_size=32",
                "--set", "intermediate_size=64", "--set", "num_attention_heads=2", "--set", "num_key_value_heads=1",
                "--set", "head_dim=16", "--set", "initializer_range=0.2", "--seed", seed, "--tokenizer", tokenizer,
                "--output", "\(dir)/\(name)",
            ])
            #expect(made.status == 0, "\(made.stderr)")
        }
        let yaml = """
            run: {output_dir: \(dir)/run, seed: 3}
            teacher: {path: \(dir)/teacher, devices: [0]}
            student: {path: \(dir)/student, devices: [1]}
            lora: {r: 4, alpha: 8}
            data: {train: \(gsm8k), eval: \(gsm8k)}
            train: {max_steps: 2, batch_size: 2, lr: 1.0e-2, warmup_steps: 0}
            """
        try Data(yaml.utf8).write(to: URL(fileURLWithPath: dir + "/run.yaml"))
        let trained = try KDProcess.run(["train", "--config", dir + "/run.yaml"])
        #expect(trained.status == 0, "\(trained.stderr)")
        #expect(trained.stderr.contains("KL(teacher‖student)"))
    }

    @Test func evalCompareAndPlot() throws {
        let dir = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Self.setUp(dir)

        let evaluated = try KDProcess.run(["eval", "--config", dir + "/run.yaml", "--max-new-tokens", "8", "--plot", dir + "/m.svg"])
        #expect(evaluated.status == 0, "\(evaluated.stderr)")
        let report = KDProcess.json(evaluated.stdout)
        let heldOut = report["held_out"] as? [String: [String: Any]]
        for side in ["base", "distilled"] {
            for key in ["kl", "top1_agreement", "ce", "perplexity", "tokens"] {
                #expect(heldOut?[side]?[key] != nil, "\(side).\(key)")
            }
        }
        #expect((heldOut?["base"]?["tokens"] as? Int ?? 0) > 0)
        let gsm = report["gsm8k_exact_match"] as? [String: Any]
        #expect(gsm?["records"] as? Int == 4)
        #expect((gsm?["base"] as? Double).map { $0 >= 0 && $0 <= 1 } == true)
        let svg = try String(contentsOfFile: dir + "/m.svg", encoding: .utf8)
        #expect(svg.hasPrefix("<svg") && svg.contains("kl_loss") && svg.contains("<polyline"))

        let compared = try KDProcess.run([
            "compare", "--base", dir + "/student", "--adapter", dir + "/run/final_model", "--data", Self.gsm8k,
            "--mode", "quick", "--temperature", "0.1,0.7", "--max-new-tokens", "6", "--output", dir + "/report.json",
        ])
        #expect(compared.status == 0, "\(compared.stderr)")
        #expect(compared.stderr.contains("temperature 0.7"))
        let comparison = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/report.json"))) as? [String: Any]
        let sections = comparison?["sections"] as? [[String: Any]] ?? []
        #expect(sections.count == 2)
        let sample = (sections.first?["samples"] as? [[String: Any]])?.first ?? [:]
        for key in ["prompt", "original_response", "kd_response", "same_response", "original_length", "kd_length",
                    "original_tokens", "kd_tokens", "reference_answer", "original_contains_answer", "kd_contains_answer"] {
            #expect(sample[key] != nil, "\(key)")
        }
        #expect(sample["reference_answer"] as? String == "7")
        let summary = sections.first?["summary"] as? [String: Any] ?? [:]
        for key in ["same_response_rate", "mean_original_length", "mean_kd_length", "length_difference",
                    "original_answer_rate", "kd_answer_rate", "tokens_per_s"] {
            #expect(summary[key] != nil, "\(key)")
        }
        #expect(summary["samples"] as? Int == 4)

        let plotted = try KDProcess.run(["plot", dir + "/run"])
        #expect(plotted.status == 0)
        #expect(FileManager.default.fileExists(atPath: dir + "/run/metrics.svg"))
        let badMode = try KDProcess.run(["compare", "--base", dir + "/student", "--adapter", dir + "/run/final_model",
                                         "--data", Self.gsm8k, "--mode", "fast"])
        #expect(badMode.stderr == "kd: error: --mode must be quick, medium or full\n")
    }
}
