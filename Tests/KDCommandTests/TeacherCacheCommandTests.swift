import Foundation
import Testing
import KDCore
import KDModels

/// `kd teacher-cache` and training from it (`data.teacher_cache`), on the dense-teacher training
/// fixture (vocabulary 96, 4 examples, 29 scored tokens).
///
/// With K = the vocabulary the cache holds every logit, and the cached loss is the live one (at
/// T = 1 through the stored log-sum-exp; at T ≠ 1 renormalised over all ids = the full softmax):
/// a run trained from it, without the teacher at all, must match the torch reference of the live
/// teacher (Scripts/make_train_fixtures.py) under TrainParityTests' tolerances. K < vocabulary is
/// pinned at the loss level by CachedDivergenceFixtureTests.
@Suite struct TeacherCacheCommandTests {
    static let fixture = KDProcess.fixtures + "/train/dense-teacher"

    static var modelArguments: [String] {
        ["--config", fixture + "/run.yaml", "--set", "teacher.path=\(fixture)/teacher", "--set", "student.path=\(fixture)/student",
         "--set", "data.train=\(fixture)/tokens.jsonl"]
    }

    /// Runs `kd teacher-cache`; its stdout summary.
    static func makeCache(_ output: String, k: Int, _ extra: [String] = []) throws -> [String: Any] {
        let result = try KDProcess.run(["teacher-cache"] + modelArguments + ["--top-k", "\(k)", "--output", output] + extra)
        #expect(result.status == 0, "\(result.stderr)")
        return KDProcess.json(result.stdout)
    }

    @Test func wholeVocabularyCacheTrainsLikeTheLiveTeacher() throws {
        let out = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        let summary = try Self.makeCache(out + "/cache", k: 96)
        #expect(summary["top_k"] as? Int == 96)
        #expect((summary["splits"] as? [String: Any])?["train"] as? [String: Int] == ["rows": 29, "examples": 4, "shards": 1])
        // Step 1 at the fixture's T = 2, with no teacher: against torch's live-teacher reference.
        let cached = ["--set", "data.teacher_cache=\(out)/cache", "--set", "teacher.path="]
        let lines = try TrainParityTests.train(Self.fixture, output: out + "/run", ["--set", "train.max_steps=1"] + cached)
        try #require(lines.count == 1)
        let worst = try TrainParityTests.compare(step: 1, line: lines[0], gradientsPath: out + "/run/gradients/step-1.safetensors",
                                                 expected: try SafetensorsFile(path: Self.fixture + "/expected.safetensors"))
        print("teacher cache K = vocab, step 1: worst error / tolerance: gradients \(worst.gradients), metrics \(worst.metrics)")
        // At T = 1 the stored log-sum-exp makes the cached probabilities the teacher's own, for each divergence.
        let divergences = try SafetensorsFile(path: Self.fixture + "/divergences.safetensors")
        for c in DivergenceParityTests.cases where c.temperature == 1 {
            let run = out + "/run-\(c.key)"
            let lines = try TrainParityTests.train(Self.fixture, output: run, c.settings.flatMap { ["--set", $0] } + cached)
            try #require(lines.count == 1)
            let worst = try TrainParityTests.compare(
                prefix: c.key, label: "cache \(c.key)", metrics: ["loss", "divergence", "kl_loss", "ce_loss", "grad_norm"],
                line: lines[0], gradientsPath: run + "/gradients/step-1.safetensors", expected: divergences)
            print("teacher cache K = vocab, \(c.key): worst error / tolerance: gradients \(worst.gradients), metrics \(worst.metrics)")
        }
    }

    @Test func anInterruptedCacheFinishesWithTheSameBytes() throws {
        let out = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        let summary = try Self.makeCache(out + "/whole", k: 8, ["--shard-rows", "10"])
        #expect((summary["splits"] as? [String: Any])?["train"] as? [String: Int] == ["rows": 29, "examples": 4, "shards": 2])
        let fm = FileManager.default
        let shards = ["train-00001.safetensors", "train-00002.safetensors"]
        // An interruption after the first shard: the second absent, the manifest not yet complete.
        try fm.copyItem(atPath: out + "/whole", toPath: out + "/partial")
        try fm.removeItem(atPath: out + "/partial/" + shards[1])
        let manifest = out + "/partial/manifest.json"
        let text = try String(contentsOfFile: manifest, encoding: .utf8)
        try text.replacingOccurrences(of: "\"complete\" : true", with: "\"complete\" : false").write(toFile: manifest, atomically: true, encoding: .utf8)
        let refused = try KDProcess.run(["train"] + Self.modelArguments + ["--set", "run.output_dir=\(out)/run", "--set", "data.teacher_cache=\(out)/partial"])
        #expect(refused.status == 1)
        #expect(refused.stderr.contains("incomplete"), "\(refused.stderr)")
        let again = try KDProcess.run(["teacher-cache"] + Self.modelArguments + ["--top-k", "8", "--output", out + "/partial", "--shard-rows", "10"])
        #expect(again.status == 0, "\(again.stderr)")
        #expect(again.stderr.contains("shard 1/2  13/29 tokens  0 tok/s  (already written)"), "\(again.stderr)")
        for name in shards + ["manifest.json"] {
            #expect(fm.contents(atPath: out + "/whole/" + name) == fm.contents(atPath: out + "/partial/" + name), "\(name)")
        }
        // A finished cache is left as it is; one of another K is refused.
        #expect(try KDProcess.run(["teacher-cache"] + Self.modelArguments + ["--top-k", "8", "--output", out + "/whole", "--shard-rows", "10"]).status == 0)
        let otherK = try KDProcess.run(["teacher-cache"] + Self.modelArguments + ["--top-k", "9", "--output", out + "/whole", "--shard-rows", "10"])
        #expect(otherK.status == 1)
        #expect(otherK.stderr.contains("holds a teacher cache of top_k 8"), "\(otherK.stderr)")
    }

