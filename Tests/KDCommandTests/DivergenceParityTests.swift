import Foundation
import Testing
import KDCore
import KDModels

/// One `kd train` step under every `distill.loss` against the torch autograd reference of
/// Scripts/make_train_fixtures.py (dense-teacher/divergences.safetensors): forward_kl and reverse_kl
/// at T = 1 and 2, jsd at β = 0.1, 0.5, 0.9 and T = 1 and 2, α = 0.8, each step from the fixture's
/// initial adapter on rows [0, 1].
///
/// loss, divergence, kl_loss, ce_loss and grad_norm must agree to 1e-6 + 1e-4·|reference|, and each
/// pre-clip LoRA gradient element to 1e-6 + 1e-4·m with m the sum of the absolute values of its
/// terms, as in TrainParityTests (which explains both tolerances); the divergence changes only the
/// gradient reaching the logits, not the LoRA products whose rounding m measures.
@Suite struct DivergenceParityTests {
    struct Case: Sendable, CustomTestStringConvertible {
        let loss: String
        let temperature: Int
        let beta: Double?

        /// The fixture's key: `<loss>-T<t>` or `jsd-b<beta>-T<t>`.
        var key: String { beta.map { "\(loss)-b\($0)-T\(temperature)" } ?? "\(loss)-T\(temperature)" }
        var testDescription: String { key }

        var settings: [String] {
            ["distill.loss=\(loss)", "distill.temperature=\(temperature)", "train.max_steps=1"]
                + (beta.map { ["distill.jsd_beta=\($0)"] } ?? [])
        }
    }

    static let cases: [Case] = ["forward_kl", "reverse_kl"].flatMap { loss in [1, 2].map { Case(loss: loss, temperature: $0, beta: nil) } }
        + [0.1, 0.5, 0.9].flatMap { beta in [1, 2].map { Case(loss: "jsd", temperature: $0, beta: beta) } }

    @Test(arguments: cases)
    func matchesTorchAutograd(_ c: Case) throws {
        let dir = KDProcess.fixtures + "/train/dense-teacher"
        let out = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        let expected = try SafetensorsFile(path: dir + "/divergences.safetensors")
        let lines = try TrainParityTests.train(dir, output: out, c.settings.flatMap { ["--set", $0] })
        try #require(lines.count == 1)
        #expect(lines[0]["step"] as? Int == 1)
        let worst = try TrainParityTests.compare(
            prefix: c.key, label: c.key, metrics: ["loss", "divergence", "kl_loss", "ce_loss", "grad_norm"], line: lines[0],
            gradientsPath: out + "/gradients/step-1.safetensors", expected: expected)
        print("divergence parity \(c.key): worst error / tolerance: gradients \(worst.gradients), metrics \(worst.metrics)")
    }
}
