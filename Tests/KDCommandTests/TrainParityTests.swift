import Foundation
import Testing
import KDCore
import KDModels

/// `kd train` against the torch + PEFT reference of Scripts/make_train_fixtures.py: losses,
/// every pre-clip LoRA gradient, the gradient norm, and the LoRA tensors after two AdamW steps
/// with clipping active.
///
/// Step-2 gradients are compared at twice the tolerance: they follow an AdamW step, and two f32
/// implementations then differ by the sum of their errors. Against a float64 run of the same
/// reference (Scripts/check_train_precision.py), torch-f32 and kd are both within the tolerance
/// (worst on dense-teacher: 0.55× and 0.43× of it at step 1, 0.91× and 0.63× at step 2).
@Suite struct TrainParityTests {
    static func close(_ a: Float, _ b: Float, atol: Float = 1e-6, rtol: Float = 1e-4) -> Bool {
        abs(a - b) <= atol + rtol * abs(b)
    }

    @Test(arguments: ["dense-teacher", "moe-teacher"])
    func matchesTorchAndPEFT(fixture: String) throws {
        let dir = KDProcess.fixtures + "/train/" + fixture
        let out = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        let result = try KDProcess.run([
            "train", "--config", dir + "/run.yaml", "--save-gradients",
            "--set", "run.output_dir=\(out)/run", "--set", "teacher.path=\(dir)/teacher",
            "--set", "student.path=\(dir)/student", "--set", "lora.init_from=\(dir)/adapter-init",
            "--set", "data.train=\(dir)/tokens.jsonl",
        ])
        #expect(result.status == 0, "\(result.stderr)")
        let device = Device(id: 0)
        let expected = try SafetensorsFile(path: dir + "/expected.safetensors")
        let lines = result.stdout.split(separator: "\n").map { KDProcess.json(String($0)) }
        #expect(lines.count == 2)
        for (index, line) in lines.enumerated() {
            var worstGradient: Float = 0
            let step = index + 1
            let reference = try expected.bytes("step\(step).metrics").withUnsafeBytes { Array($0.bindMemory(to: Double.self)) }
            for (key, value) in zip(["loss", "kl_loss", "ce_loss", "grad_norm"], reference) {
                let got = line[key] as? Double ?? .nan
                #expect(abs(got - value) <= 1e-6 + 1e-4 * abs(value), "step \(step) \(key): \(got) vs \(value)")
            }
            let gradients = try SafetensorsFile(path: "\(out)/run/gradients/step-\(step).safetensors")
            #expect(gradients.tensors.count == 2 * 7 * 2)
            for name in gradients.tensors.keys.sorted() {
                let got = try gradients.load(name, on: device), want = try expected.load("step\(step).grad.\(name)", on: device)
                #expect(got.shape == want.shape)
                let slack: Float = step == 1 ? 1 : 2
                for i in 0..<want.count {
                    worstGradient = max(worstGradient, abs(got.data[i] - want.data[i]) / (1e-6 + 1e-4 * abs(want.data[i])))
                    if !Self.close(got.data[i], want.data[i], atol: slack * 1e-6, rtol: slack * 1e-4) {
                        Issue.record("step \(step) \(name)[\(i)]: \(got.data[i]) vs \(want.data[i])")
                        break
                    }
                }
            }
            print("train parity \(fixture) step \(step): worst gradient error / tolerance = \(worstGradient)")
        }
        let adapter = try SafetensorsFile(path: "\(out)/run/checkpoint-2/adapter_model.safetensors")
        #expect(adapter.tensors.count == 28)
        var worstParameter: Float = 0
        for name in adapter.tensors.keys.sorted() {
            let got = try adapter.load(name, on: device), want = try expected.load("final.\(name)", on: device)
            for i in 0..<want.count {
                worstParameter = max(worstParameter, abs(got.data[i] - want.data[i]))
                #expect(Self.close(got.data[i], want.data[i]), "final \(name)[\(i)]: \(got.data[i]) vs \(want.data[i])")
            }
        }
        print("train parity \(fixture): worst LoRA parameter difference after two steps = \(worstParameter)")
    }
}