    @Test func aResumedRunFromTheCacheIsBitIdentical() throws {
        let out = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        _ = try Self.makeCache(out + "/cache", k: 5)
        let common = Self.modelArguments + ["--set", "data.teacher_cache=\(out)/cache", "--set", "teacher.path=", "--set", "lora.dropout=0.1",
                                            "--set", "distill.loss=jsd", "--set", "train.max_steps=3"]
        let whole = try KDProcess.run(["train"] + common + ["--set", "run.output_dir=\(out)/whole"])
        #expect(whole.status == 0, "\(whole.stderr)")
        #expect(try KDProcess.run(["train"] + common + ["--set", "run.output_dir=\(out)/split", "--set", "train.max_steps=2"]).status == 0)
        let resumed = try KDProcess.run(["train"] + common + ["--set", "run.output_dir=\(out)/split", "--resume"])
        #expect(resumed.status == 0, "\(resumed.stderr)")
        let name = "/final_model/adapter_model.safetensors"
        #expect(FileManager.default.contents(atPath: out + "/whole" + name) == FileManager.default.contents(atPath: out + "/split" + name))
    }

    /// Each refusal is one line and exit 1; all but the teacher's come before any weight is read.
    @Test func mismatchesAndBadSettingsAreRefused() throws {
        let out = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        _ = try Self.makeCache(out + "/cache", k: 4)
        let moe = KDProcess.fixtures + "/train/moe-teacher"
        let otherData = out + "/other.jsonl"
        let lines = try String(contentsOfFile: Self.fixture + "/tokens.jsonl", encoding: .utf8).split(separator: "\n")
        try (lines.dropLast().joined(separator: "\n") + "\n").write(toFile: otherData, atomically: true, encoding: .utf8)
        try FileManager.default.createDirectory(atPath: out + "/empty-cache", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: out + "/not-empty", withIntermediateDirectories: true)
        try Data("x".utf8).write(to: URL(fileURLWithPath: out + "/not-empty/file"))
        let train = ["train"] + Self.modelArguments + ["--set", "run.output_dir=\(out)/run", "--set", "data.teacher_cache=\(out)/cache"]
        let cases: [(arguments: [String], message: String)] = [
            (train + ["--set", "data.train=\(otherData)"], "made from other train data"),
            (train + ["--set", "teacher.path=\(moe)/teacher"], "made from another teacher"),
            (train + ["--set", "data.eval=\(Self.fixture)/tokens.jsonl"], "holds no 'eval' split"),
            (train + ["--set", "data.teacher_cache=\(out)/empty-cache"], "not a teacher cache"),
            (train + ["--set", "distill.loss=reverse_kl", "--set", "distill.temperature=3"],
             "reverse_kl with data.teacher_cache needs distill.temperature 1 or the cache's (2.0)"),
            (["teacher-cache"] + Self.modelArguments + ["--top-k", "0", "--output", out + "/k0"], "--top-k 0 must be between 1 and the vocabulary (96)"),
            (["teacher-cache"] + Self.modelArguments + ["--top-k", "97", "--output", out + "/k97"], "--top-k 97 must be between 1 and the vocabulary (96)"),
            (["teacher-cache"] + Self.modelArguments + ["--top-k", "4", "--output", out + "/not-empty"], "not empty and not a teacher cache"),
        ]
        for c in cases {
            let result = try KDProcess.run(c.arguments)
            #expect(result.status == 1, "\(c.message): \(result.stderr)")
            #expect(result.stderr.contains(c.message), "\(c.message): \(result.stderr)")
            #expect(result.stderr.split(separator: "\n").filter { $0.hasPrefix("kd: error:") }.count == 1, "\(result.stderr)")
        }
    }
}
