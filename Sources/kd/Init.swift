import ArgumentParser
import Foundation
import KDCore
import KDModels
import KDText

struct Init: KDCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write a random-initialised checkpoint in the published Hugging Face layout.",
        discussion: "Presets: \(Presets.names.joined(separator: ", ")). --set overrides config.json keys, e.g. --set num_hidden_layers=4.")

    @Option(name: .customLong("config-json"), help: "A config.json to initialise.") var configJSON: String?
    @Option(help: "A checkpoint whose config.json is the starting point and whose tensors of matching name and shape are copied.")
    var from: String?
    @Option(help: "A published configuration instead of --config-json.") var preset: String?
    @Option(help: "Directory to write (must not exist unless --force).") var output: String
    @Option(help: "Random seed.") var seed: UInt64 = 0
    @Option(help: "Weight dtype: f32 or bf16.") var dtype: String = "f32"
    @Option(name: .customLong("set"), help: "Override a config.json key: key=value (repeatable).") var overrides: [String] = []
    @Option(name: .customLong("max-shard-size"), help: "Split the weights into shards of at most this size.") var maxShardSize: String = "4GiB"
    @Option(help: "A directory whose tokenizer.json and tokenizer_config.json are copied in (default with --from: its own).")
    var tokenizer: String?
    @Flag(help: "Replace --output if it exists.") var force = false
    @Flag(name: .customLong("config-only"), help: "Write only config.json (for kd plan).") var configOnly = false
    @Flag(help: "Print a JSON summary on stdout.") var json = false

    func execute() throws {
        var config: [String: Any]
        var source: Checkpoint?
        switch (configJSON ?? from.map { ($0 as NSString).appendingPathComponent("config.json") }, preset) {
        case (let path?, nil):
            config = try readJSONObject(atPath: path)
        case (nil, let name?):
            config = try Presets.config(name)
        default:
            throw KDError("give exactly one of --config-json PATH, --from DIR or --preset NAME")
        }
        if let from {
            guard configJSON == nil else { throw KDError("give exactly one of --config-json PATH, --from DIR or --preset NAME") }
            source = try Checkpoint(directory: from)
        }
        try RandomCheckpoint.override(&config, with: overrides)
        guard let type = DType(rawValue: dtype.uppercased()), type == .f32 || type == .bf16 else {
            throw KDError("--dtype '\(dtype)': expected f32 or bf16")
        }
        guard let shardSize = ByteSize(parsing: maxShardSize)?.bytes, shardSize > 0 else {
            throw KDError("--max-shard-size '\(maxShardSize)': expected a size such as 2GiB")
        }
        var extraFiles: [String] = []
        if let tokenizer = tokenizer ?? from.flatMap({ directory in
            FileManager.default.fileExists(atPath: (directory as NSString).appendingPathComponent("tokenizer.json")) ? directory : nil
        }) {
            let loaded = try Tokenizer.load(directory: tokenizer)
            let vocab = (config["vocab_size"] as? Int) ?? 0
            guard loaded.count <= vocab else {
                throw KDError("--tokenizer \(tokenizer): \(loaded.count) tokens do not fit vocab_size \(vocab)")
            }
            extraFiles = ["tokenizer.json", "tokenizer_config.json"].map { (tokenizer as NSString).appendingPathComponent($0) }
                .filter { FileManager.default.fileExists(atPath: $0) }
        }
        let start = ContinuousClock.now
        let spec = try RandomCheckpoint.write(
            config: config, to: output, seed: seed, dtype: type, maxShardBytes: shardSize, replace: force,
            configOnly: configOnly, extraFiles: extraFiles, copyFrom: source)
        let seconds = (ContinuousClock.now - start).seconds
        Console.info("wrote \(output): \(spec.modelType), \(grouped(spec.parameterCount)) parameters"
                     + (configOnly ? " (config.json only)" : " in \(type.rawValue)") + String(format: " (%.1f s)", seconds))
        if json {
            Console.json(["output": output, "model_type": spec.modelType, "params": spec.parameterCount,
                          "dtype": type.rawValue, "seconds": seconds])
        }
    }
}

