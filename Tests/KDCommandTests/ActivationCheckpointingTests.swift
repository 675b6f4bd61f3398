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
    /// and memory peaks). With dropout the recompute must draw the same masks; with two micro-batches
    /// per step they are keyed by micro-batch; with the student over two devices each stage recomputes
    /// its own layers.
    @Test(arguments: [
        ("0.0", [String]()),
        ("0.1", ["--set", "train.batch_size=1", "--set", "train.grad_accum_steps=2"]),
        ("0.1", ["--set", "devices.count=3", "--set", "student.devices=[1, 2]"]),
    ])
    func checkpointedTrainingIsBitIdentical(dropout: String, extra: [String]) throws {
        let dir = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var stdout: [Bool: String] = [:]
        for checkpointing in [true, false] {
            let result = try Self.trainFixture("\(dir)/\(checkpointing)", checkpointing: checkpointing,
                                               ["--set", "lora.dropout=\(dropout)"] + extra)
            #expect(result.status == 0, "\(result.stderr)")
            stdout[checkpointing] = result.stdout
        }
        let files = ["gradients/step-1.safetensors", "gradients/step-2.safetensors", "final_model/adapter_model.safetensors"]
        for file in files {
            let on = FileManager.default.contents(atPath: "\(dir)/true/\(file)")
            let off = FileManager.default.contents(atPath: "\(dir)/false/\(file)")
            #expect(on != nil && on == off, "\(file) differs")
        }
        #expect(TrainRunTests.stripTimes(stdout[true] ?? "") == TrainRunTests.stripTimes(stdout[false] ?? ""))
        #expect(TrainRunTests.stripTimes(stdout[true] ?? "").count == 2)
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

    @Test func checkpointingLowersTheStudentsMeasuredPeak() throws {
        let dir = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let run = try Self.longRun(dir)
        var peak: [Bool: Int] = [:], plan: [Bool: Int] = [:]
        for checkpointing in [true, false] {
            let setting = ["--set", "train.activation_checkpointing=\(checkpointing)"]
            let result = try KDProcess.run(["train"] + run + setting + ["--set", "run.output_dir=\(dir)/\(checkpointing)"])
            #expect(result.status == 0, "\(result.stderr)")
            peak[checkpointing] = (Self.lines(result.stdout).last?["device_peak_bytes"] as? [Int])?[1]
            let planned = KDProcess.json(try KDProcess.run(["plan"] + run + setting).stdout)
            plan[checkpointing] = ((planned["devices"] as? [[String: Any]])?[1]["total_bytes"] as? Int)
        }
        let on = try #require(peak[true]), off = try #require(peak[false])
        print("student device peak: checkpointing \(on) bytes, without \(off) bytes; kd plan's total_bytes "
            + "\(plan[true] ?? -1) and \(plan[false] ?? -1)")
        // 8 layers' saved sets against 8 inputs and one set (kd plan: 10.3 MB less of ~14 MB).
        #expect(2 * on < off)
    }

    /// The plan of the 8-layer run: the three activation figures per device, the configured one in
    /// activation_bytes and total_bytes. A student layer saves S = 319 f32 per token (attention: q before
    /// and after norm/rope and its output, 3·32, k before and after and v, 3·8, the heads' 1/rms, 4 + 1;
    /// the input and middle residuals with their 1/rms, 2·32 + 2; gate and up, 2·64) plus, for its 7
    /// adapters of rank 4, 7·4 ranks and, with dropout, their inputs (6·32 + 64): S = 603.
    /// Checkpointed, the device keeps 8·32 inputs and one S instead of 8·S, over 2 × 256 tokens.
    @Test func planShowsBothActivationFigures() throws {
        let dir = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let run = try Self.longRun(dir)
        var devices: [Bool: [[String: Any]]] = [:]
        for checkpointing in [true, false] {
            let result = try KDProcess.run(["plan"] + run + ["--set", "train.activation_checkpointing=\(checkpointing)"])
            #expect(result.status == 0, "\(result.stderr)")
            devices[checkpointing] = KDProcess.json(result.stdout)["devices"] as? [[String: Any]]
        }
        let defaults = KDProcess.json(try KDProcess.run(["plan"] + run).stdout)["devices"] as? [[String: Any]]
        let on = try #require(devices[true]), off = try #require(devices[false])
        try #require(on.count == 2 && off.count == 2)
        func figure(_ device: [String: Any], _ key: String) -> Int { device[key] as? Int ?? -1 }
        for (checkpointing, list) in [(true, on), (false, off)] {
            for device in list {
                let configured = figure(device, checkpointing ? "activation_bytes_checkpointed" : "activation_bytes_full")
                #expect(figure(device, "activation_bytes") == configured)
                #expect(figure(device, "total_bytes")
                    == figure(device, "param_bytes") + figure(device, "lora_bytes") + configured)
            }
        }
        // The default is checkpointing.
        #expect(defaults?.map { figure($0, "total_bytes") } == on.map { figure($0, "total_bytes") })
        // Both settings report the same pair of figures; the teacher's device has one activation figure.
        for key in ["activation_bytes_checkpointed", "activation_bytes_full"] {
            #expect(on.map { figure($0, key) } == off.map { figure($0, key) })
        }
        #expect(figure(on[0], "activation_bytes_checkpointed") == figure(on[0], "activation_bytes_full"))
        let saved = 603, hidden = 32, layers = 8, tokens = 2 * 256
        #expect(figure(on[1], "activation_bytes_full") - figure(on[1], "activation_bytes_checkpointed")
            == tokens * 4 * (layers * saved - (layers * hidden + saved)))
    }
}
