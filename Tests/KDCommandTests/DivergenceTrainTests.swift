import Foundation
import Testing
import KDCore

/// `kd train --set distill.loss=...` end to end on the dense-teacher training fixture (one step
/// from its initial adapter): reverse_kl and jsd run, log `divergence`, and keep `kl_loss` as the
/// forward KL; the default forward_kl logs divergence = kl_loss. The kernel's numbers themselves
/// are checked in DivergenceTests and DivergenceFixtureTests; DivergenceParityTests checks every
/// divergence's step (metrics and each LoRA gradient) against torch, TrainParityTests two steps of
/// the default.
@Suite struct DivergenceTrainTests {
    static let fixture = KDProcess.fixtures + "/train/dense-teacher"

    static func configHash(_ output: String) throws -> String {
        let data = try Data(contentsOf: URL(fileURLWithPath: output + "/checkpoint-1/trainer_state.json"))
        return (try JSONSerialization.jsonObject(with: data) as? [String: Any])?["config_hash"] as? String ?? ""
    }

    @Test func reverseKLAndJSDTrainAndLogTheirDivergence() throws {
        let out = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        func step(_ name: String, _ settings: [String]) throws -> [String: Any] {
            let lines = try TrainParityTests.train(Self.fixture, output: out + "/" + name,
                                                   ["--set", "train.max_steps=1"] + settings.flatMap { ["--set", $0] })
            return try #require(lines.first)
        }
        let forward = try step("forward", [])
        let forwardOtherBeta = try step("forward-beta", ["distill.jsd_beta=0.3"])
        let reverse = try step("reverse", ["distill.loss=reverse_kl"])
        let jsd = try step("jsd", ["distill.loss=jsd", "distill.jsd_beta=0.3"])
        let jsdHalf = try step("jsd-half", ["distill.loss=jsd"])

        let kl = try #require(forward["kl_loss"] as? Double), ce = try #require(forward["ce_loss"] as? Double)
        #expect(forward["divergence"] as? Double == kl)
        // distill.jsd_beta does nothing to forward_kl.
        for key in ["loss", "kl_loss", "divergence", "ce_loss", "grad_norm"] {
            #expect(forwardOtherBeta[key] as? Double == forward[key] as? Double, "\(key)")
        }
        // run.yaml: alpha 0.8, T 2.
        for (name, line) in [("reverse_kl", reverse), ("jsd 0.3", jsd), ("jsd 0.5", jsdHalf)] {
            let divergence = try #require(line["divergence"] as? Double, "\(name)")
            let loss = try #require(line["loss"] as? Double), gradNorm = try #require(line["grad_norm"] as? Double)
            #expect(divergence.isFinite && divergence > 0, "\(name)")
            #expect(abs(divergence - kl) > 1e-3 * kl, "\(name): divergence \(divergence) is the forward KL")
            // The same step-1 forward passes: the forward KL and CE are those of the forward_kl run.
            #expect(abs((line["kl_loss"] as? Double ?? .nan) - kl) <= 1e-6 * kl, "\(name)")
            #expect(abs((line["ce_loss"] as? Double ?? .nan) - ce) <= 1e-6 * ce, "\(name)")
            #expect(abs(loss - (0.8 * 4 * divergence + 0.2 * ce)) <= 1e-6 * loss, "\(name)")
            #expect(gradNorm.isFinite && gradNorm != forward["grad_norm"] as? Double, "\(name)")
        }
        // The config hash (resume's check): distill.loss enters unless forward_kl, jsd_beta only with jsd.
        let hashes = try ["forward", "forward-beta", "reverse", "jsd", "jsd-half"].map { try Self.configHash(out + "/" + $0) }
        #expect(hashes[0] == hashes[1])
        #expect(Set(hashes[1...]).count == 4)
    }

    /// The progress line names the chosen divergence and its value beside kl; kd plot draws it in its
    /// own panel. A forward_kl run shows neither (its divergence is kl_loss).
    @Test func progressAndPlotShowTheDivergence() throws {
        let out = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        for (name, settings) in [("reverse", ["distill.loss=reverse_kl"]), ("jsd", ["distill.loss=jsd"]), ("forward", [])] {
            let result = try KDProcess.run([
                "train", "--config", Self.fixture + "/run.yaml", "--set", "run.output_dir=\(out)/\(name)",
                "--set", "teacher.path=\(Self.fixture)/teacher", "--set", "student.path=\(Self.fixture)/student",
                "--set", "lora.init_from=\(Self.fixture)/adapter-init", "--set", "data.train=\(Self.fixture)/tokens.jsonl",
                "--set", "train.max_steps=2",
            ] + settings.flatMap { ["--set", $0] })
            #expect(result.status == 0, "\(result.stderr)")
            let progress = result.stderr.split(separator: "\n").filter { $0.hasPrefix("step ") }
            let plot = try KDProcess.run(["plot", "\(out)/\(name)"])
            #expect(plot.status == 0, "\(plot.stderr)")
            let svg = (try? String(contentsOfFile: "\(out)/\(name)/metrics.svg", encoding: .utf8)) ?? ""
            #expect(progress.count == 2)
            switch name {
            case "reverse":
                #expect(progress.allSatisfy { $0.contains("  kl ") && $0.contains("  reverse_kl ") })
                #expect(svg.contains(">divergence<"))
            case "jsd":
                #expect(progress.allSatisfy { $0.contains("  jsd ") })
                #expect(svg.contains(">divergence<"))
            default:
                #expect(progress.allSatisfy { !$0.contains("forward_kl") && !$0.contains("jsd") })
                #expect(svg.contains(">kl_loss<") && !svg.contains(">divergence<"))
            }
        }
    }

    @Test(arguments: ["distill.jsd_beta=0", "distill.jsd_beta=1", "distill.jsd_beta=1.5", "distill.loss=kl"])
    func badSettingsAreOneLineNamingTheKey(_ setting: String) throws {
        let result = try KDProcess.run(["train", "--config", Self.fixture + "/run.yaml", "--set", setting])
        #expect(result.status == 1)
        let key = String(setting.prefix { $0 != "=" })
        #expect(result.stderr.hasPrefix("kd: error: ") && result.stderr.contains(key), "\(result.stderr)")
        #expect(result.stderr.trimmingCharacters(in: .newlines).split(separator: "\n").count == 1, "\(result.stderr)")
    }
}
