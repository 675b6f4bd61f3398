import Foundation
import Testing
import KDCore

/// `train.activation_checkpointing`: student layers keep only their input in the training forward
/// and recompute themselves before their backward. The numbers are those of keeping everything,
/// bit for bit; the student's device peaks lower; `kd plan` shows both estimates.
@Suite(.serialized) struct ActivationCheckpointingTests {
    static let fixture = KDProcess.fixtures + "/train/dense-teacher"

    /// `kd train` on the parity fixture from its initial adapter, with the pre-clip gradients saved.
    static func trainFixture(_ out: String, checkpointing: Bool, _ extra: [String]) throws -> KDProcess.Result {
        try KDProcess.run([
            "train", "--config", fixture + "/run.yaml", "--save-gradients",
            "--set", "run.output_dir=\(out)", "--set", "teacher.path=\(fixture)/teacher",
            "--set", "student.path=\(fixture)/student", "--set", "lora.init_from=\(fixture)/adapter-init",
            "--set", "data.train=\(fixture)/tokens.jsonl", "--set", "train.activation_checkpointing=\(checkpointing)",
        ] + extra)
    }

    static func lines(_ stdout: String) -> [[String: Any]] {
        stdout.split(separator: "\n").map { KDProcess.json(String($0)) }
    }

    /// Every gradient file and the final adapter, byte for byte, and the same metrics (beyond times
    /// and memory peaks), whether the layers keep everything, recompute their whole forward
    /// (`train.recompute: layers`), or keep their products and recompute attention (`attention`). With
    /// dropout the recompute must draw the same masks; with two micro-batches per step they are
    /// keyed by micro-batch; with the student over two devices each stage recomputes its own layers.
    @Test(arguments: [
        ("0.0", [String]()),
        ("0.1", ["--set", "train.batch_size=1", "--set", "train.grad_accum_steps=2"]),
        ("0.1", ["--set", "devices.count=3", "--set", "student.devices=[1, 2]"]),
    ])
    func checkpointedTrainingIsBitIdentical(dropout: String, extra: [String]) throws {
        let dir = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var stdout: [String: String] = [:]
        let settings = [("kept", false, "auto"), ("layers", true, "layers"), ("attention", true, "attention")]
        for (name, checkpointing, recompute) in settings {
            let result = try Self.trainFixture("\(dir)/\(name)", checkpointing: checkpointing,
                                               ["--set", "lora.dropout=\(dropout)", "--set", "train.recompute=\(recompute)"] + extra)
            #expect(result.status == 0, "\(result.stderr)")
            stdout[name] = result.stdout
        }
        let files = ["gradients/step-1.safetensors", "gradients/step-2.safetensors", "final_model/adapter_model.safetensors"]
        let kept = TrainRunTests.stripTimes(stdout["kept"] ?? "")
        #expect(kept.count == 2)
        for name in ["layers", "attention"] {
            for file in files {
                let recomputed = FileManager.default.contents(atPath: "\(dir)/\(name)/\(file)")
                let original = FileManager.default.contents(atPath: "\(dir)/kept/\(file)")
                #expect(recomputed != nil && recomputed == original, "\(name): \(file) differs")
            }
            #expect(TrainRunTests.stripTimes(stdout[name] ?? "") == kept, "\(name)")
        }
    }

