import Foundation
import Testing
import KDCore
import KDModels

/// A run owns its output directory, its checkpoints are whole at every instant, and faults on
/// disk end with one line and a resumable run.
@Suite(.serialized) struct RunDirectoryTests {
    static let fileNames = ["adapter_model.safetensors", "adapter_config.json", "optimizer.safetensors", "trainer_state.json"]

    /// Runs kd with its output in files, optionally under a file-size limit of `blocks` 512-byte
    /// blocks (`ulimit -f`).
    static func run(_ arguments: [String], fileSizeBlocks blocks: Int? = nil) throws -> KDProcess.Result {
        let dir = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let process = Process()
        if let blocks {
            process.executableURL = URL(fileURLWithPath: "/bin/sh")
            process.arguments = ["-c", "ulimit -f \(blocks) && exec \"$0\" \"$@\"", KDProcess.binary] + arguments
        } else {
            process.executableURL = URL(fileURLWithPath: KDProcess.binary)
            process.arguments = arguments
        }
        for name in ["out", "err"] { _ = FileManager.default.createFile(atPath: "\(dir)/\(name)", contents: nil) }
        process.standardOutput = FileHandle(forWritingAtPath: dir + "/out")
        process.standardError = FileHandle(forWritingAtPath: dir + "/err")
        process.standardInput = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        let read = { (name: String) in String(decoding: FileManager.default.contents(atPath: "\(dir)/\(name)") ?? Data(), as: UTF8.self) }
        // A death by signal is reported as 128 + the signal, as a shell would.
        let status = process.terminationReason == .uncaughtSignal ? 128 + process.terminationStatus : process.terminationStatus
        return KDProcess.Result(status: status, stdout: read("out"), stderr: read("err"))
    }

