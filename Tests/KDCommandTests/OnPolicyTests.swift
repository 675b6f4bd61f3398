import Foundation
import Testing
import KDCore
import KDModels

/// On-policy distillation (`distill.on_policy`) on the dense-teacher training fixture.
///
/// Against torch (Scripts/make_train_fixtures.py, dense-teacher/on-policy.safetensors): with
/// fraction 1 and temperature 0 the student (base + adapter-init, no dropout) continues the first
/// two examples' prompts greedily for 6 tokens, and the loss is α·T²·mean D (jsd, β = 0.5, T = 2)
/// over the 12 sampled tokens, with no CE. The reference's top-two logit gap is at least 0.28 at
/// every generated token, so f32 rounding cannot change a choice; loss, divergence, kl_loss and
/// grad_norm, and every LoRA gradient, are held to TrainParityTests' tolerances.
@Suite struct OnPolicyTests {
    static let fixture = KDProcess.fixtures + "/train/dense-teacher"

    @Test func greedyOnPolicyStepMatchesTorch() throws {
        let out = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        let settings = ["distill.loss=jsd", "distill.jsd_beta=0.5", "distill.temperature=2", "train.max_steps=1",
                        "distill.on_policy.fraction=1", "distill.on_policy.temperature=0", "distill.on_policy.max_new_tokens=6"]
        let lines = try TrainParityTests.train(Self.fixture, output: out, settings.flatMap { ["--set", $0] })
        try #require(lines.count == 1)
        #expect(lines[0]["on_policy_tokens"] as? Int == 12)
        #expect(lines[0]["scored_tokens"] as? Int == 12)
        let expected = try SafetensorsFile(path: Self.fixture + "/on-policy.safetensors")
        let worst = try TrainParityTests.compare(
            prefix: "on-policy-jsd-b0.5-T2", label: "on-policy", metrics: ["loss", "divergence", "kl_loss", "ce_loss", "grad_norm"],
            line: lines[0], gradientsPath: out + "/gradients/step-1.safetensors", expected: expected)
        print("on-policy step 1: worst error / tolerance: gradients \(worst.gradients), metrics \(worst.metrics)")
    }

    /// A run mixing on- and off-policy micro-batches, with dropout and sampling at temperature 1,
    /// stopped and resumed, ends with the adapter of the uninterrupted run, byte for byte.
    @Test func aResumedMixedRunIsBitIdentical() throws {
        let out = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        let common = ["train", "--config", Self.fixture + "/run.yaml", "--set", "teacher.path=\(Self.fixture)/teacher",
                      "--set", "student.path=\(Self.fixture)/student", "--set", "data.train=\(Self.fixture)/tokens.jsonl",
                      "--set", "lora.dropout=0.1", "--set", "train.batch_size=1", "--set", "train.grad_accum_steps=2",
                      "--set", "train.max_steps=4", "--set", "distill.on_policy.fraction=0.5",
                      "--set", "distill.on_policy.max_new_tokens=5", "--set", "distill.on_policy.top_p=0.9"]
        let whole = try KDProcess.run(common + ["--set", "run.output_dir=\(out)/whole"])
        #expect(whole.status == 0, "\(whole.stderr)")
        let steps = whole.stdout.split(separator: "\n").map { KDProcess.json(String($0)) }
        let onPolicyTokens = steps.compactMap { $0["on_policy_tokens"] as? Int }
        // Both kinds occur in these 4 steps × 2 micro-batches (the draws are fixed by run.seed).
        #expect(onPolicyTokens.contains { $0 > 0 } && steps.contains { ($0["on_policy_tokens"] as? Int) != $0["scored_tokens"] as? Int },
                "\(onPolicyTokens)")
        #expect(try KDProcess.run(common + ["--set", "run.output_dir=\(out)/split", "--set", "train.max_steps=2"]).status == 0)
        let resumed = try KDProcess.run(common + ["--set", "run.output_dir=\(out)/split", "--resume"])
        #expect(resumed.status == 0, "\(resumed.stderr)")
        let name = "/final_model/adapter_model.safetensors"
        #expect(FileManager.default.contents(atPath: out + "/whole" + name) == FileManager.default.contents(atPath: out + "/split" + name))
        let resumedSteps = resumed.stdout.split(separator: "\n").map { KDProcess.json(String($0)) }
        #expect(resumedSteps.map { $0["loss"] as? Double } == steps.suffix(2).map { $0["loss"] as? Double })
    }

    /// Each one line and exit 1, before any weight is read.
    @Test func badOnPolicySettingsAreRefused() throws {
        let out = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        let base = ["train", "--config", Self.fixture + "/run.yaml", "--set", "teacher.path=\(Self.fixture)/teacher",
                    "--set", "student.path=\(Self.fixture)/student", "--set", "data.train=\(Self.fixture)/tokens.jsonl",
                    "--set", "run.output_dir=\(out)/run"]
        let allTarget = out + "/all-target.jsonl"
        try "{\"input_ids\": [1, 2, 3], \"labels\": [-100, 2, 3]}\n{\"input_ids\": [4, 5, 6], \"labels\": [4, 5, 6]}\n"
            .write(toFile: allTarget, atomically: true, encoding: .utf8)
        let cases: [(settings: [String], message: String)] = [
            (["distill.on_policy.fraction=1.5"], "distill.on_policy.fraction (1.5) must be in [0, 1]"),
            (["distill.on_policy.fraction=-0.1"], "distill.on_policy.fraction (-0.1) must be in [0, 1]"),
            (["distill.on_policy.top_p=0"], "distill.on_policy.top_p (0.0) must be in (0, 1]"),
            (["distill.on_policy.max_new_tokens=0"], "distill.on_policy.max_new_tokens (0) must be between 1"),
            (["distill.on_policy.fraction=0.5", "data.teacher_cache=\(out)"], "distill.on_policy needs the live teacher"),
            (["distill.on_policy.fraction=0.5", "data.train=\(allTarget)"], "all-target.jsonl:2: distill.on_policy needs a prompt"),
        ]
        for c in cases {
            let result = try KDProcess.run(base + c.settings.flatMap { ["--set", $0] })
            #expect(result.status == 1, "\(c.message): \(result.stderr)")
            #expect(result.stderr.contains(c.message), "\(c.message): \(result.stderr)")
            #expect(!result.stderr.contains("loaded"), "\(result.stderr)")
        }
        // The group as YAML: distill: {on_policy: {...}}.
        let yaml = "distill:\n  on_policy:\n    fraction: 0.25\n    max_new_tokens: 3\n"
        let shown = try KDProcess.run(["config", "--config", "-"], stdin: yaml)
        #expect(shown.status == 0, "\(shown.stderr)")
        #expect(shown.stdout.contains("distill.on_policy.fraction") && shown.stdout.contains("0.25"), "\(shown.stdout)")
        let typo = try KDProcess.run(["config", "--config", "-"], stdin: "distill:\n  on_policy:\n    fracton: 0.25\n")
        #expect(typo.status == 1)
        #expect(typo.stderr.contains("unknown key 'distill.on_policy.fracton' (did you mean 'distill.on_policy.fraction'?)"), "\(typo.stderr)")
    }
}
