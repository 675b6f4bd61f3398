import Foundation
import Testing
import KDCore
import KDModels

/// Runs of `kd train` on the small fixture models: resume, signals, refusals.
@Suite(.serialized) struct TrainRunTests {
    static let fixture = KDProcess.fixtures + "/train/dense-teacher"

    /// A run with shuffling and dropout on, over the fixture's four rows, one row per step.
    static func arguments(_ out: String, steps: Int, extra: [String] = []) -> [String] {
        ["train", "--config", fixture + "/run.yaml",
         "--set", "run.output_dir=\(out)", "--set", "teacher.path=\(fixture)/teacher",
         "--set", "student.path=\(fixture)/student", "--set", "data.train=\(fixture)/tokens.jsonl",
         "--set", "data.shuffle=true", "--set", "lora.dropout=0.1", "--set", "train.batch_size=1",
         "--set", "train.max_steps=\(steps)", "--set", "checkpoint.every_steps=2", "--set", "checkpoint.keep_last=5",
         "--set", "train.lr_schedule=cosine", "--set", "train.warmup_steps=1"] + extra
    }

    /// Metrics lines without what depends on timing (the times, phase_ms, stage_busy) or on the process: the peaks of memory
    /// (device_peak_bytes, peak_rss_bytes) count from the process's start and vary with how the
    /// teacher's thread interleaves with the student's.
    static func stripTimes(_ metrics: String) -> [String] {
        metrics.split(separator: "\n").map { line in
            var object = KDProcess.json(String(line))
            for key in ["elapsed_s", "teacher_ms", "student_ms", "tokens_per_s", "device_peak_bytes", "peak_rss_bytes", "phase_ms", "stage_busy"] {
                object.removeValue(forKey: key)
            }
            return String(decoding: try! JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]), as: UTF8.self)
        }
    }

    @Test(arguments: ["default", "pissa"])
    func resumedRunIsBitIdenticalToAnUninterruptedOne(initMethod: String) throws {
        let dir = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let initialisation = ["--set", "lora.init=\(initMethod)"]
        let straight = try KDProcess.run(Self.arguments(dir + "/straight", steps: 6, extra: initialisation))
        #expect(straight.status == 0, "\(straight.stderr)")
        let first = try KDProcess.run(Self.arguments(dir + "/resumed", steps: 2, extra: initialisation))
        #expect(first.status == 0, "\(first.stderr)")
        let second = try KDProcess.run(Self.arguments(dir + "/resumed", steps: 6, extra: initialisation + ["--resume"]))
        #expect(second.status == 0, "\(second.stderr)")
        #expect(second.stderr.contains("resuming from \(dir)/resumed/checkpoint-2 at step 2"))
        for name in ["adapter_model.safetensors", "optimizer.safetensors"] {
            let a = FileManager.default.contents(atPath: "\(dir)/straight/checkpoint-6/\(name)")
            let b = FileManager.default.contents(atPath: "\(dir)/resumed/checkpoint-6/\(name)")
            #expect(a != nil && a == b, "\(name) differs")
        }
        let straightMetrics = try String(contentsOfFile: dir + "/straight/metrics.jsonl", encoding: .utf8)
        let resumedMetrics = try String(contentsOfFile: dir + "/resumed/metrics.jsonl", encoding: .utf8)
        #expect(Self.stripTimes(straightMetrics) == Self.stripTimes(resumedMetrics))
        #expect(Self.stripTimes(straightMetrics).count == 6)
        // Dropout is on: a run with another seed differs.
        let other = try KDProcess.run(Self.arguments(dir + "/other", steps: 2, extra: initialisation + ["--set", "run.seed=8"]))
        #expect(other.status == 0)
        #expect(FileManager.default.contents(atPath: "\(dir)/other/checkpoint-2/adapter_model.safetensors")
            != FileManager.default.contents(atPath: "\(dir)/straight/checkpoint-2/adapter_model.safetensors"))
    }

    @Test func mergedFinalModelEqualsTheAdapter() throws {
        let dir = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let run = try KDProcess.run(Self.arguments(dir + "/run", steps: 2, extra: ["--set", "checkpoint.save_merged=true"]))
        #expect(run.status == 0, "\(run.stderr)")
        let tokens = Self.fixture + "/tokens.jsonl"
        let viaAdapter = try KDProcess.run(["forward", "--model", Self.fixture + "/student", "--adapter", dir + "/run/final_model",
                                            "--tokens", tokens, "--output", dir + "/a.safetensors"])
        let viaMerged = try KDProcess.run(["forward", "--model", dir + "/run/final_model/merged", "--tokens", tokens,
                                           "--output", dir + "/b.safetensors"])
        #expect(viaAdapter.status == 0 && viaMerged.status == 0, "\(viaAdapter.stderr) \(viaMerged.stderr)")
        let device = Device(id: 0)
        let a = try SafetensorsFile(path: dir + "/a.safetensors").load("logits", on: device)
        let b = try SafetensorsFile(path: dir + "/b.safetensors").load("logits", on: device)
        var worst: Float = 0
        for i in 0..<a.count { worst = max(worst, abs(a.data[i] - b.data[i])) }
        #expect(worst < 1e-4)
    }

    @Test func concurrentAndSequentialSchedulesGiveTheSameNumbers() throws {
        let dir = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for mode in ["on", "off"] {
            let result = try KDProcess.run(Self.arguments(dir + "/" + mode, steps: 3, extra: [
                "--set", "run.concurrency=\(mode)", "--set", "run.threads=2", "--set", "train.grad_accum_steps=2",
                "--set", "distill.chunk_tokens=3",
            ]))
            #expect(result.status == 0, "\(result.stderr)")
        }
        let on = FileManager.default.contents(atPath: dir + "/on/checkpoint-3/adapter_model.safetensors")
        #expect(on != nil && on == FileManager.default.contents(atPath: dir + "/off/checkpoint-3/adapter_model.safetensors"))
        let metrics = { (mode: String) in
            Self.stripTimes(try! String(contentsOfFile: "\(dir)/\(mode)/metrics.jsonl", encoding: .utf8))
        }
        #expect(metrics("on") == metrics("off"))
        // One device per model: only the teacher's logits move, 96 f32 per scored token.
        for line in metrics("on").map(KDProcess.json) {
            let scored = try #require(line["scored_tokens"] as? Int)
            #expect(line["transfer_bytes"] as? Int == scored * 96 * 4)
        }
    }

    @Test func resumeRefusesADifferentShapeAndFreshRunsRefuseAUsedDirectory() throws {
        let dir = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(try KDProcess.run(Self.arguments(dir + "/run", steps: 2)).status == 0)
        let again = try KDProcess.run(Self.arguments(dir + "/run", steps: 4))
        #expect(again.status == 1)
        #expect(again.stderr.hasSuffix("kd: error: \(dir)/run already holds a run: resume it with --resume, or choose another run.output_dir\n"))
        let reshaped = try KDProcess.run(Self.arguments(dir + "/run", steps: 4, extra: ["--resume", "--set", "lora.r=8"]))
        #expect(reshaped.status == 1)
        #expect(reshaped.stderr.hasSuffix("kd: error: cannot resume from \(dir)/run/checkpoint-2: lora.r is 4 in the checkpoint but 8 in this run\n"))
        let missing = try KDProcess.run(Self.arguments(dir + "/run", steps: 4, extra: ["--resume", dir + "/nothing"]))
        #expect(missing.stderr.hasSuffix("kd: error: \(dir)/nothing: not a complete checkpoint (no trainer_state.json)\n"))
    }

    @Test func sigtermCheckpointsAndExits143() throws {
        let dir = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: KDProcess.binary)
        process.arguments = Self.arguments(dir + "/run", steps: 100_000, extra: ["--json"])
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        // Wait for the first logged step, then ask it to stop; keep draining stdout meanwhile.
        let firstLine = DispatchSemaphore(value: 0)
        DispatchQueue.global().async {
            var seen = Data()
            while true {
                let chunk = out.fileHandleForReading.availableData
                if chunk.isEmpty { break }
                if !seen.contains(UInt8(ascii: "\n")) {
                    seen.append(chunk)
                    if seen.contains(UInt8(ascii: "\n")) { firstLine.signal() }
                }
            }
            firstLine.signal()
        }
        firstLine.wait()
        process.terminate()
        let errorText = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        #expect(process.terminationStatus == 143)
        #expect(errorText.contains("by signal 15; checkpoint \(dir)/run/checkpoint-"))
        #expect(errorText.contains("resume with: kd train --config"))
        let resumed = try KDProcess.run(Self.arguments(dir + "/run", steps: 3, extra: ["--resume"]))
        #expect(resumed.status == 0, "\(resumed.stderr)")
    }

    @Test func nonFiniteLossStopsWithTheLastGoodCheckpointNamed() throws {
        let dir = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let teacher = dir + "/teacher"
        try FileManager.default.copyItem(atPath: Self.fixture + "/teacher", toPath: teacher)
        // Poison the teacher's output projection: its logits, and so the loss, become NaN.
        let path = teacher + "/model.safetensors"
        let file = try SafetensorsFile(path: path)
        let names = file.tensors.keys.sorted()
        let device = Device(id: 0)
        let tensors = try names.map { try file.load($0, on: device).clone() }
        let head = tensors[names.firstIndex(of: "lm_head.weight")!]
        head.data[0] = .nan
        let writer = try SafetensorsWriter(path: path, entries: zip(names, tensors).map { .init(name: $0, dtype: .f32, shape: $1.shape) })
        for tensor in tensors { try writer.write(tensor) }
        try writer.finish()
        let result = try KDProcess.run(Self.arguments(dir + "/run", steps: 3, extra: ["--set", "teacher.path=\(teacher)"]))
        #expect(result.status == 1)
        #expect(result.stderr.hasSuffix("kd: error: step 1: the loss is not finite; stopped without updating. No checkpoint was written yet\n"))
        #expect(TrainingCheckpointProbe.count(dir + "/run") == 0)
    }
}

enum TrainingCheckpointProbe {
    static func count(_ dir: String) -> Int {
        ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).filter { $0.hasPrefix("checkpoint-") }.count
    }
}
