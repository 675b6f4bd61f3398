import Foundation
import Testing
import KDCore
import KDModels

/// `kd forward --adapter` and `kd export` against PEFT's logits for the same base and adapter.
@Suite struct AdapterCommandTests {
    static let fixture = KDProcess.fixtures + "/train/dense-teacher"

    static func maxError(_ path: String) throws -> Float {
        let device = Device(id: 0)
        let got = try SafetensorsFile(path: path).load("logits", on: device)
        let file = try SafetensorsFile(path: fixture + "/adapter-logits.safetensors")
        let want = try file.load("logits", on: device)
        let mask = try file.bytes("attention_mask").withUnsafeBytes { $0.bindMemory(to: Int64.self).map { $0 != 0 } }
        #expect(got.shape == want.shape)
        let vocab = want.shape[2]
        var worst: Float = 0
        for (row, keep) in mask.enumerated() where keep {
            for v in 0..<vocab { worst = max(worst, abs(got.data[row * vocab + v] - want.data[row * vocab + v])) }
        }
        return worst
    }

    @Test func forwardWithAdapterAndMergedExportMatchPEFT() throws {
        let dir = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let tokens = Self.fixture + "/tokens.jsonl"
        // The base's weights are exact in bf16: held as bf16 or f32, the same logits.
        for dtype in ["f32", "bf16"] {
            let withAdapter = try KDProcess.run([
                "forward", "--model", Self.fixture + "/student", "--adapter", Self.fixture + "/adapter-init",
                "--tokens", tokens, "--output", dir + "/adapter-\(dtype).safetensors", "--devices", "0,1", "--dtype", dtype,
            ])
            #expect(withAdapter.status == 0, "\(withAdapter.stderr)")
            #expect(try Self.maxError(dir + "/adapter-\(dtype).safetensors") < 1e-4)
        }
        #expect(FileManager.default.contents(atPath: dir + "/adapter-f32.safetensors")
                == FileManager.default.contents(atPath: dir + "/adapter-bf16.safetensors"))

        let export = try KDProcess.run([
            "export", "--model", Self.fixture + "/student", "--adapter", Self.fixture + "/adapter-init", "--output", dir + "/merged",
        ])
        #expect(export.status == 0, "\(export.stderr)")
        #expect(FileManager.default.fileExists(atPath: dir + "/merged/config.json"))
        let merged = try KDProcess.run(["forward", "--model", dir + "/merged", "--tokens", tokens, "--output", dir + "/merged.safetensors"])
        #expect(merged.status == 0, "\(merged.stderr)")
        #expect(try Self.maxError(dir + "/merged.safetensors") < 1e-4)
        // The merged checkpoint keeps the base's tensor names, shapes and dtypes.
        let base = try Checkpoint(directory: Self.fixture + "/student"), out = try Checkpoint(directory: dir + "/merged")
        #expect(Set(base.tensors.keys) == Set(out.tensors.keys))
        #expect(base.tensors.allSatisfy { out.tensors[$0.key]!.info.dtype == $0.value.info.dtype })

        let again = try KDProcess.run([
            "export", "--model", Self.fixture + "/student", "--adapter", Self.fixture + "/adapter-init", "--output", dir + "/merged",
        ])
        #expect(again.stderr == "kd: error: \(dir)/merged: already exists (pass --force to replace it)\n")
        let wrongBase = try KDProcess.run([
            "export", "--model", Self.fixture + "/teacher", "--adapter", Self.fixture + "/adapter-init", "--output", dir + "/x",
        ])
        #expect(wrongBase.status == 1)
        #expect(wrongBase.stderr.contains("has shape [4, 32], the model implies [4, 48]"))
    }
}
