import Foundation
import Testing
import KDCore
import KDModels

/// `run.data_parallel`: replicas of the whole run as the ranks of an MPI job (`mpirun` on this
/// host, `--oversubscribe`), each taking its share of every micro-batch and summing the LoRA
/// gradients with the others in rank order before clipping.
@Suite(.serialized) struct DataParallelTests {
    static let fixture = TrainRunTests.fixture

    /// Two replicas, one row of each two-row micro-batch each, pass the parity checks of a single
    /// process against torch + PEFT, with the same tolerances: step 1's and step 2's losses and
    /// gradients, and the adapter after the second AdamW step.
    @Test(arguments: ["dense-teacher", "moe-teacher"])
    func twoReplicasMatchTorchAndPEFT(fixture: String) throws {
        try TrainParityTests.checkAgainstTorch(fixture: fixture, dtype: "f32", replicas: 2)
    }

    static func values(_ path: String) throws -> [String: [Float]] {
        let file = try SafetensorsFile(path: path)
        var out: [String: [Float]] = [:]
        for name in file.tensors.keys { out[name] = try TrainParityTests.values(file, name) }
        return out
    }

    /// Against one process on the same global batch: three replicas over micro-batches of four
    /// rows (shares of 1, 1 and 2 rows) and two micro-batches a step. The metrics are sums of
    /// non-negative terms and agree to 1e-6 + 1e-4·|x|; a gradient element is a sum with
    /// cancellation whose rounding scales with its terms, bounded here by the largest element of its
    /// tensor: 1e-6 + 1e-4·max|g|. Step 1 starts from the same state in both runs. From step 2 on,
    /// the bytes the ranks send each other are what `kd plan` predicts.
    @Test func threeUnevenReplicasGiveTheSingleProcessGradients() throws {
        let dir = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let common = ["--set", "train.batch_size=4", "--set", "train.grad_accum_steps=2", "--set", "lora.dropout=0",
                      "--set", "train.lr_schedule=constant"]
        let single = try KDProcess.run(TrainRunTests.arguments(dir + "/single", steps: 2, extra: common + ["--save-gradients"]))
        try #require(single.status == 0, "\(single.stderr)")
        let replicas = ["--set", "run.data_parallel=3"]
        let replicated = try KDProcess.run(
            TrainRunTests.arguments(dir + "/replicated", steps: 2, extra: common + replicas + ["--save-gradients"]), ranks: 3)
        try #require(replicated.status == 0, "\(replicated.stderr)")
        let lines = replicated.stdout.split(separator: "\n").map { KDProcess.json(String($0)) }
        try #require(lines.count == 2, "rank 0 alone prints the metrics: \(replicated.stdout)")
        let one = KDProcess.json(String(single.stdout.split(separator: "\n")[0])), three = lines[0]
        #expect(one["ranks"] as? Int == 1 && one["bytes_sent"] as? Int == 0)
        #expect(three["ranks"] as? Int == 3)
        #expect((three["bytes_sent"] as? Int ?? 0) > 0)
        for key in ["tokens", "scored_tokens"] { #expect(one[key] as? Int == three[key] as? Int, "\(key)") }
        for key in ["loss", "kl_loss", "ce_loss", "grad_norm", "top1_agreement"] {
            let a = one[key] as? Double ?? .nan, b = three[key] as? Double ?? .nan
            #expect(abs(a - b) <= 1e-6 + 1e-4 * abs(a), "\(key): \(a) vs \(b)")
        }
        let expected = try Self.values(dir + "/single/gradients/step-1.safetensors")
        let got = try Self.values(dir + "/replicated/gradients/step-1.safetensors")
        #expect(expected.count == 28 && got.keys.sorted() == expected.keys.sorted())
        var worst = 0.0
        for (name, want) in expected {
            let have = got[name] ?? []
            try #require(have.count == want.count, "\(name)")
            let scale = Double(want.map { abs($0) }.max() ?? 0)
            for i in want.indices {
                let ratio = abs(Double(have[i]) - Double(want[i])) / (1e-6 + 1e-4 * scale)
                worst = max(worst, ratio)
                if !(ratio <= 1) {
                    Issue.record("\(name)[\(i)]: \(have[i]) with 3 replicas, \(want[i]) alone")
                    break
                }
            }
        }
        print("data parallel: 3 replicas vs 1 process, step 1 gradients: worst error / tolerance = \(worst)")

        var planArguments = TrainRunTests.arguments(dir + "/plan", steps: 2, extra: common + replicas)
        planArguments[0] = "plan"
        let plan = try KDProcess.run(planArguments)
        try #require(plan.status == 0, "\(plan.stderr)")
        let ranks = KDProcess.json(plan.stdout)["ranks"] as? [[String: Any]] ?? []
        #expect(ranks.map { $0["rank"] as? Int } == [0, 1, 2])
        let planned = ranks.reduce(0) { $0 + ($1["sent_bytes_per_step"] as? Int ?? 0) }
        #expect(planned > 0 && lines[1]["bytes_sent"] as? Int == planned, "planned \(planned), step 2 sent \(lines[1]["bytes_sent"] ?? "")")
        #expect(plan.stderr.contains("rank 2  devices 0,1  "), "\(plan.stderr)")
    }

    /// The ranks a process of mpirun's started, read from /proc.
    static func children(of parent: pid_t) -> [pid_t] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap { pid_t($0) }.filter { pid in
            guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
                  let close = stat.range(of: ")", options: .backwards) else { return false }
            let fields = stat[close.upperBound...].split(separator: " ")
            return fields.count > 1 && pid_t(fields[1]) == parent
        }
    }

