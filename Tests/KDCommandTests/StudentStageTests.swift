import Foundation
import Testing
import KDCore

/// The student's stages over ranks (`devices.ranks`; by default device i on rank i when the job
/// has data_parallel × devices.count ranks): its first stages' ranks run their layers forward and
/// backward, keep their adapters, gradients and moments, and step them; the student's rank adds
/// their Σg² into the norm in slot order and gathers their adapters and moments for checkpoints.
/// The kernels and their order are the one process's, so every number is its bit for bit.
@Suite(.serialized) struct StudentStageTests {
    static let compared = TeacherRankTests.files + ["eval.json"]

    /// Both files equal and present under `a` and `b`.
    static func expectSameFiles(_ a: String, _ b: String, _ files: [String] = compared) {
        for file in files {
            let x = FileManager.default.contents(atPath: "\(a)/\(file)")
            #expect(x != nil && x == FileManager.default.contents(atPath: "\(b)/\(file)"), "\(file)")
        }
    }

    static func devices(teacher: Int) -> [String] {
        ["--set", "devices.count=\(teacher + 2)", "--set", "teacher.devices=[\((0..<teacher).map(String.init).joined(separator: ","))]",
         "--set", "student.devices=[\(teacher),\(teacher + 1)]"]
    }

    /// Eight ranks of one device each (the dense teacher's six stages, the student's two), and the
    /// MoE teacher on one rank with the student over two more: losses, gradients, adapters, moments
    /// and the held-out evaluation (base and distilled, both through the split student) are the
    /// single process's with the same devices, byte for byte.
    @Test(arguments: [("dense-teacher", 6), ("moe-teacher", 1)])
    func studentStagesOnRanksGiveTheSingleProcessBits(fixture: String, teacherDevices: Int) throws {
        let dir = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let extra = Self.devices(teacher: teacherDevices)
            + ["--set", "data.eval=\(KDProcess.fixtures)/train/\(fixture)/tokens.jsonl"]
        let alone = try TeacherRankTests.run(dir + "/alone", fixture, ranks: nil, extra)
        let split = try TeacherRankTests.run(dir + "/split", fixture, ranks: teacherDevices + 2, extra)
        #expect(alone.count == 2 && TeacherRankTests.sameNumbers(alone, split, transfers: false), "\(alone) vs \(split)")
        Self.expectSameFiles(dir + "/alone", dir + "/split")
        #expect(split.allSatisfy { $0["ranks"] as? Int == teacherDevices + 2 && ($0["stage_busy"] as? [Double])?.count == 2 })
        #expect(alone.allSatisfy { ($0["stage_busy"] as? [Double])?.count == 1 })
    }

    /// A split student resumed from a checkpoint (each part restores its adapters and moments from
    /// it) finishes as the one process does uninterrupted, with dropout and shuffling on.
    @Test func aResumedSplitStudentGivesTheUninterruptedRun() throws {
        let dir = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let extra = Self.devices(teacher: 1) + ["--set", "checkpoint.every_steps=1"]
        let straight = try KDProcess.run(TrainRunTests.arguments(dir + "/straight", steps: 4, extra: extra))
        #expect(straight.status == 0, "\(straight.stderr)")
        let split = try KDProcess.run(TrainRunTests.arguments(dir + "/split", steps: 4, extra: extra), ranks: 3)
        #expect(split.status == 0, "\(split.stderr)")
        let resumed = try KDProcess.run(TrainRunTests.arguments(
            dir + "/resumed", steps: 4, extra: extra + ["--resume", dir + "/split/checkpoint-2"]), ranks: 3)
        #expect(resumed.status == 0, "\(resumed.stderr)")
        let lines = { (text: String) in text.split(separator: "\n").map { KDProcess.json(String($0)) } }
        #expect(TeacherRankTests.sameNumbers(lines(straight.stdout), lines(split.stdout), transfers: false))
        #expect(TeacherRankTests.sameNumbers(Array(lines(straight.stdout).suffix(2)), lines(resumed.stdout), transfers: false))
        for run in ["split", "resumed"] {
            Self.expectSameFiles(dir + "/straight", dir + "/" + run, ["checkpoint-4/adapter_model.safetensors",
                                                                      "checkpoint-4/optimizer.safetensors",
                                                                      "final_model/adapter_model.safetensors"])
        }
    }

