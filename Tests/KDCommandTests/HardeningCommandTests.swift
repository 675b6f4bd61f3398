import Foundation
import KDCore
import Testing

/// The fault campaign's examples, end to end through the `kd` binary: each bad input ends in
/// exactly one `kd: error:` line and a non-zero exit, and nothing on disk that kd did not make is
/// touched.
@Suite struct HardeningCommandTests {
    /// The whole of stderr is one `kd: error:` line.
    static func oneLine(_ result: KDProcess.Result, status: Int32 = 1, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(result.status == status, "\(result.stderr)", sourceLocation: sourceLocation)
        #expect(result.stderr.hasPrefix("kd: error: "), "\(result.stderr)", sourceLocation: sourceLocation)
        #expect(result.stderr.filter { $0 == "\n" }.count == 1, "\(result.stderr)", sourceLocation: sourceLocation)
    }

    static func config(_ yaml: String) throws -> KDProcess.Result {
        try KDProcess.run(["config", "--config", "-"], stdin: yaml)
    }

    @Test func argumentErrorsAreOneLine() throws {
        let unknown = try KDProcess.run(["train", "--config", "run.yaml", "--bogus"])
        Self.oneLine(unknown, status: 64)
        #expect(unknown.stderr.contains("--bogus") && unknown.stderr.contains("(see kd train --help)"))
        Self.oneLine(try KDProcess.run(["forward", "--model", "m", "--tokens", "t", "--output", "o",
                                        "--batch-rows", "99999999999999999999999"]), status: 64)
        Self.oneLine(try KDProcess.run(["nonsense-command"]), status: 64)
        Self.oneLine(try KDProcess.run(["plan"]), status: 64)
        // A negative value reaches the command's own check.
        let negative = try KDProcess.run(["generate", "--model", KDProcess.fixtures + "/forward/dense-tied-gqa",
                                          "--prompt-ids", "1", "--temperature", "-1"])
        Self.oneLine(negative)
        #expect(negative.stderr == "kd: error: --temperature must be 0 (greedy) or positive\n")
        let help = try KDProcess.run(["train", "--help"])
        #expect(help.status == 0 && help.stdout.contains("--config"))
    }

    @Test func runConfigValuesAreCheckedWithTheKeyNamed() throws {
        let cases: [(String, String)] = [
            ("devices: {memory_per_device: 1e30GiB}", "devices.memory_per_device: expected a size"),
            ("devices: {count: 1000000000000}", "devices.count (1000000000000) must be between 1 and 1024"),
            ("devices: {count: 1e12}", "devices.count: expected an integer, got '1e12'"),
            ("lora: {r: 9223372036854775807}", "lora.r (9223372036854775807) must be between 1 and 65536"),
            ("lora: {r: 1000000}", "lora.r (1000000) must be between 1 and 65536"),
            ("run: {output_dir: null}", "run.output_dir: expected a string, got null"),
            ("train: {weight_decay: -1}", "train.weight_decay must not be negative"),
            ("train: {adam_eps: .inf}", "train.adam_eps: expected a finite number, got '.inf'"),
            ("train: {batch_size: 9223372036854775807}", "train.batch_size (9223372036854775807) must be between 1 and 65536"),
            ("student: {devices: [9223372036854775807]}", "student.devices [9223372036854775807] must be ids from 0 to 1023"),
            ("data: {max_seq_len: 1048576}\ntrain: {batch_size: 64}", "must be at most 16777216 tokens per micro-batch"),
        ]
        for (yaml, expected) in cases {
            let result = try Self.config(yaml)
            Self.oneLine(result)
            #expect(result.stderr.contains(expected), "\(yaml): \(result.stderr)")
        }
        // A byte-order mark is not an error.
        let bom = try Self.config("\u{FEFF}lora: {r: 8}\n")
        #expect(bom.status == 0, "\(bom.stderr)")
        // A key of 100 KB is echoed cut.
        let long = try Self.config("lora: {\(String(repeating: "k", count: 100_000)): 1}")
        Self.oneLine(long)
        #expect(long.stderr.utf8.count < 400)
    }