    /// mpirun's children by their rank (OMPI_COMM_WORLD_RANK in their environment).
    static func ranks(of parent: pid_t) -> [Int: pid_t] {
        var out: [Int: pid_t] = [:]
        for pid in children(of: parent) {
            guard let environment = FileManager.default.contents(atPath: "/proc/\(pid)/environ") else { continue }
            for entry in environment.split(separator: 0) {
                let text = String(decoding: entry, as: UTF8.self)
                if text.hasPrefix("OMPI_COMM_WORLD_RANK="), let rank = Int(text.dropFirst("OMPI_COMM_WORLD_RANK=".count)) {
                    out[rank] = pid
                }
            }
        }
        return out
    }

    /// SIGKILL on one rank ends every rank, non-zero, within 10 s; the checkpoints left are whole,
    /// and `--resume` (under mpirun again) finishes with the adapter and moments of an uninterrupted
    /// run, byte for byte. Dropout and shuffling are on.
    @Test func aKilledRankEndsTheJobAndResumeGivesTheUninterruptedAdapter() throws {
        let dir = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let steps = 30
        let extra = ["--set", "train.batch_size=2", "--set", "run.data_parallel=2", "--set", "train.lr_schedule=constant"]
        let straight = try KDProcess.run(TrainRunTests.arguments(dir + "/straight", steps: steps, extra: extra), ranks: 2)
        try #require(straight.status == 0, "\(straight.stderr)")

        let run = dir + "/killed"
        let process = try KDProcess.start(TrainRunTests.arguments(run, steps: 100_000, extra: extra), ranks: 2)
        defer { if process.isRunning { process.terminate() } }
        while !FileManager.default.fileExists(atPath: run + "/checkpoint-2/adapter_model.safetensors") {
            try #require(process.isRunning, "the run ended before its first checkpoint")
            usleep(10_000)
        }
        let ranks = Self.children(of: process.processIdentifier)
        try #require(ranks.count == 2, "mpirun's children: \(ranks)")
        let killed = ContinuousClock.now
        kill(ranks[1], SIGKILL)
        process.waitUntilExit()
        let seconds = (ContinuousClock.now - killed).seconds
        #expect(process.terminationStatus != 0)
        #expect(seconds <= 10, "the job took \(seconds) s to end")
        #expect(Self.children(of: process.processIdentifier).isEmpty)
        let left = (try FileManager.default.contentsOfDirectory(atPath: run)).filter { $0.hasPrefix("checkpoint-") }
        let newest = left.compactMap { Int($0.dropFirst("checkpoint-".count)) }.max() ?? 0
        try #require(newest < steps, "the run passed step \(steps) before the kill")

        let resumed = try KDProcess.run(TrainRunTests.arguments(run, steps: steps, extra: extra + ["--resume"]), ranks: 2)
        #expect(resumed.status == 0, "\(resumed.stderr)")
        #expect(resumed.stderr.contains("resuming from \(run)/checkpoint-\(newest) at step \(newest)"), "\(resumed.stderr)")
        #expect(!resumed.stderr.contains("skipping"), "every checkpoint left is whole: \(resumed.stderr)")
        for name in ["final_model/adapter_model.safetensors", "checkpoint-\(steps)/optimizer.safetensors"] {
            let a = FileManager.default.contents(atPath: "\(dir)/straight/\(name)")
            #expect(a != nil && a == FileManager.default.contents(atPath: "\(run)/\(name)"), "\(name) differs")
        }
        print("data parallel: the job ended \(seconds) s after SIGKILL of one rank")
    }