    /// Every metrics line (stdout and metrics.jsonl) carries each device's allocator peak, by id, and
    /// the process's peak RSS; peaks never fall from one line to the next. It also carries the time of
    /// each phase of the step, every phase of a live, checkpointed run present.
    @Test func metricsCarryMeasuredPeaks() throws {
        let dir = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let result = try Self.trainFixture(dir + "/run", checkpointing: true,
                                           ["--set", "devices.count=4", "--set", "student.devices=[1, 2]"])
        #expect(result.status == 0, "\(result.stderr)")
        let file = try String(contentsOfFile: dir + "/run/metrics.jsonl", encoding: .utf8)
        let lines = Self.lines(file)
        try #require(lines.count == 2)
        #expect(Self.lines(result.stdout).map { $0["device_peak_bytes"] as? [Int] } == lines.map { $0["device_peak_bytes"] as? [Int] })
        var previous = [Int](repeating: 0, count: 4), previousRSS = 0
        for line in lines {
            let peaks = try #require(line["device_peak_bytes"] as? [Int])
            let rss = try #require(line["peak_rss_bytes"] as? Int)
            #expect(peaks.count == 4)
            // Devices 0-2 hold the teacher and the student's two stages; device 3 holds nothing.
            #expect(peaks.prefix(3).allSatisfy { $0 > 0 } && peaks[3] == 0, "\(peaks)")
            #expect(zip(peaks, previous).allSatisfy { $0 >= $1 } && rss >= previousRSS)
            // The process holds at least what its largest device held.
            #expect(rss >= peaks.max() ?? 0)
            (previous, previousRSS) = (peaks, rss)
            let phases = try #require(line["phase_ms"] as? [String: Double])
            #expect(Set(phases.keys) == ["teacher_forward", "teacher_head", "student_forward", "student_head", "student_loss",
                                         "student_recompute", "student_backward", "optimizer"])
            #expect(phases.values.allSatisfy { $0 > 0 }, "\(phases)")
        }
    }

    /// An 8-layer student (the fixture's shapes: hidden 32, 4 heads of 8, 1 kv head, intermediate 64)
    /// and four rows of 256 tokens: activations dominate the student's device.
    static func longRun(_ dir: String) throws -> [String] {
        let config = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: fixture + "/student/config.json")))
        var student = try #require(config as? [String: Any])
        student["num_hidden_layers"] = 8
        student["layer_types"] = nil
        student["max_position_embeddings"] = 256
        try JSONSerialization.data(withJSONObject: student).write(to: URL(fileURLWithPath: dir + "/student.json"))
        let made = try KDProcess.run(["init", "--config-json", dir + "/student.json", "--output", dir + "/student"])
        #expect(made.status == 0, "\(made.stderr)")
        var random = RandomGenerator(seed: 3)
        let rows = (0..<4).map { _ in "{\"input_ids\": [\((0..<256).map { _ in "\(random.next() % 96)" }.joined(separator: ", "))]}" }
        try (rows.joined(separator: "\n") + "\n").write(toFile: dir + "/long.jsonl", atomically: true, encoding: .utf8)
        return ["--config", fixture + "/run.yaml", "--set", "teacher.path=\(fixture)/teacher",
                "--set", "student.path=\(dir)/student", "--set", "data.train=\(dir)/long.jsonl",
                "--set", "data.max_seq_len=256", "--set", "lora.dropout=0.1"]
    }

    /// Recomputing whole layers keeps the least; keeping the layers' products (208 of their 603
    /// f32 a token) more, but still well below keeping everything.
    @Test func checkpointingLowersTheStudentsMeasuredPeak() throws {
        let dir = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let run = try Self.longRun(dir)
        var peak: [String: Int] = [:], plan: [String: Int] = [:]
        for (name, setting) in [("off", "train.activation_checkpointing=false"), ("layers", "train.recompute=layers"),
                                ("attention", "train.recompute=attention")] {
            let result = try KDProcess.run(["train"] + run + ["--set", setting, "--set", "run.output_dir=\(dir)/\(name)"])
            #expect(result.status == 0, "\(result.stderr)")
            peak[name] = (Self.lines(result.stdout).last?["device_peak_bytes"] as? [Int])?[1]
            let planned = KDProcess.json(try KDProcess.run(["plan"] + run + ["--set", setting]).stdout)
            plan[name] = ((planned["devices"] as? [[String: Any]])?[1]["total_bytes"] as? Int)
        }
        let layers = try #require(peak["layers"]), attention = try #require(peak["attention"]), off = try #require(peak["off"])
        print("student device peak: recomputing layers \(layers) bytes, attention \(attention), without checkpointing \(off); "
            + "kd plan's total_bytes \(plan["layers"] ?? -1), \(plan["attention"] ?? -1) and \(plan["off"] ?? -1)")
        // 8 layers' saved sets against 8 inputs and one set (kd plan: 10.3 MB less of ~14 MB), and
        // 7 layers' products more (kd plan: 2.9 MB).
        #expect(2 * layers < off)
        #expect(layers < attention && 4 * attention < 3 * off)
    }

    /// The plan of the 8-layer run: the three activation figures per device, the configured one in
    /// activation_bytes and total_bytes. A student layer saves S = 319 f32 per token (attention: q before
    /// and after norm/rope and its output, 3·32, k before and after and v, 3·8, the heads' 1/rms, 4 + 1;
    /// the input and middle residuals with their 1/rms, 2·32 + 2; gate and up, 2·64) plus, for its 7
    /// adapters of rank 4, 7·4 ranks and, with dropout, their inputs (6·32 + 64): S = 603.
    /// Checkpointed, the device keeps 8·32 inputs and one S instead of 8·S, over 2 × 256 tokens, and
    /// with `train.recompute: attention` the products (q 32, k and v 2·8, the middle residual 32,
    /// gate and up 2·64: 208) of the 7 layers not in backward.
    @Test func planShowsBothActivationFigures() throws {
        let dir = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let run = try Self.longRun(dir)
        var devices: [String: [[String: Any]]] = [:]
        for (name, setting) in [("off", ["train.activation_checkpointing=false"]), ("layers", ["train.recompute=layers"]),
                                ("attention", ["train.recompute=attention"]), ("default", [])] {
            let result = try KDProcess.run(["plan"] + run + setting.flatMap { ["--set", $0] })
            #expect(result.status == 0, "\(result.stderr)")
            devices[name] = KDProcess.json(result.stdout)["devices"] as? [[String: Any]]
        }
        let layers = try #require(devices["layers"]), off = try #require(devices["off"])
        let attention = try #require(devices["attention"])
        try #require(layers.count == 2 && off.count == 2 && attention.count == 2)
        func figure(_ device: [String: Any], _ key: String) -> Int { device[key] as? Int ?? -1 }
        for (setting, list) in [("layers", layers), ("off", off)] {
            for device in list {
                let configured = figure(device, setting == "layers" ? "activation_bytes_checkpointed" : "activation_bytes_full")
                #expect(figure(device, "activation_bytes") == configured)
                #expect(figure(device, "total_bytes")
                    == figure(device, "param_bytes") + figure(device, "lora_bytes") + configured)
                #expect((device["layers_keeping_products"] as? [Int]) == [])
            }
        }
        // The default is checkpointing, and with no memory_per_device on this small run every layer keeps its products.
        #expect(devices["default"]?.map { figure($0, "total_bytes") } == attention.map { figure($0, "total_bytes") })
        // Every setting reports the same pair of figures; the teacher's device has one activation figure.
        for key in ["activation_bytes_checkpointed", "activation_bytes_full"] {
            #expect(layers.map { figure($0, key) } == off.map { figure($0, key) })
            #expect(attention.map { figure($0, key) } == off.map { figure($0, key) })
        }
        #expect(figure(layers[0], "activation_bytes_checkpointed") == figure(layers[0], "activation_bytes_full"))
        let saved = 603, hidden = 32, intermediate = 64, count = 8, tokens = 2 * 256
        #expect(figure(layers[1], "activation_bytes_full") - figure(layers[1], "activation_bytes_checkpointed")
            == tokens * 4 * (count * saved - (count * hidden + saved)))
        #expect((attention[1]["layers_keeping_products"] as? [Int]) == Array(0..<count))
        #expect(figure(attention[1], "activation_bytes") - figure(attention[1], "activation_bytes_checkpointed")
            == tokens * 4 * (count - 1) * (hidden + 2 * 8 + hidden + 2 * intermediate))
        #expect(figure(attention[0], "activation_bytes") == figure(layers[0], "activation_bytes"))
    }

    /// A student's stage on a rank of its own runs a step's next micro-batch's forward before this
    /// one's backward (GPipe), so with several micro-batches a step the plan gives its device a second
    /// micro-batch's layer inputs and products; the student's own rank keeps one.
    @Test func planCountsThePipelinedMicroBatch() throws {
        let dir = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let run = try Self.longRun(dir) + ["--set", "devices.count=3", "--set", "student.devices=[1, 2]",
                                           "--set", "devices.ranks=[0, 1, 2]", "--set", "train.recompute=attention"]
        var devices: [Int: [[String: Any]]] = [:]
        for steps in [1, 2] {
            let result = try KDProcess.run(["plan"] + run + ["--set", "train.grad_accum_steps=\(steps)"])
            #expect(result.status == 0, "\(result.stderr)")
            devices[steps] = KDProcess.json(result.stdout)["devices"] as? [[String: Any]]
        }
        let one = try #require(devices[1]), two = try #require(devices[2])
        try #require(one.count == 3 && two.count == 3)
        let part = try #require(one[1]["layers_keeping_products"] as? [Int])
        #expect(!part.isEmpty && (two[1]["layers_keeping_products"] as? [Int]) == part)
        // Per token of a micro-batch: each layer's input (32) and products (208).
        let tokens = 2 * 256
        #expect((two[1]["activation_bytes"] as? Int ?? 0) - (one[1]["activation_bytes"] as? Int ?? 0)
            == tokens * 4 * part.count * (32 + 208))
        #expect((two[2]["activation_bytes"] as? Int) == (one[2]["activation_bytes"] as? Int))
    }

    /// `train.recompute: auto` keeps the products of the first layers whose products fit beside the
    /// rest of the plan within 90% of the device's memory_per_device: with room for three layers'
    /// products, layers 0-2.
    @Test func autoKeepsProductsWhereTheBudgetAllows() throws {
        let dir = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let run = try Self.longRun(dir)
        let layers = KDProcess.json(try KDProcess.run(["plan"] + run + ["--set", "train.recompute=layers"]).stdout)
        let student = try #require((layers["devices"] as? [[String: Any]])?[1])
        let total = try #require(student["total_bytes"] as? Int), products = 2 * 256 * 4 * (32 + 2 * 8 + 32 + 2 * 64)
        for (room, kept) in [(products / 2, [Int]()), (3 * products + products / 2, [0, 1, 2]), (8 * products, Array(0..<8))] {
            let capacity = ["--set", "devices.memory_per_device=\(Int((Double(total + room) / 0.9).rounded(.up)))"]
            let result = try KDProcess.run(["plan"] + run + capacity)
            #expect(result.status == 0, "\(result.stderr)")
            let device = try #require((KDProcess.json(result.stdout)["devices"] as? [[String: Any]])?[1])
            #expect((device["layers_keeping_products"] as? [Int]) == kept, "room \(room)")
            #expect((device["total_bytes"] as? Int ?? .max) <= total + room)
            #expect(device["fits"] as? Bool == true)
        }
    }
}
