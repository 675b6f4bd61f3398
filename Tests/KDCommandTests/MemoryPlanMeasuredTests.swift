import Foundation
import Testing
import KDCore

/// `kd plan` against what `kd train` measures: on the same run, each used device's planned
/// `total_bytes` is within 10% of its allocator peak (`device_peak_bytes`, the largest over the
/// metrics lines), for a dense and a MoE teacher, with activation checkpointing on (keeping the
/// layers' products, or recomputing whole layers) and off.
///
/// The shapes (hidden 256, vocabulary 4,096, 2 rows of 192 tokens) make every device hold several
/// MB, so what the plan leaves out (the routing tables, a few KB of norms' 1/rms, the allocator's
/// 64-byte minimum) stays far below the tolerance. The runs take turns (`run.concurrency: off`):
/// run concurrently, the teacher's thread moves its next chunk of logits onto the student's device
/// whenever it is ready, so whether that chunk is alive at the student's peak depends on timing;
/// taking turns, every allocation happens in one order and the peaks are the same on every run.
@Suite(.serialized) struct MemoryPlanMeasuredTests {
    static let vocab = 4096, rows = 2, sequence = 192

    /// Shapes common to teacher and student: 4 heads of 64 over 2 kv heads, f32 weights.
    static let common = [
        "hidden_size=256", "num_attention_heads=4", "num_key_value_heads=2", "head_dim=64",
        "vocab_size=\(vocab)", "max_position_embeddings=\(sequence)",
    ]

    /// A teacher (dense or MoE), a 2-layer dense student, token rows, and the arguments of a run.
    static func makeRun(_ dir: String, moe: Bool) throws -> [String] {
        func initialise(_ arguments: [String]) throws {
            let made = try KDProcess.run(["init"] + arguments)
            #expect(made.status == 0, "\(made.stderr)")
        }
        let teacherShape = moe
            ? ["--preset", "qwen3-30b-a3b", "--set", "num_hidden_layers=2", "--set", "num_experts=8",
               "--set", "num_experts_per_tok=2", "--set", "moe_intermediate_size=256"]
            : ["--preset", "qwen3-0.6b", "--set", "num_hidden_layers=3", "--set", "intermediate_size=768"]
        try initialise(teacherShape + common.flatMap { ["--set", $0] } + ["--output", dir + "/teacher"])
        try initialise(["--preset", "qwen3-0.6b", "--set", "num_hidden_layers=2", "--set", "intermediate_size=512",
                        "--seed", "2", "--output", dir + "/student"] + common.flatMap { ["--set", $0] })
        var random = RandomGenerator(seed: 5)
        let lines = (0..<rows).map { _ in
            "{\"input_ids\": [\((0..<sequence).map { _ in "\(random.next() % UInt64(vocab))" }.joined(separator: ", "))]}"
        }
        try (lines.joined(separator: "\n") + "\n").write(toFile: dir + "/tokens.jsonl", atomically: true, encoding: .utf8)
        let yaml = """
            run: {seed: 7, concurrency: "off", output_dir: \(dir)/run}
            devices: {count: 2}
            teacher: {path: \(dir)/teacher, devices: [0]}
            student: {path: \(dir)/student, devices: [1]}
            lora: {r: 8, alpha: 16, dropout: 0.1}
            distill: {alpha: 0.5, temperature: 2.0, chunk_tokens: 128}
            data: {train: \(dir)/tokens.jsonl, format: tokens, shuffle: false, max_seq_len: \(sequence)}
            train: {max_steps: 2, batch_size: \(rows), grad_accum_steps: 1, lr: 0.001}
            checkpoint: {every_steps: 1000}

            """
        try yaml.write(toFile: dir + "/run.yaml", atomically: true, encoding: .utf8)
        return ["--config", dir + "/run.yaml"]
    }

    /// `kd plan`'s total_bytes per device, then `kd train`'s two metrics lines' largest
    /// device_peak_bytes per device, for a run of `makeRun` (two devices).
    static func planAndMeasure(_ run: [String]) throws -> (plan: [Int], measured: [Int]) {
        let planned = try KDProcess.run(["plan"] + run)
        #expect(planned.status == 0, "\(planned.stderr)")
        let plan = (KDProcess.json(planned.stdout)["devices"] as? [[String: Any]] ?? []).map { $0["total_bytes"] as? Int ?? -1 }
        let trained = try KDProcess.run(["train"] + run)
        #expect(trained.status == 0, "\(trained.stderr)")
        let lines = ActivationCheckpointingTests.lines(trained.stdout)
        try #require(lines.count == 2)
        var measured = [0, 0]
        for line in lines {
            let peaks = try #require(line["device_peak_bytes"] as? [Int])
            try #require(peaks.count == 2)
            measured = zip(measured, peaks).map { Swift.max($0, $1) }
        }
        try #require(plan.count == 2)
        return (plan, measured)
    }

