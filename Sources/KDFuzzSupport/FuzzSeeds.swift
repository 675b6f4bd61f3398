import Foundation

/// Seed inputs per target: the committed fixtures (real files kd reads in its tests) plus the
/// small synthetic ones in Tests/Fixtures/fuzz-corpus (made by Scripts/make_fuzz_corpus.py).
public enum FuzzSeeds {
    static func read(_ parts: [String]) -> [UInt8]? {
        let path = parts.reduce(FuzzEnvironment.repositoryRoot) { ($0 as NSString).appendingPathComponent($1) }
        return FileManager.default.contents(atPath: path).map { [UInt8]($0) }
    }

    static func corpus(_ directory: String) -> [[UInt8]] {
        let path = FuzzEnvironment.path("Tests", "Fixtures", "fuzz-corpus", directory)
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted()
        return names.compactMap { read(["Tests", "Fixtures", "fuzz-corpus", directory, $0]) }
    }

    /// The seeds of `target`, in a fixed order; `small` leaves out the files over 24 KiB (for the
    /// in-process mutation tests, where every mutant is parsed in full).
    public static func seeds(for target: FuzzTarget, small: Bool = false) -> [[UInt8]] {
        let fixtures = ["Tests", "Fixtures"]
        let forward = ["dense-tied-gqa", "dense-mqa-headdim-sharded", "dense-bf16", "moe-8x2"]
        let teachers = ["dense-teacher", "moe-teacher"]
        var seeds: [[UInt8]]
        switch target {
        case .safetensors:
            seeds = corpus("safetensors")
            seeds += teachers.compactMap { read(fixtures + ["train", $0, "adapter-init", "adapter_model.safetensors"]) }
            seeds += forward.compactMap { read(fixtures + ["forward", $0, "model.safetensors"]) }
            seeds += forward.compactMap { read(fixtures + ["forward", $0, "expected.safetensors"]) }
        case .config:
            seeds = forward.compactMap { read(fixtures + ["forward", $0, "config.json"]) }
            seeds += teachers.flatMap { t in ["teacher", "student"].compactMap { read(fixtures + ["train", t, $0, "config.json"]) } }
        case .runYAML:
            seeds = corpus("run-yaml")
            seeds += teachers.compactMap { read(fixtures + ["train", $0, "run.yaml"]) }
            for name in ["demo.yaml", "demo-teacher.yaml", "qwen3-30b-a3b-to-8b.yaml"] {
                if let yaml = read(["Configs", name]) { seeds.append(yaml) }
            }
        case .jsonl:
            seeds = corpus("jsonl")
            seeds += forward.compactMap { read(fixtures + ["forward", $0, "tokens.jsonl"]) }
            seeds += teachers.compactMap { read(fixtures + ["train", $0, "tokens.jsonl"]) }
            seeds += [read(fixtures + ["data", "gsm8k-mini.jsonl"]), read(fixtures + ["tokenizer", "chat.jsonl"])].compactMap { $0 }
        case .tokenizer:
            seeds = corpus("tokenizer")
        case .peft:
            seeds = teachers.compactMap { teacher -> [UInt8]? in
                let directory = fixtures + ["train", teacher, "adapter-init"]
                guard let config = read(directory + ["adapter_config.json"]),
                      let weights = read(directory + ["adapter_model.safetensors"]),
                      let model = read(fixtures + ["train", teacher, "student", "config.json"]) else { return nil }
                return FuzzParts.join([config, weights, model])
            }
            if let config = read(fixtures + ["train", "dense-teacher", "adapter-init", "adapter_config.json"]) {
                seeds.append(config)  // settings only, no weights file
            }
        case .trainerState:
            seeds = corpus("trainer-state")
        case .hostfile:
            seeds = ["node01 slots=4\nnode02 slots=2 max_slots=8  # a comment\n\n# a line of comment\nnode03\nnode01 slots=1\n",
                     "localhost\n", "10.0.0.7 slots=1024\r\n10.0.0.8\tslots=16\n"].map { Array($0.utf8) }
        case .teacherCache:
            let directory = fixtures + ["train", "dense-teacher", "teacher-cache-k4"]
            seeds = [read(directory + ["manifest.json"]), read(directory + ["train-00001.safetensors"])].allSatisfy { $0 != nil }
                ? [FuzzParts.join([read(directory + ["manifest.json"])!, read(directory + ["train-00001.safetensors"])!])] : []
        }
        return small ? seeds.filter { $0.count <= 24 << 10 } : seeds
    }
}