    /// SIGTERM to one rank stops every rank after the same step: rank 0 writes that step's
    /// checkpoint, and the job exits 143.
    @Test func aSignalToOneRankStopsAllInOrder() throws {
        let extra = ["--set", "train.batch_size=2", "--set", "run.data_parallel=2", "--set", "checkpoint.every_steps=1000"]
        try Self.stopOneRank(1, extra)
    }

    /// Starts a run of `count` ranks with `extra` settings, sends `stop` to each rank of `signalled`
    /// (to mpirun when nil) after the first step, and expects exit 128 + `stop` and the checkpoint
    /// of the step it stopped at. A watchdog ends a job that is not over 30 s later.
    static func stopOneRank(_ rank: Int, _ extra: [String]) throws { try stopRanks([rank], of: 2, extra) }

    static func stopRanks(_ signalled: [Int]?, of count: Int, _ extra: [String], signal stop: Int32 = SIGTERM) throws {
        let dir = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let run = dir + "/run"
        let err = Pipe()
        let process = try KDProcess.start(TrainRunTests.arguments(run, steps: 100_000, extra: extra), ranks: count, stderr: err)
        defer { if process.isRunning { process.terminate() } }
        while (try? String(contentsOfFile: run + "/metrics.jsonl", encoding: .utf8))?.contains("\n") != true {
            try #require(process.isRunning, "the run ended before its first step")
            usleep(10_000)
        }
        let ranks = Self.ranks(of: process.processIdentifier)
        let mpirun = process.processIdentifier
        if let signalled {
            for rank in signalled { kill(try #require(ranks[rank], "mpirun's children: \(ranks)"), stop) }
        } else {
            kill(mpirun, stop)
        }
        DispatchQueue.global().asyncAfter(deadline: .now() + 30) { if process.isRunning { kill(mpirun, SIGKILL) } }
        let errorText = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        #expect(process.terminationStatus == 128 + stop, "\(errorText)")
        let stopped = try #require(errorText.firstRange(of: "stopped at step ").map { errorText[$0.upperBound...].prefix { $0.isNumber } },
                                   "\(errorText)")
        #expect(FileManager.default.fileExists(atPath: "\(run)/checkpoint-\(stopped)/adapter_model.safetensors"), "\(errorText)")
    }

    /// A run whose ranks do not match its replicas, and commands that run in one process, stop
    /// with one line per failing rank naming it, and a non-zero exit.
    @Test func ranksMustMatchTheReplicas() throws {
        let dir = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let replicas = ["--set", "run.data_parallel=2", "--set", "train.batch_size=2"]
        let alone = try KDProcess.run(TrainRunTests.arguments(dir + "/a", steps: 1, extra: replicas))
        #expect(alone.status == 1)
        #expect(alone.stderr == "kd: error: run.data_parallel is 2 with 1 rank a replica: start 2 MPI ranks (mpirun -n 2 kd train ...)\n")
        let tooMany = try KDProcess.run(TrainRunTests.arguments(dir + "/b", steps: 1), ranks: 3)
        #expect(tooMany.status != 0)
        #expect(tooMany.stderr.contains("kd: error: rank "), "\(tooMany.stderr)")
        #expect(tooMany.stderr.contains("kd runs as 3 MPI ranks but the run needs run.data_parallel 1 × 1 (devices.ranks [0, 0])"),
                "\(tooMany.stderr)")
        #expect(!FileManager.default.fileExists(atPath: dir + "/b/metrics.jsonl"))
        let smallBatch = try KDProcess.run(TrainRunTests.arguments(dir + "/c", steps: 1, extra: ["--set", "run.data_parallel=2"]),
                                           ranks: 2)
        #expect(smallBatch.status != 0)
        #expect(smallBatch.stderr.contains("train.batch_size × train.grad_accum_steps (1 × 1) must be at least run.data_parallel (2)"),
                "\(smallBatch.stderr)")
        let forward = try KDProcess.run(["plan", "--config", Self.fixture + "/run.yaml"], ranks: 2)
        #expect(forward.status != 0)
        #expect(forward.stderr.contains("kd plan runs in one process, not as 2 MPI ranks"), "\(forward.stderr)")
    }
}