    /// With checkpointing, `train.recompute` `auto` keeps the products of both student layers here,
    /// `layers` of none.
    @Test(arguments: [(false, true, "auto"), (false, true, "layers"), (false, false, "auto"), (true, true, "auto"),
                      (true, false, "auto")])
    func planMatchesTheMeasuredPeaks(moe: Bool, checkpointing: Bool, recompute: String) throws {
        let dir = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let run = try Self.makeRun(dir, moe: moe) + ["--set", "train.activation_checkpointing=\(checkpointing)",
                                                      "--set", "train.recompute=\(recompute)"]
        let (plan, measured) = try Self.planAndMeasure(run)
        let name = "\(moe ? "MoE" : "dense") teacher, checkpointing \(checkpointing ? "on (\(recompute))" : "off")"
        for device in 0..<2 {
            let ratio = Double(plan[device]) / Double(measured[device])
            print("\(name): device \(device) plan \(plan[device]) measured \(measured[device]) ratio "
                + String(format: "%.4f", ratio))
            // Not dominated by fixed overheads: several MB on each device.
            #expect(measured[device] > 4 << 20)
            #expect(abs(plan[device] - measured[device]) * 10 <= measured[device],
                    "\(name): device \(device) plan \(plan[device]) vs measured \(measured[device])")
        }
    }
}

extension MemoryPlanMeasuredTests {
    /// `train.recompute: auto` under a budget with room for one and a half layers' products: kd
    /// plan keeps both layers' (the last layer's are part of what its backward holds anyway, so
    /// two cost one), and kd train runs within the budget (the allocator would refuse to exceed it)
    /// at a peak within 10% of the plan; with room for half a layer's, it keeps none.
    @Test func autoKeepsProductsWithinTheBudget() throws {
        let dir = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let run = try Self.makeRun(dir, moe: false)
        let layers = KDProcess.json(try KDProcess.run(["plan"] + run + ["--set", "train.recompute=layers"]).stdout)
        let total = try #require((layers["devices"] as? [[String: Any]])?[1]["total_bytes"] as? Int)
        // A layer's products a token: q 256, k and v 2·128, the middle residual 256, gate and up 2·512.
        let perToken = 256 + 2 * 128 + 256 + 2 * 512
        let products = Double(Self.rows * Self.sequence * 4 * perToken)
        func budget(_ room: Double) -> [String] {
            run + ["--set", "devices.memory_per_device=\(Int((Double(total) + room * products) / 0.9))"]
        }
        func kept(_ room: Double) throws -> [Int]? {
            let planned = KDProcess.json(try KDProcess.run(["plan"] + budget(room)).stdout)
            return (planned["devices"] as? [[String: Any]])?[1]["layers_keeping_products"] as? [Int]
        }
        #expect(try kept(0.5) == [])
        #expect(try kept(1.5) == [0, 1])
        let capacity = Int((Double(total) + 1.5 * products) / 0.9)
        let (plan, measured) = try Self.planAndMeasure(budget(1.5))
        print("auto within \(capacity) bytes: device 1 plan \(plan[1]) measured \(measured[1])")
        #expect(measured[1] <= capacity && abs(plan[1] - measured[1]) * 10 <= measured[1])
    }


    /// Trained from a teacher cache (K = 64), only the student's device holds anything, and the
    /// plan (which then places the student alone, its loss chunk beside its own logits) is within
    /// 10% of its measured peak too.
    @Test(arguments: [true, false])
    func planMatchesTheMeasuredPeaksFromACache(checkpointing: Bool) throws {
        let dir = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let live = try Self.makeRun(dir, moe: false) + ["--set", "train.activation_checkpointing=\(checkpointing)"]
        let cached = try KDProcess.run(["teacher-cache"] + live + ["--top-k", "64", "--output", dir + "/cache"])
        #expect(cached.status == 0, "\(cached.stderr)")
        let (plan, measured) = try Self.planAndMeasure(live + ["--set", "data.teacher_cache=\(dir)/cache", "--set", "teacher.path="])
        print("cached teacher, checkpointing \(checkpointing ? "on" : "off"): plan \(plan) measured \(measured) ratio "
            + String(format: "%.4f", Double(plan[1]) / Double(measured[1])))
        #expect(plan[0] == 0 && measured[0] == 0)
        #expect(measured[1] > 4 << 20)
        #expect(abs(plan[1] - measured[1]) * 10 <= measured[1], "plan \(plan[1]) vs measured \(measured[1])")
    }
}

