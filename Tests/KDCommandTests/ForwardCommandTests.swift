import Foundation
import Testing
import KDCore
import KDModels

@Suite struct ForwardCommandTests {
    /// With the (bf16-exact) weights held as f32 and as bf16; a bad --dtype is one line.
    @Test(arguments: ["f32", "bf16"])
    func forwardWritesTransformersLogitsAcrossDevices(dtype: String) throws {
        let dir = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let model = KDProcess.fixtures + "/forward/moe-8x2"
        let output = dir + "/logits.safetensors"
        let result = try KDProcess.run([
            "forward", "--model", model, "--tokens", model + "/tokens.jsonl", "--output", output,
            "--devices", "0,1,2", "--batch-rows", "2", "--json", "--dtype", dtype,
        ])
        #expect(result.status == 0, "\(result.stderr)")
        let summary = KDProcess.json(result.stdout)
        #expect(summary["rows"] as? Int == 3)
        #expect(summary["tokens"] as? Int == 23)
        // The forward's time, split into the layers' and the output projection's.
        let (forward, layers, head) = (summary["forward_s"] as? Double ?? 0, summary["layers_s"] as? Double ?? 0,
                                       summary["head_s"] as? Double ?? 0)
        #expect(layers > 0 && head > 0 && layers + head <= forward, "\(summary)")

        let device = Device(id: 0)
        let got = try SafetensorsFile(path: output)
        let want = try SafetensorsFile(path: model + "/expected.safetensors")
        #expect(try got.bytes("attention_mask") == want.bytes("attention_mask"))
        let a = try got.load("logits", on: device), b = try want.load("logits", on: device)
        #expect(a.shape == [3, 9, 128])
        let mask = try want.bytes("attention_mask").withUnsafeBytes { $0.bindMemory(to: Int64.self).map { $0 != 0 } }
        var worst: Float = 0
        for (row, keep) in mask.enumerated() where keep {
            for v in 0..<128 { worst = max(worst, abs(a.data[row * 128 + v] - b.data[row * 128 + v])) }
        }
        #expect(worst < 1e-4)
        let bad = try KDProcess.run(["forward", "--model", model, "--tokens", model + "/tokens.jsonl", "--output", output,
                                     "--dtype", "f16"])
        #expect(bad.status == 1)
        #expect(bad.stderr == "kd: error: --dtype: 'f16' is not a weight dtype: expected auto, bf16 or f32 "
                + "(kd holds weights as f32 or bf16; f16 checkpoints are widened to f32 by auto)\n")
    }

    @Test func badTokenLinesGiveOneLineAndExitOne() throws {
        let dir = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let model = KDProcess.fixtures + "/forward/dense-tied-gqa"
        let cases: [(String, String)] = [
            ("{\"input_ids\": [1, 2]}\n{\"input_ids\": [1, 2\n", "tokens.jsonl:2: not valid JSON"),
            ("{\"ids\": [1]}\n", "tokens.jsonl:1: missing \"input_ids\""),
            ("{\"input_ids\": [1, 500]}\n", "tokens.jsonl:1: \"input_ids\"[1] = 500 is outside the vocabulary (vocab_size 128)"),
            ("{\"input_ids\": [1, true]}\n", "tokens.jsonl:1: \"input_ids\"[1] is not an integer"),
            ("{\"input_ids\": []}\n", "tokens.jsonl:1: \"input_ids\" is empty"),
            ("[1, 2]\n", "tokens.jsonl:1: expected a JSON object"),
        ]
        for (text, message) in cases {
            let tokens = dir + "/tokens.jsonl"
            try Data(text.utf8).write(to: URL(fileURLWithPath: tokens))
            let result = try KDProcess.run(["forward", "--model", model, "--tokens", tokens, "--output", dir + "/out.safetensors"])
            #expect(result.status == 1)
            #expect(result.stderr.hasSuffix("kd: error: \(dir)/\(message)\n"), "\(result.stderr)")
            #expect(result.stdout.isEmpty)
            #expect(!FileManager.default.fileExists(atPath: dir + "/out.safetensors"))
        }
    }

    @Test func missingModelIsOneLine() throws {
        let result = try KDProcess.run(["inspect", "--model", "/no/such/model"])
        #expect(result.status == 1)
        #expect(result.stderr == "kd: error: /no/such/model: no such model directory\n")
    }
}