/// A teacher on a rank of its own (`devices.ranks`; by default device i on rank i when the job has
/// data_parallel × devices.count ranks): the student's rank sends it each batch and receives its
/// logits, which are the in-process teacher's bits, so the run is the single process's bit for bit.
@Suite(.serialized) struct TeacherRankTests {
    static func run(_ dir: String, _ fixture: String, ranks: Int?, _ extra: [String] = []) throws -> [[String: Any]] {
        let path = KDProcess.fixtures + "/train/" + fixture
        let result = try KDProcess.run([
            "train", "--config", path + "/run.yaml", "--save-gradients", "--set", "run.output_dir=\(dir)",
            "--set", "teacher.path=\(path)/teacher", "--set", "student.path=\(path)/student",
            "--set", "lora.init_from=\(path)/adapter-init", "--set", "data.train=\(path)/tokens.jsonl"] + extra, ranks: ranks)
        #expect(result.status == 0, "\(result.stderr)")
        return result.stdout.split(separator: "\n").map { KDProcess.json(String($0)) }
    }

    static let files = ["gradients/step-1.safetensors", "gradients/step-2.safetensors", "checkpoint-2/adapter_model.safetensors",
                        "checkpoint-2/optimizer.safetensors", "final_model/adapter_model.safetensors"]

    /// Equal metrics lines but for timings and bytes (with `transfers`, also the bytes copied
    /// between a process's devices, which a teacher split over ranks sends instead).
    static func sameNumbers(_ a: [[String: Any]], _ b: [[String: Any]], transfers: Bool = true) -> Bool {
        let keys = ["step", "loss", "kl_loss", "ce_loss", "grad_norm", "tokens", "scored_tokens", "top1_agreement"]
            + (transfers ? ["transfer_bytes"] : [])
        return a.count == b.count && zip(a, b).allSatisfy { x, y in
            keys.allSatisfy { "\(x[$0] ?? "nil")" == "\(y[$0] ?? "nil")" }
        }
    }

    @Test(arguments: ["dense-teacher", "moe-teacher"])
    func twoRanksGiveTheSingleProcessBits(fixture: String) throws {
        let dir = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let alone = try Self.run(dir + "/alone", fixture, ranks: nil)
        let split = try Self.run(dir + "/split", fixture, ranks: 2)
        #expect(alone.count == 2 && Self.sameNumbers(alone, split), "\(alone) vs \(split)")
        for file in Self.files {
            let a = FileManager.default.contents(atPath: "\(dir)/alone/\(file)")
            #expect(a != nil && a == FileManager.default.contents(atPath: "\(dir)/split/\(file)"), "\(file)")
        }
        #expect(split.allSatisfy { $0["ranks"] as? Int == 2 })
        // Over the run: the logits of every scored position and 24 bytes of times a chunk came
        // back; each micro-batch went over as 40 bytes of header, 5 a token (padded) and 8 a
        // scored row. (A step's line counts the next batch's request when it was sent early.)
        let phases = split.first?["phase_ms"] as? [String: Any]
        #expect(phases?["teacher_forward"] != nil && phases?["teacher_head"] != nil, "\(phases ?? [:])")
        let config = KDProcess.json(try String(contentsOfFile: KDProcess.fixtures + "/train/\(fixture)/teacher/config.json", encoding: .utf8))
        let vocab = try #require(config["vocab_size"] as? Int)
        let scored = split.reduce(0) { $0 + ($1["scored_tokens"] as? Int ?? 0) }
        let tokens = split.reduce(0) { $0 + ($1["tokens"] as? Int ?? 0) }
        let sent = split.reduce(0) { $0 + ($1["bytes_sent"] as? Int ?? 0) }
        let micro = fixture == "moe-teacher" ? 4 : 2
        let least = scored * vocab * 4 + 24 * micro + 40 * micro + 5 * tokens + 8 * scored
        #expect(sent >= least && sent <= least + 5 * 64 * micro, "\(sent) bytes for \(scored) scored rows of \(vocab) logits")
    }