/// `kd plan` names the dtype each device's weights are stored in (from the safetensors headers,
/// else config.json's torch_dtype) and the dtype kd holds them in (`teacher.dtype`,
/// `student.dtype`), whose size the parameter bytes follow.
@Suite struct PlanWeightDTypeTests {
    @Test func weightDTypeFromHeadersOrConfig() throws {
        let dir = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let shape = ["--preset", "qwen3-0.6b", "--set", "num_hidden_layers=2", "--set", "hidden_size=64",
                     "--set", "intermediate_size=96", "--set", "head_dim=16", "--set", "vocab_size=1000"]
        // The teacher's weights exist (bf16), the student's do not (config.json only, bf16 too, and f32).
        for (name, extra) in [("teacher", ["--dtype", "bf16"]), ("student-bf16", ["--dtype", "bf16", "--config-only"]),
                              ("student-f32", ["--config-only"])] {
            let made = try KDProcess.run(["init"] + shape + extra + ["--output", "\(dir)/\(name)"])
            #expect(made.status == 0, "\(made.stderr)")
        }
        // The teacher's checkpoint says BF16 in its headers even when its config.json says otherwise.
        let configPath = dir + "/teacher/config.json"
        let config = try String(contentsOfFile: configPath, encoding: .utf8)
        try config.replacingOccurrences(of: "\"bfloat16\"", with: "\"float32\"")
            .write(toFile: configPath, atomically: true, encoding: .utf8)
        for (student, expected) in [("student-bf16", "BF16"), ("student-f32", "F32")] {
            let yaml = """
                devices: {count: 3}
                teacher: {path: \(dir)/teacher, devices: [0, 1]}
                student: {path: \(dir)/\(student), devices: [2]}

                """
            let result = try KDProcess.run(["plan", "--config", "-"], stdin: yaml)
            #expect(result.status == 0, "\(result.stderr)")
            let devices = KDProcess.json(result.stdout)["devices"] as? [[String: Any]] ?? []
            #expect(devices.map { $0["weight_dtype"] as? String } == ["BF16", "BF16", expected])
            #expect(devices.map { $0["held_dtype"] as? String } == ["BF16", "BF16", expected])
        }
        // Held as f32, the teacher's matrices take twice the bytes (less the bf16 panel buffer);
        // held as bf16, an f32 student's do too.
        func plan(_ sets: [String]) throws -> [[String: Any]] {
            let yaml = """
                devices: {count: 3}
                teacher: {path: \(dir)/teacher, devices: [0, 1]}
                student: {path: \(dir)/student-f32, devices: [2]}

                """
            let result = try KDProcess.run(["plan", "--config", "-"] + sets.flatMap { ["--set", $0] }, stdin: yaml)
            #expect(result.status == 0, "\(result.stderr)")
            return KDProcess.json(result.stdout)["devices"] as? [[String: Any]] ?? []
        }
        let auto = try plan([]), widened = try plan(["teacher.dtype=f32", "student.dtype=bf16"])
        #expect(widened.map { $0["held_dtype"] as? String } == ["F32", "F32", "BF16"])
        let bytes = { (devices: [[String: Any]]) in devices.map { ($0["param_bytes"] as? Int) ?? 0 } }
        let panel = 512 * 96 * 4  // at most WeightProducts.panelRows rows of the widest matrix (down_proj, 96 wide)
        for device in 0..<2 { #expect(bytes(widened)[device] > 2 * (bytes(auto)[device] - panel) - 2_000) }
        #expect(bytes(widened)[2] < bytes(auto)[2] / 2 + panel + 2_000)
        let refused = try KDProcess.run(["plan", "--config", "-", "--set", "student.dtype=f16"],
                                        stdin: "teacher: {path: \(dir)/teacher}\nstudent: {path: \(dir)/student-f32}\n")
        #expect(refused.status == 1 && refused.stderr.contains("student.dtype"))
    }
}