    static func names(_ dir: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).sorted()
    }

    static func size(_ path: String) throws -> Int {
        try #require(try FileManager.default.attributesOfItem(atPath: path)[.size] as? Int)
    }

    static func errorLines(_ stderr: String) -> [Substring] {
        stderr.split(separator: "\n").filter { $0.hasPrefix("kd: error:") }
    }

    /// Every checkpoint file of `a` equals `b`'s.
    static func expectSameCheckpoint(_ a: String, _ b: String, sourceLocation: SourceLocation = #_sourceLocation) {
        for name in fileNames where name != "adapter_config.json" {
            let x = FileManager.default.contents(atPath: "\(a)/\(name)"), y = FileManager.default.contents(atPath: "\(b)/\(name)")
            #expect(x != nil && x == y, "\(a)/\(name) differs from \(b)/\(name)", sourceLocation: sourceLocation)
        }
    }

    // MARK: One run per directory

    @Test func aLiveRunOwnsItsDirectoryAndADeadOnesLockDoesNotBlock() throws {
        let dir = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let out = dir + "/run"
        let first = Process()
        first.executableURL = URL(fileURLWithPath: KDProcess.binary)
        first.arguments = TrainRunTests.arguments(out, steps: 100_000, extra: ["--json"])
        first.standardOutput = FileHandle.nullDevice
        first.standardError = FileHandle.nullDevice
        try first.run()
        let pid = first.processIdentifier
        defer { if first.isRunning { kill(pid, SIGKILL); first.waitUntilExit() } }
        // Wait (however long a loaded machine takes) until the first run holds the lock.
        let lockFile = out + "/.kd-lock"
        while FileManager.default.contents(atPath: lockFile).map({ String(decoding: $0, as: UTF8.self) }) != "\(pid)\n" {
            try #require(first.isRunning, "the first run ended before taking the lock")
            usleep(20_000)
        }
        let refusal = "kd: error: \(out): another kd run (pid \(pid)) is using this output directory; "
            + "wait for it to end, or choose another run.output_dir\n"
        for extra in [[], ["--resume"], ["--resume", out + "/checkpoint-2"]] {
            let second = try KDProcess.run(TrainRunTests.arguments(out, steps: 4, extra: extra))
            #expect(second.status == 1)
            #expect(second.stderr == refusal, "\(extra): \(second.stderr)")
        }
        #expect(first.isRunning)

        // SIGKILL leaves the lock file with a dead pid, and (as a kill mid-write would) staging files.
        kill(pid, SIGKILL)
        first.waitUntilExit()
        let staging = "\(out)/checkpoint-99.tmp-\(pid)", metricsStaging = "\(out)/metrics.jsonl.tmp-\(pid)"
        let deleting = "\(out)/.checkpoint-1.deleting-\(pid)"
        for directory in [staging, deleting] {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            #expect(FileManager.default.createFile(atPath: directory + "/trainer_state.json", contents: Data("{".utf8)))
        }
        #expect(FileManager.default.createFile(atPath: metricsStaging, contents: Data("{\"step\":".utf8)))
        let resumed = try KDProcess.run(TrainRunTests.arguments(out, steps: 2, extra: ["--resume"]))
        #expect(resumed.status == 0, "\(resumed.stderr)")
        for path in [staging, deleting, metricsStaging] {
            #expect(resumed.stderr.contains("removed \(path), left by an interrupted run (pid \(pid))\n"))
            #expect(!FileManager.default.fileExists(atPath: path))
        }
        #expect(FileManager.default.fileExists(atPath: out + "/final_model/adapter_model.safetensors"))
    }

    // MARK: Whole checkpoints

    @Test func pruningNeverShowsAHalfDeletedCheckpoint() throws {
        let dir = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let out = dir + "/run"
        // A watcher lists the directory while the run writes and prunes: a `checkpoint-N` it sees
        // that still exists must have all its files (pruning renames it away before deleting).
        let stop = Flag(), seen = Findings()
        let watcher = Thread {
            while !stop.value {
                for name in Self.names(out) where name.hasPrefix("checkpoint-") && !name.contains(".tmp-") {
                    let path = "\(out)/\(name)"
                    let missing = Self.fileNames.filter { !FileManager.default.fileExists(atPath: "\(path)/\($0)") }
                    if !missing.isEmpty && FileManager.default.fileExists(atPath: path) { seen.add("\(name) without \(missing)") }
                }
            }
        }
        watcher.start()
        let result = try KDProcess.run(TrainRunTests.arguments(out, steps: 8, extra: ["--set", "checkpoint.every_steps=1",
                                                                             "--set", "checkpoint.keep_last=1"]))
        stop.value = true
        #expect(result.status == 0, "\(result.stderr)")
        #expect(seen.all.isEmpty, "\(seen.all)")
        #expect(Self.names(out).filter { $0.hasPrefix("checkpoint-") || $0.contains(".deleting-") || $0.contains(".tmp-") }
            == ["checkpoint-8"])
    }

    /// What the old pruning could leave when killed: only trainer_state.json, in the newest name.
    @Test func aHalfDeletedNewestCheckpointIsSkippedByResumeAutoAndNamedByResumeDir() throws {
        let dir = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let out = dir + "/run"
        #expect(try KDProcess.run(TrainRunTests.arguments(out, steps: 4)).status == 0)
        try FileManager.default.createDirectory(atPath: out + "/checkpoint-8", withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: out + "/checkpoint-4/trainer_state.json", toPath: out + "/checkpoint-8/trainer_state.json")
        let named = try KDProcess.run(TrainRunTests.arguments(out, steps: 6, extra: ["--resume", out + "/checkpoint-8"]))
        #expect(named.status == 1)
        #expect(named.stderr == "kd: error: \(out)/checkpoint-8/trainer_state.json: step 4 differs from the directory's name (step 8)\n")
        let auto = try KDProcess.run(TrainRunTests.arguments(out, steps: 6, extra: ["--resume"]))
        #expect(auto.status == 0, "\(auto.stderr)")
        #expect(auto.stderr.contains("warning: skipping \(out)/checkpoint-8, not a whole checkpoint: \(out)/checkpoint-8/trainer_state.json: "
            + "step 4 differs from the directory's name (step 8)\n"))
        #expect(auto.stderr.contains("resuming from \(out)/checkpoint-4 at step 4\n"))
    }

    /// Damage done to checkpoint-4 of a 4-step run, and the one line `--resume checkpoint-4` gives.
    static var damages: [(name: String, damage: (String) throws -> Void, error: (String) -> String)] { [
        ("truncated adapter", { checkpoint in
            let path = checkpoint + "/adapter_model.safetensors"
            let data = try #require(FileManager.default.contents(atPath: path))
            try data.prefix(data.count / 2).write(to: URL(fileURLWithPath: path))
        }, { "\($0)/adapter_model.safetensors: tensor '" }),
        ("missing optimizer", { try FileManager.default.removeItem(atPath: $0 + "/optimizer.safetensors") },
         { "\($0)/optimizer.safetensors: no such file" }),
        ("bad JSON", { try Data("{\"step\": 4,".utf8).write(to: URL(fileURLWithPath: $0 + "/trainer_state.json")) },
         { "\($0)/trainer_state.json: malformed JSON" }),
        ("step Int.max", { try editState($0) { $0["step"] = Int.max } },
         { "\($0)/trainer_state.json: step \(Int.max) must be between 0 and scheduler.max_steps (4)" }),
        ("step -5", { try editState($0) { $0["step"] = -5 } },
         { "\($0)/trainer_state.json: step -5 must be between 0 and scheduler.max_steps (4)" }),
        ("step of another name", { try editState($0) { $0["step"] = 3 } },
         { "\($0)/trainer_state.json: step 3 differs from the directory's name (step 4)" }),
        ("cursor past the data", { try editState($0) { $0["cursor"] = ["epoch": 0, "index": 1000] } },
         { "\($0)/trainer_state.json: cursor.index 1000 is past the end of data.train (4 records)" }),
        ("cursor epoch too far", { try editState($0) { $0["cursor"] = ["epoch": Int.max, "index": 0] } },
         { "\($0)/trainer_state.json: cursor.epoch \(Int.max) is more epochs than step 4 can have drawn" }),
        ("negative cursor", { try editState($0) { $0["cursor"] = ["epoch": -1, "index": 0] } },
         { "\($0)/trainer_state.json: cursor (epoch -1, index 0) must not be negative" }),
        ("another seed", { try editState($0) { $0["seed"] = 9 } },
         { "cannot resume from \($0): run.seed is 9 in the checkpoint but 7 here" }),
    ] }

    static func editState(_ checkpoint: String, _ edit: (inout [String: Any]) -> Void) throws {
        let path = checkpoint + "/trainer_state.json"
        var state = try readJSONObject(atPath: path)
        edit(&state)
        try JSONSerialization.data(withJSONObject: state).write(to: URL(fileURLWithPath: path))
    }

    @Test(arguments: damages.map(\.name))
    func aDamagedNewestCheckpointIsNamedByResumeDir(_ name: String) throws {
        let (_, damage, error) = try #require(Self.damages.first { $0.name == name })
        let dir = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let out = dir + "/run"
        #expect(try KDProcess.run(TrainRunTests.arguments(out, steps: 4)).status == 0)
        try damage(out + "/checkpoint-4")
        let named = try KDProcess.run(TrainRunTests.arguments(out, steps: 6, extra: ["--resume", out + "/checkpoint-4"]))
        #expect(named.status == 1, "\(name)")
        #expect(Self.errorLines(named.stderr).count == 1 && named.stderr.hasSuffix("\n"), "\(name): \(named.stderr)")
        #expect(named.stderr.hasPrefix("kd: error: " + error(out + "/checkpoint-4")) || named.stderr.contains("\nkd: error: " + error(out + "/checkpoint-4")),
                "\(name): \(named.stderr)")
        #expect(!FileManager.default.fileExists(atPath: out + "/checkpoint-6"))
    }

    @Test func resumeAutoFallsBackFromADamagedNewestCheckpointBitIdentically() throws {
        let dir = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(try KDProcess.run(TrainRunTests.arguments(dir + "/straight", steps: 6)).status == 0)
        let out = dir + "/run"
        #expect(try KDProcess.run(TrainRunTests.arguments(out, steps: 4)).status == 0)
        let adapter = out + "/checkpoint-4/adapter_model.safetensors"
        let data = try #require(FileManager.default.contents(atPath: adapter))
        try data.prefix(data.count - 1).write(to: URL(fileURLWithPath: adapter))
        let auto = try KDProcess.run(TrainRunTests.arguments(out, steps: 6, extra: ["--resume"]))
        #expect(auto.status == 0, "\(auto.stderr)")
        let warnings = auto.stderr.split(separator: "\n").filter { $0.hasPrefix("warning: skipping") }
        #expect(warnings.count == 1)
        #expect(warnings.first?.hasPrefix("warning: skipping \(out)/checkpoint-4, not a whole checkpoint: \(adapter): ") == true)
        #expect(auto.stderr.contains("resuming from \(out)/checkpoint-2 at step 2\n"))
        Self.expectSameCheckpoint(out + "/checkpoint-6", dir + "/straight/checkpoint-6")
        let metrics = { (run: String) in TrainRunTests.stripTimes(try String(contentsOfFile: run + "/metrics.jsonl", encoding: .utf8)) }
        #expect(try metrics(out) == metrics(dir + "/straight"))
    }

    // MARK: Faults on disk

    /// A file-size limit the adapter fits under and the optimizer moments (twice its size) do not:
    /// the checkpoint fails with one line, the previous one stays whole, and a resume without the
    /// limit ends bit-identical to an uninterrupted run.
    @Test func aFileSizeLimitDuringACheckpointEndsWithOneLineAndResumesBitIdentically() throws {
        let dir = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let straight = dir + "/straight", out = dir + "/run"
        #expect(try KDProcess.run(TrainRunTests.arguments(straight, steps: 6)).status == 0)
        let adapterBytes = try Self.size(straight + "/checkpoint-6/adapter_model.safetensors")
        let optimizerBytes = try Self.size(straight + "/checkpoint-6/optimizer.safetensors")
        let metricsBytes = try Self.size(straight + "/metrics.jsonl")
        let blocks = (adapterBytes + optimizerBytes) / 2 / 512
        try #require(max(adapterBytes, metricsBytes) < blocks * 512 && blocks * 512 < optimizerBytes)

        #expect(try KDProcess.run(TrainRunTests.arguments(out, steps: 2)).status == 0)
        let before = Self.names(out + "/checkpoint-2").map { FileManager.default.contents(atPath: "\(out)/checkpoint-2/\($0)") }
        let limited = try Self.run(TrainRunTests.arguments(out, steps: 6, extra: ["--resume"]), fileSizeBlocks: blocks)
        #expect(limited.status == 1, "\(limited.stderr)")
        #expect(Self.errorLines(limited.stderr) == ["kd: error: \(out)/checkpoint-4/optimizer.safetensors: cannot write (file too large)"],
                "\(limited.stderr)")
        #expect(limited.stderr.hasSuffix("(file too large)\n"))
        #expect(Self.names(out).filter { $0.hasPrefix("checkpoint-") || $0.contains(".tmp-") } == ["checkpoint-2"])
        #expect(Self.names(out + "/checkpoint-2").map { FileManager.default.contents(atPath: "\(out)/checkpoint-2/\($0)") } == before)

        let resumed = try KDProcess.run(TrainRunTests.arguments(out, steps: 6, extra: ["--resume"]))
        #expect(resumed.status == 0, "\(resumed.stderr)")
        #expect(resumed.stderr.contains("resuming from \(out)/checkpoint-2 at step 2\n"))
        Self.expectSameCheckpoint(out + "/checkpoint-6", straight + "/checkpoint-6")
        #expect(FileManager.default.contents(atPath: out + "/final_model/adapter_model.safetensors")
            == FileManager.default.contents(atPath: straight + "/final_model/adapter_model.safetensors"))
        let metrics = { (run: String) in TrainRunTests.stripTimes(try String(contentsOfFile: run + "/metrics.jsonl", encoding: .utf8)) }
        #expect(try metrics(out) == metrics(straight))
    }

    /// A limit that cuts the second metrics line: one line naming metrics.jsonl; the torn line is
    /// dropped on resume.
    @Test func aFileSizeLimitOnMetricsEndsWithOneLineAndResumes() throws {
        let dir = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let straight = dir + "/straight", out = dir + "/run"
        #expect(try KDProcess.run(TrainRunTests.arguments(straight, steps: 2)).status == 0)
        let lines = try String(contentsOfFile: straight + "/metrics.jsonl", encoding: .utf8).split(separator: "\n").map { $0.utf8.count + 1 }
        try #require(lines.count == 2)
        // The first line fits, the second does not (the limit is in 512-byte blocks).
        let blocks = (lines[0] + 511) / 512
        try #require(blocks * 512 < lines[0] + lines[1])
        let limited = try Self.run(TrainRunTests.arguments(out, steps: 2), fileSizeBlocks: blocks)
        #expect(limited.status == 1, "\(limited.stderr)")
        #expect(Self.errorLines(limited.stderr) == ["kd: error: \(out)/metrics.jsonl: cannot write (file too large)"], "\(limited.stderr)")
        let resumed = try KDProcess.run(TrainRunTests.arguments(out, steps: 2, extra: ["--resume"]))
        #expect(resumed.status == 0, "\(resumed.stderr)")
        let metrics = { (run: String) in TrainRunTests.stripTimes(try String(contentsOfFile: run + "/metrics.jsonl", encoding: .utf8)) }
        #expect(try metrics(out) == metrics(straight))
    }

    /// A limit the checkpoint fits under and the merged model in final_model does not.
    @Test func aFileSizeLimitOnTheFinalModelLeavesTheCheckpointAndResumeWritesIt() throws {
        let dir = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let out = dir + "/run"
        let merged = ["--set", "checkpoint.save_merged=true"]
        #expect(try KDProcess.run(TrainRunTests.arguments(dir + "/straight", steps: 2, extra: merged)).status == 0)
        let optimizerBytes = try Self.size(dir + "/straight/checkpoint-2/optimizer.safetensors")
        let modelBytes = try Self.size(dir + "/straight/final_model/merged/model.safetensors")
        let blocks = (optimizerBytes + modelBytes) / 2 / 512
        try #require(optimizerBytes < blocks * 512 && blocks * 512 < modelBytes)
        let limited = try Self.run(TrainRunTests.arguments(out, steps: 2, extra: merged), fileSizeBlocks: blocks)
        #expect(limited.status == 1, "\(limited.stderr)")
        let errors = Self.errorLines(limited.stderr)
        #expect(errors.count == 1 && errors[0].hasPrefix("kd: error: \(out)/final_model") && errors[0].hasSuffix(": cannot write (file too large)"),
                "\(limited.stderr)")
        #expect(Self.names(out).filter { $0.hasPrefix("checkpoint-") || $0.hasPrefix("final_model") || $0.contains(".tmp-") }
            == ["checkpoint-2"])
        Self.expectSameCheckpoint(out + "/checkpoint-2", dir + "/straight/checkpoint-2")
        let resumed = try KDProcess.run(TrainRunTests.arguments(out, steps: 2, extra: merged + ["--resume"]))
        #expect(resumed.status == 0, "\(resumed.stderr)")
        #expect(FileManager.default.contents(atPath: out + "/final_model/merged/model.safetensors")
            == FileManager.default.contents(atPath: dir + "/straight/final_model/merged/model.safetensors"))
    }

    /// Whether this process may mount a tmpfs (root with CAP_SYS_ADMIN); the full-disk test needs one.
    static let canMountTmpfs: Bool = {
        let dir = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        guard mount("tmpfs", dir, "tmpfs", 0, "size=65536") == 0 else { return false }
        return umount2(dir, 0) == 0
    }()

    /// A small tmpfs that holds one checkpoint and the run's small files but not a second
    /// checkpoint: the next one fails with "no space left on device", the previous one stays whole,
    /// and once there is room (a remount, larger) the resumed run ends bit-identical.
    @Test(.enabled(if: canMountTmpfs, "needs permission to mount a tmpfs"))
    func aFullDiskDuringACheckpointEndsWithOneLineAndResumesBitIdentically() throws {
        let dir = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let straight = dir + "/straight"
        #expect(try KDProcess.run(TrainRunTests.arguments(straight, steps: 6)).status == 0)
        // tmpfs allocates whole pages per file.
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let pages = { (path: String) in try (Self.size(path) + page - 1) / page }
        let checkpointPages = try Self.fileNames.reduce(0) { try $0 + pages("\(straight)/checkpoint-2/\($1)") }
        let finalPages = try ["adapter_model.safetensors", "adapter_config.json"].reduce(0) { try $0 + pages("\(straight)/final_model/\($1)") }
        // The lock, metrics.jsonl and its rewrite on resume, one checkpoint, final_model, and half a checkpoint more.
        let bytes = (3 + checkpointPages + finalPages + checkpointPages / 2) * page
        let disk = dir + "/disk"
        try FileManager.default.createDirectory(atPath: disk, withIntermediateDirectories: true)
        try #require(mount("tmpfs", disk, "tmpfs", 0, "size=\(bytes)") == 0)
        defer { umount2(disk, Int32(MNT_DETACH)) }
        let out = disk + "/run"
        let first = try KDProcess.run(TrainRunTests.arguments(out, steps: 2))
        try #require(first.status == 0, "\(first.stderr)")
        let before = Self.names(out + "/checkpoint-2").map { FileManager.default.contents(atPath: "\(out)/checkpoint-2/\($0)") }

        let full = try KDProcess.run(TrainRunTests.arguments(out, steps: 6, extra: ["--resume"]))
        #expect(full.status == 1, "\(full.stderr)")
        let errors = Self.errorLines(full.stderr)
        #expect(errors.count == 1 && errors[0].hasPrefix("kd: error: \(out)/checkpoint-4/")
            && errors[0].hasSuffix(": cannot write (no space left on device)"), "\(full.stderr)")
        #expect(Self.names(out).filter { $0.hasPrefix("checkpoint-") || $0.contains(".tmp-") } == ["checkpoint-2"])
        #expect(Self.names(out + "/checkpoint-2").map { FileManager.default.contents(atPath: "\(out)/checkpoint-2/\($0)") } == before)

        try #require(mount("tmpfs", disk, "tmpfs", UInt(MS_REMOUNT), "size=\(8 * bytes)") == 0)
        let resumed = try KDProcess.run(TrainRunTests.arguments(out, steps: 6, extra: ["--resume"]))
        #expect(resumed.status == 0, "\(resumed.stderr)")
        #expect(resumed.stderr.contains("resuming from \(out)/checkpoint-2 at step 2\n"))
        Self.expectSameCheckpoint(out + "/checkpoint-6", straight + "/checkpoint-6")
        let metrics = { (run: String) in TrainRunTests.stripTimes(try String(contentsOfFile: run + "/metrics.jsonl", encoding: .utf8)) }
        #expect(try metrics(out) == metrics(straight))
    }
}

/// A flag one thread sets and another polls.
final class Flag: @unchecked Sendable {
    private let lock = NSLock()
    private var state = false
    var value: Bool {
        get { lock.withLock { state } }
        set { lock.withLock { state = newValue } }
    }
}

/// Observations a watcher thread collects.
final class Findings: @unchecked Sendable {
    private let lock = NSLock()
    private var items: [String] = []
    func add(_ item: String) { lock.withLock { if items.count < 5 { items.append(item) } } }
    var all: [String] { lock.withLock { items } }
}