    /// With activation checkpointing, the first stages run the next micro-batches' forwards while
    /// the student's rank finishes the current one (GPipe: each part sets aside the layers' inputs
    /// of the forwards whose backward is still to come). Four micro-batches a step, dropout on, the
    /// student over 2 and over 3 ranks (parts passing activations and gradients to each other):
    /// the one process's numbers and files, byte for byte.
    @Test(arguments: [2, 3])
    func pipelinedMicroBatchesGiveTheSingleProcessBits(studentRanks: Int) throws {
        let dir = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let extra = ["--set", "devices.count=\(studentRanks + 1)", "--set", "teacher.devices=[0]",
                     "--set", "student.devices=[\((1...studentRanks).map(String.init).joined(separator: ","))]",
                     "--set", "train.grad_accum_steps=4", "--set", "train.activation_checkpointing=true", "--save-gradients"]
        let alone = try KDProcess.run(TrainRunTests.arguments(dir + "/alone", steps: 2, extra: extra))
        #expect(alone.status == 0, "\(alone.stderr)")
        let split = try KDProcess.run(TrainRunTests.arguments(dir + "/split", steps: 2, extra: extra), ranks: studentRanks + 1)
        #expect(split.status == 0, "\(split.stderr)")
        let lines = { (text: String) in text.split(separator: "\n").map { KDProcess.json(String($0)) } }
        #expect(lines(alone.stdout).count == 2 && TeacherRankTests.sameNumbers(lines(alone.stdout), lines(split.stdout), transfers: false))
        Self.expectSameFiles(dir + "/alone", dir + "/split", TeacherRankTests.files)
    }

    /// Two replicas of a teacher rank and a student split over two ranks (6 ranks) equal two
    /// replicas each holding everything on one rank: a part sums its gradients with its
    /// counterpart in the other replica, in rank order, as the student's ranks do.
    @Test func replicasOfASplitStudentEqualReplicasOfOneRank() throws {
        let dir = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let extra = Self.devices(teacher: 1) + ["--set", "run.data_parallel=2"]
        let one = try TeacherRankTests.run(dir + "/one", "dense-teacher", ranks: 2, extra + ["--set", "devices.ranks=[0,0,0]"])
        let split = try TeacherRankTests.run(dir + "/split", "dense-teacher", ranks: 6, extra)
        #expect(one.count == 2 && TeacherRankTests.sameNumbers(one, split, transfers: false), "\(one) vs \(split)")
        Self.expectSameFiles(dir + "/one", dir + "/split", TeacherRankTests.files)
    }

    /// Student stages that are not consecutive on a rank, and on-policy sampling (which needs the
    /// whole student in one process) with a split student, are refused with one line.
    @Test(arguments: [
        (["--set", "devices.count=4", "--set", "student.devices=[1,2,3]", "--set", "devices.ranks=[0,1,2,1]"],
         "student.devices [1, 2, 3] are on ranks [1, 2, 1]: each rank must hold consecutive stages of the student"),
        (["--set", "devices.count=3", "--set", "student.devices=[1,2]", "--set", "distill.on_policy.fraction=0.5"],
         "distill.on_policy samples with the whole student in one process, but student.devices [1, 2] are on ranks [1, 2]"),
    ])
    func unsupportedSplitsAreRefused(settings: [String], message: String) throws {
        let dir = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = KDProcess.fixtures + "/train/dense-teacher"
        let result = try KDProcess.run([
            "train", "--config", path + "/run.yaml", "--set", "run.output_dir=\(dir)", "--set", "teacher.path=\(path)/teacher",
            "--set", "student.path=\(path)/student", "--set", "data.train=\(path)/tokens.jsonl"] + settings, ranks: 3)
        #expect(result.status != 0)
        #expect(result.stderr.contains(message), "\(result.stderr)")
    }

    /// SIGTERM to every rank (`pkill -TERM -f 'kd train'`) of a job with a teacher rank and the
    /// student over two: the ranks that serve the student's rank wait for it to let them go, so the
    /// run stops in order, with its checkpoint, and exits 143.
    @Test func aSignalToEveryRankStopsASplitRunInOrder() throws {
        try DataParallelTests.stopRanks([0, 1, 2], of: 3, Self.devices(teacher: 1) + ["--set", "checkpoint.every_steps=1000"])
    }

    /// SIGUSR1 to mpirun, which Open MPI passes on to every rank (SIGTERM to mpirun kills the job a
    /// few seconds later), stops the same run in order, and it exits 138.
    @Test func sigusr1ToMpirunStopsASplitRunInOrder() throws {
        try DataParallelTests.stopRanks(nil, of: 3, Self.devices(teacher: 1) + ["--set", "checkpoint.every_steps=1000"], signal: SIGUSR1)
    }

    /// SIGKILL on a rank holding the student's first stages, while the student's rank waits for
    /// their output, ends the job non-zero within 10 s, leaving the checkpoints whole.
    @Test func aKilledStudentStageRankEndsTheJob() throws {
        try TeacherRankTests.killRank(1, ranks: 3, extra: Self.devices(teacher: 1))
    }
}