    @Test func hugeModelConfigsAreRefusedByPlanInitAndInspect() throws {
        let dir = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        _ = try KDProcess.run(["init", "--preset", "qwen3-0.6b", "--config-only", "--output", dir + "/ok"])
        for (key, value) in [("vocab_size", "4611686018427387904"), ("num_hidden_layers", "1099511627776"),
                             ("hidden_size", "4611686018427387904"), ("intermediate_size", "-1")] {
            let made = try KDProcess.run(["init", "--preset", "qwen3-0.6b", "--set", "\(key)=\(value)", "--output", dir + "/m"])
            Self.oneLine(made)
            #expect(made.stderr.contains("\(key) (\(value)) must be between"), "\(made.stderr)")
            #expect(!FileManager.default.fileExists(atPath: dir + "/m"))
        }
        // A config.json edited by hand: kd plan refuses it instead of planning wrapped sizes.
        var config = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/ok/config.json"))) as! [String: Any]
        config["vocab_size"] = 1 << 62
        try FileManager.default.createDirectory(atPath: dir + "/big", withIntermediateDirectories: true)
        try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: dir + "/big/config.json"))
        let plan = try KDProcess.run(["plan", "--config", "-"],
                                     stdin: "teacher: {path: \(dir)/big, devices: [0]}\nstudent: {path: \(dir)/ok, devices: [1]}\n")
        Self.oneLine(plan)
        #expect(plan.stderr == "kd: error: \(dir)/big/config.json: vocab_size (4611686018427387904) must be between 1 and 16777216\n")
        let inspect = try KDProcess.run(["inspect", "--model", dir + "/big"])
        Self.oneLine(inspect)
    }

    @Test func aFIFOWhereAFileIsExpectedDoesNotHang() throws {
        let dir = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        _ = try KDProcess.run(["init", "--preset", "qwen3-0.6b", "--config-only", "--output", dir + "/m"])
        #expect(mkfifo(dir + "/m/model.safetensors", 0o600) == 0)
        let result = try KDProcess.run(["inspect", "--model", dir + "/m"])
        Self.oneLine(result)
        #expect(result.stderr == "kd: error: \(dir)/m/model.safetensors: is not a regular file\n")
        #expect(mkfifo(dir + "/run.yaml", 0o600) == 0)
        Self.oneLine(try KDProcess.run(["config", "--config", dir + "/run.yaml"]))
    }

    @Test func outputsNeverDestroyWhatKdDidNotMake() throws {
        let dir = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let model = KDProcess.fixtures + "/forward/dense-tied-gqa"
        let precious = dir + "/precious"
        try FileManager.default.createDirectory(atPath: precious + "/deep", withIntermediateDirectories: true)
        try Data("keep".utf8).write(to: URL(fileURLWithPath: precious + "/deep/file.txt"))

        let forward = try KDProcess.run(["forward", "--model", model, "--tokens", model + "/tokens.jsonl", "--output", precious])
        Self.oneLine(forward)
        #expect(forward.stderr.contains("\(precious): is a directory"))
        #expect(FileManager.default.fileExists(atPath: precious + "/deep/file.txt"))

        for target in ["/", precious, NSHomeDirectory()] {
            let initialised = try KDProcess.run(["init", "--preset", "qwen3-0.6b", "--config-only", "--force", "--output", target])
            Self.oneLine(initialised)
        }
        #expect(FileManager.default.fileExists(atPath: precious + "/deep/file.txt"))
        // A directory kd wrote is replaced with --force.
        _ = try KDProcess.run(["init", "--preset", "qwen3-0.6b", "--config-only", "--output", dir + "/mine"])
        let again = try KDProcess.run(["init", "--preset", "qwen3-0.6b", "--config-only", "--force", "--output", dir + "/mine"])
        #expect(again.status == 0, "\(again.stderr)")
    }

    @Test func outOfVocabularyIdsAreRefusedBeforeTraining() throws {
        let fixture = KDProcess.fixtures + "/train/dense-teacher"
        let dir = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let rows = try String(contentsOfFile: fixture + "/tokens.jsonl", encoding: .utf8).split(separator: "\n").map(String.init)
        let bad = rows + [#"{"input_ids": [1, 2, 4000000, 3]}"#]
        try (bad.joined(separator: "\n") + "\n").write(toFile: dir + "/tokens.jsonl", atomically: true, encoding: .utf8)
        let settings = ["--config", fixture + "/run.yaml", "--set", "teacher.path=\(fixture)/teacher",
                        "--set", "student.path=\(fixture)/student", "--set", "data.train=\(dir)/tokens.jsonl",
                        "--set", "run.output_dir=\(dir)/run"]
        let stats = try KDProcess.run(["data", "--stats"] + settings)
        Self.oneLine(stats)
        #expect(stats.stderr.contains("\(dir)/tokens.jsonl:\(bad.count): \"input_ids\"[2] = 4000000 is outside the models' vocabulary"))
        let train = try KDProcess.run(["train"] + settings)
        Self.oneLine(train)
        #expect(!FileManager.default.fileExists(atPath: dir + "/run/checkpoint-1"))
    }

    /// Work the machine cannot hold is an error before it is attempted, not a process the kernel kills.
    @Test func requestsBeyondTheMachinesMemoryAreRefused() throws {
        let dir = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let model = KDProcess.fixtures + "/forward/dense-tied-gqa"
        try ("{\"input_ids\": [" + Array(repeating: "5", count: 100_000).joined(separator: ",") + "]}\n")
            .write(toFile: dir + "/long.jsonl", atomically: true, encoding: .utf8)
        let forward = try KDProcess.run(["forward", "--model", model, "--tokens", dir + "/long.jsonl", "--output", dir + "/out.safetensors"])
        #expect(forward.status == 1)
        #expect(forward.stderr.hasSuffix("exceeds this machine's \(formatBytes(ThreadBackend.machineMemory)) of memory\n"), "\(forward.stderr)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir) == ["long.jsonl"])
        let generate = try KDProcess.run(["generate", "--model", model, "--prompt-ids", "1,2,3", "--max-new-tokens", "1000000000"])
        Self.oneLine(generate)
        #expect(generate.stderr.contains("cannot allocate"))
    }

    /// A broken adapter reaches the same safetensors checks through every command that reads one.
    @Test func aBrokenAdapterIsOneLineInEveryCommand() throws {
        let fixture = KDProcess.fixtures + "/train/dense-teacher"
        let dir = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let adapter = dir + "/adapter"
        try FileManager.default.copyItem(atPath: fixture + "/adapter-init", toPath: adapter)
        var data = try Data(contentsOf: URL(fileURLWithPath: adapter + "/adapter_model.safetensors"))
        data.replaceSubrange(0..<8, with: [0, 0, 0, 0, 0, 0, 0, 0x80])  // header length 2^63
        try data.write(to: URL(fileURLWithPath: adapter + "/adapter_model.safetensors"))
        let student = fixture + "/student"
        for arguments in [
            ["forward", "--model", student, "--adapter", adapter, "--tokens", fixture + "/tokens.jsonl", "--output", dir + "/o.safetensors"],
            ["export", "--model", student, "--adapter", adapter, "--output", dir + "/merged"],
            ["generate", "--model", student, "--adapter", adapter, "--prompt-ids", "1,2"],
        ] {
            let result = try KDProcess.run(arguments)
            #expect(result.status == 1, "\(arguments[0]): \(result.stderr)")
            #expect(result.stderr.hasSuffix("kd: error: \(adapter)/adapter_model.safetensors: header length 9223372036854775808 runs past "
                + "the end of the file (\(data.count) bytes): truncated or not safetensors\n"), "\(arguments[0]): \(result.stderr)")
        }
        #expect(!FileManager.default.fileExists(atPath: dir + "/merged"))
        #expect(!FileManager.default.fileExists(atPath: dir + "/o.safetensors"))
    }
}
