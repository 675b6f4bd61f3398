import Foundation
import Testing

@Suite struct InitPlanCommandTests {
    @Test func initWritesACheckpointThatInspectCounts() throws {
        let dir = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let made = try KDProcess.run([
            "init", "--preset", "qwen3-0.6b", "--set", "num_hidden_layers=2", "--set", "vocab_size=1000",
            "--set", "hidden_size=64", "--set", "intermediate_size=96", "--set", "head_dim=16",
            "--dtype", "bf16", "--max-shard-size", "100KB", "--output", dir + "/m",
        ])
        #expect(made.status == 0, "\(made.stderr)")
        #expect(FileManager.default.fileExists(atPath: dir + "/m/model.safetensors.index.json"))
        let inspected = try KDProcess.run(["inspect", "--model", dir + "/m", "--json"])
        #expect(inspected.status == 0, "\(inspected.stderr)")
        let info = KDProcess.json(inspected.stdout)
        // embed 1000·64 + 2 layers · (64·16·(2·16+2·8) + 2·16 + 2·64 + 3·96·64) + norm 64 (tied)
        #expect(info["params"] as? Int == 64_000 + 2 * (49_152 + 32 + 128 + 18_432) + 64)
        #expect((info["dtypes"] as? [String: Int])?["BF16"] == 2 * 11 + 2)
        #expect(info["tie_word_embeddings"] as? Bool == true)

        let again = try KDProcess.run(["init", "--preset", "qwen3-0.6b", "--config-only", "--output", dir + "/m"])
        #expect(again.status == 1)
        #expect(again.stderr == "kd: error: \(dir)/m: already exists (pass --force to replace it)\n")
        let unknown = try KDProcess.run(["init", "--preset", "qwen9", "--output", dir + "/x"])
        #expect(unknown.stderr.hasPrefix("kd: error: unknown preset 'qwen9' (presets: qwen3-0.6b,"))
    }

    /// The seed's run (bf16 checkpoints as published, activation checkpointing on) fits on eight
    /// 16 GiB devices; held as f32 it does not.
    @Test func planOfTheReferenceExperiment() throws {
        let dir = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for (preset, name) in [("qwen3-30b-a3b", "Qwen3-30B-A3B"), ("qwen3-8b", "Qwen3-8B")] {
            let made = try KDProcess.run(["init", "--preset", preset, "--config-only", "--dtype", "bf16", "--output", dir + "/" + name])
            #expect(made.status == 0, "\(made.stderr)")
        }
        let result = try KDProcess.run([
            "plan", "--config", KDProcess.repository + "/Configs/qwen3-30b-a3b-to-8b.yaml",
            "--set", "teacher.path=\(dir)/Qwen3-30B-A3B", "--set", "student.path=\(dir)/Qwen3-8B",
        ])
        #expect(result.status == 0, "\(result.stderr)")
        let plan = KDProcess.json(result.stdout)
        let teacher = plan["teacher"] as? [String: Any], student = plan["student"] as? [String: Any]
        #expect(teacher?["params"] as? Int == 30_532_122_624)
        #expect(student?["params"] as? Int == 8_190_735_360)
        #expect(student?["lora_params"] as? Int == 174_587_904)
        let devices = plan["devices"] as? [[String: Any]] ?? []
        #expect(devices.count == 8)
        #expect(devices.prefix(6).allSatisfy { $0["role"] as? String == "teacher" })
        #expect(devices.suffix(2).allSatisfy { $0["role"] as? String == "student" })
        let teacherLayers = devices.prefix(6).flatMap { $0["layers"] as? [Int] ?? [] }
        #expect(teacherLayers == Array(0..<48))
        #expect(devices.allSatisfy { ($0["total_bytes"] as? Int ?? 0) > ($0["param_bytes"] as? Int ?? 0) })
        #expect(devices.allSatisfy { $0["capacity_bytes"] as? Int == 16 << 30 })
        #expect(devices.allSatisfy { $0["fits"] as? Bool == true && $0["held_dtype"] as? String == "BF16" })
        let widened = try KDProcess.run([
            "plan", "--config", KDProcess.repository + "/Configs/qwen3-30b-a3b-to-8b.yaml",
            "--set", "teacher.path=\(dir)/Qwen3-30B-A3B", "--set", "student.path=\(dir)/Qwen3-8B",
            "--set", "teacher.dtype=f32", "--set", "student.dtype=f32",
        ])
        #expect(widened.status == 1 && KDProcess.json(widened.stdout)["fits"] as? Bool == false)
        // LoRA weights, gradients and two AdamW moments: 16 bytes per trainable parameter.
        #expect(devices.reduce(0) { $0 + ($1["lora_bytes"] as? Int ?? 0) } == 174_587_904 * 16)
    }

    @Test func planRejectsUnknownKeysAndOverBudget() throws {
        let unknown = try KDProcess.run(["plan", "--config", "-"], stdin: "lora:\n  rank: 8\n")
        #expect(unknown.status == 1)
        #expect(unknown.stderr == "kd: error: <stdin>:2: unknown key 'lora.rank' (did you mean 'lora.r'?)\n")

        let dir = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        _ = try KDProcess.run(["init", "--preset", "qwen3-8b", "--config-only", "--output", dir + "/s"])
        let yaml = "devices: {count: 2, memory_per_device: 1GiB}\nteacher: {path: \(dir)/s, devices: [0]}\nstudent: {path: \(dir)/s, devices: [1]}\n"
        let over = try KDProcess.run(["plan", "--config", "-"], stdin: yaml)
        #expect(over.status == 1)
        #expect(over.stderr.hasSuffix("kd: error: the run does not fit: device 0, device 1 over budget\n"))
        #expect(KDProcess.json(over.stdout)["fits"] as? Bool == false)
    }
}