    /// Two replicas of a teacher rank and a student rank each (4 ranks) equal two replicas with
    /// their teachers in-process, bit for bit.
    @Test func replicasOfTwoRanksEqualReplicasOfOne() throws {
        let dir = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let replicas = ["--set", "run.data_parallel=2"]
        let one = try Self.run(dir + "/one", "dense-teacher", ranks: 2, replicas)
        let two = try Self.run(dir + "/two", "dense-teacher", ranks: 4, replicas)
        #expect(one.count == 2 && Self.sameNumbers(one, two), "\(one) vs \(two)")
        for file in Self.files {
            let a = FileManager.default.contents(atPath: "\(dir)/one/\(file)")
            #expect(a != nil && a == FileManager.default.contents(atPath: "\(dir)/two/\(file)"), "\(file)")
        }
        #expect(two.allSatisfy { $0["ranks"] as? Int == 4 })
    }

    /// SIGTERM to the student's rank while its teacher's rank works on the next batch: the
    /// student takes that batch's logits off the wire, writes its checkpoint, lets the teacher
    /// go, and the job exits 143. Four rows a batch make a chunk too large for MPI to send
    /// without its receiver (shared memory sends 4 KiB eagerly): a teacher left sending would
    /// hang the job, which the watchdog ends.
    @Test func aStoppedStudentReleasesItsTeacher() throws {
        // Rank 1 holds the student (device 1).
        try DataParallelTests.stopOneRank(1, ["--set", "checkpoint.every_steps=1000", "--set", "train.batch_size=4"])
    }

    /// SIGKILL on the teacher's rank, while its student waits for logits, ends the job non-zero
    /// within 10 s, leaving the checkpoints whole.
    @Test func aKilledTeacherRankEndsTheJob() throws {
        try Self.killRank(0, ranks: 2)  // device 0, the teacher's
    }

    /// Starts a run of `ranks` ranks, kills rank `rank` once the first checkpoint is written, and
    /// expects the job to end non-zero within 10 s with its checkpoints whole (a resume in one
    /// process skips none).
    static func killRank(_ rank: Int, ranks: Int, extra: [String] = []) throws {
        let dir = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let run = dir + "/run"
        let settings = ["--set", "train.batch_size=4"] + extra
        let process = try KDProcess.start(TrainRunTests.arguments(run, steps: 100_000, extra: settings), ranks: ranks)
        defer { if process.isRunning { process.terminate() } }
        while !FileManager.default.fileExists(atPath: run + "/checkpoint-2/adapter_model.safetensors") {
            try #require(process.isRunning, "the run ended before its first checkpoint")
            usleep(10_000)
        }
        let victim = try #require(DataParallelTests.ranks(of: process.processIdentifier)[rank])
        let killed = ContinuousClock.now
        kill(victim, SIGKILL)
        let mpirun = process.processIdentifier
        DispatchQueue.global().asyncAfter(deadline: .now() + 30) { if process.isRunning { kill(mpirun, SIGKILL) } }
        process.waitUntilExit()
        let seconds = (ContinuousClock.now - killed).seconds
        #expect(process.terminationStatus != 0)
        #expect(seconds <= 10, "the job took \(seconds) s to end")
        let resumed = try KDProcess.run(TrainRunTests.arguments(run, steps: 1, extra: ["--resume"] + settings))
        #expect(resumed.status == 0 && !resumed.stderr.contains("skipping"), "\(resumed.stderr)")
    }

    /// The teacher's stages over ranks of their own, one device each (2 for the MoE teacher; 6, as
    /// the reference experiment places its teacher, for the dense one), the student on the last
    /// rank: each rank loads its stages only, passes its output on, and the last sends the logits;
    /// gradients, adapters and moments are the single process's with the same devices, byte for byte.
    @Test(arguments: [("moe-teacher", 2), ("dense-teacher", 6)])
    func aTeacherSplitOverRanksGivesTheSingleProcessBits(fixture: String, teacherDevices: Int) throws {
        let dir = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let devices = ["--set", "devices.count=\(teacherDevices + 1)",
                       "--set", "teacher.devices=[\((0..<teacherDevices).map(String.init).joined(separator: ","))]",
                       "--set", "student.devices=[\(teacherDevices)]"]
        let alone = try Self.run(dir + "/alone", fixture, ranks: nil, devices)
        let split = try Self.run(dir + "/split", fixture, ranks: teacherDevices + 1, devices)
        #expect(alone.count == 2 && Self.sameNumbers(alone, split, transfers: false), "\(alone) vs \(split)")
        for file in Self.files {
            let a = FileManager.default.contents(atPath: "\(dir)/alone/\(file)")
            #expect(a != nil && a == FileManager.default.contents(atPath: "\(dir)/split/\(file)"), "\(file)")
        }
        #expect(split.allSatisfy { $0["ranks"] as? Int == teacherDevices + 1 })
    }
}
