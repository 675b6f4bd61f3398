import Foundation
import KDCore
import KDModels
import KDText
import KDTrain

/// The parsers kd runs on files a user hands it, each driven from one byte string the way the
/// CLI drives it: parse, then touch what the parse returned (tensors loaded, a string encoded,
/// a spec's tensor list built), so a header that parses but lies is caught where it would be used.
/// A parser may return or throw; it must never trap, hang or read out of bounds.
public enum FuzzTarget: String, CaseIterable, Sendable {
    case safetensors
    case config
    case runYAML = "run-yaml"
    case jsonl
    case tokenizer
    case peft
    case trainerState = "trainer-state"
    case teacherCache = "teacher-cache"
    case hostfile

    /// What a parser did with one input.
    public enum Outcome {
        case accepted
        case rejected(Error)
    }

    public func run(_ data: Data) -> Outcome {
        do {
            switch self {
            case .safetensors: try FuzzDrivers.safetensors(data)
            case .config: try FuzzDrivers.config(data)
            case .runYAML: try FuzzDrivers.runYAML(data)
            case .jsonl: try FuzzDrivers.jsonl(data)
            case .tokenizer: try FuzzDrivers.tokenizer(data)
            case .peft: try FuzzDrivers.peft(data)
            case .trainerState: try FuzzDrivers.trainerState(data)
            case .teacherCache: try FuzzDrivers.teacherCache(data)
            case .hostfile: try FuzzDrivers.hostfile(data)
            }
            return .accepted
        } catch {
            return .rejected(error)
        }
    }
}

/// Where the fixtures are: `KD_FUZZ_ROOT` (the repository), else this source file's checkout.
public enum FuzzEnvironment {
    public static let repositoryRoot: String = {
        if let root = ProcessInfo.processInfo.environment["KD_FUZZ_ROOT"], !root.isEmpty { return root }
        return URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().path
    }()

    public static func path(_ parts: String...) -> String {
        parts.reduce(repositoryRoot) { ($0 as NSString).appendingPathComponent($1) }
    }

    /// A directory of this process's for the files a parser reads: in `KD_FUZZ_SCRATCH`, else on
    /// tmpfs when there is one.
    public static let scratch: String = {
        let environment = ProcessInfo.processInfo.environment["KD_FUZZ_SCRATCH"] ?? ""
        let base = !environment.isEmpty ? environment
            : FileManager.default.fileExists(atPath: "/dev/shm") ? "/dev/shm" : NSTemporaryDirectory()
        let path = (base as NSString).appendingPathComponent("kd-fuzz-\(getpid())")
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }()

    public static func removeScratch() { try? FileManager.default.removeItem(atPath: scratch) }

    /// Writes `bytes` to `name` in the scratch directory (nil removes it) and returns the path.
    static func write(_ bytes: Data?, to name: String) -> String {
        let path = (scratch as NSString).appendingPathComponent(name)
        try? FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        if let bytes {
            if !FileManager.default.createFile(atPath: path, contents: bytes) { fatalError("kd-fuzz: cannot write \(path)") }
        } else {
            try? FileManager.default.removeItem(atPath: path)
        }
        return path
    }

    /// One device for every target, with a budget so a legitimately large tensor is refused
    /// instead of exhausting the machine (a parser's own limits are what is under test).
    static let device = Device(id: 0, capacity: 256 << 20)

    /// The Qwen3 tokenizer (read once; the JSON Lines target builds datasets with it).
    public static let qwen3: Tokenizer? = try? Tokenizer.load(directory: path("Configs", "tokenizer", "qwen3"))

    /// The model the fixture adapters belong to (adapter-init of Tests/Fixtures/train/dense-teacher).
    static let adapterSpec: ModelSpec? = try? ModelConfigurations.load(
        configFile: path("Tests", "Fixtures", "train", "dense-teacher", "student", "config.json"))
}

/// The work each target does with one input.
enum FuzzDrivers {
    static func parts(_ data: Data) -> [Data] { FuzzParts.split([UInt8](data)).map { Data($0) } }

    /// A spec small enough that building its tensor list is instant: a valid config may describe a
    /// model of any size, and walking a billion layers is slow rather than wrong.
    static func isSmall(_ spec: ModelSpec) -> Bool {
        let experts = spec.feedForward.map { kind -> Int in
            if case .sparse(let experts, _, _, _) = kind { return experts } else { return 1 }
        }.max() ?? 1
        let (product, overflow) = spec.numLayers.multipliedReportingOverflow(by: max(experts, 1))
        return !overflow && product < 10_000
    }

    static func safetensors(_ data: Data) throws {
        let path = FuzzEnvironment.write(data, to: "model.safetensors")
        let file = try SafetensorsFile(path: path)
        _ = file.metadata.count
        let device = FuzzEnvironment.device
        for name in file.tensors.keys.sorted() {
            guard let info = file.tensors[name] else { continue }
            _ = try? file.bytes(name)
            if info.dtype.isFloatingPoint {
                _ = try? file.load(name, on: device)
                _ = try? file.load(name, on: device, as: .bf16)
            }
        }
    }

    static func config(_ data: Data) throws {
        let spec = try ModelConfigurations.decode(data, file: "config.json")
        guard isSmall(spec) else { return }
        _ = spec.parameterCount
        _ = spec.activeParameterCount
        _ = spec.checkpointTensors().count
        _ = Placement(spec: spec, deviceCount: 3)
    }

    /// The YAML, then `--set` overrides one per line in the parts after it.
    static func runYAML(_ data: Data) throws {
        let parts = parts(data)
        let yaml = String(decoding: parts[0], as: UTF8.self)
        let overrides = parts.dropFirst().flatMap {
            String(decoding: $0, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        }
        let config = try RunConfig.parse(yaml: yaml, file: "run.yaml", overrides: overrides)
        _ = config.effectiveValues.count
        _ = config.lora.scale
        _ = config.deviceCount
    }

    /// Lenient and strict reads (the strict one decides the outcome), token ids of every record,
    /// and datasets of every format built with the Qwen3 tokenizer (the format is told from the
    /// first record).
    static func jsonl(_ data: Data) throws {
        let lines = try JSONLines(data: data, name: "data.jsonl", skipBad: true)
        for record in lines.records {
            _ = try? record.tokenIDs("input_ids")
            _ = try? record.tokenIDs("labels")
            _ = Dataset.detect(record.object)
        }
        let path = FuzzEnvironment.write(data, to: "data.jsonl")
        for policy in [BadRecordPolicy.skip, .error] {
            let options = DatasetOptions(format: .auto, maxSeqLen: 48, trainOnPrompt: policy == .error, onBadRecord: policy)
            if let dataset = try? Dataset(path: path, tokenizer: FuzzEnvironment.qwen3, options: options) {
                _ = PaddedBatch(Array(dataset.examples.prefix(4)), padID: 0).scoredTokens
            }
        }
        _ = try JSONLines(data: data, name: "data.jsonl")
    }

    static let sampleText = "Hello world, héllo\u{301} 123 <|im_start|>user\n  tabs\tand 😀 <think></think>"

    static func tokenizer(_ data: Data) throws {
        let tokenizer = try Tokenizer(json: data, file: "tokenizer.json")
        let ids = tokenizer.encode(sampleText)
        _ = try? tokenizer.decode(ids)
        _ = try? tokenizer.decode(ids + [-1, tokenizer.count], skipSpecialTokens: true, skipUnknown: true)
        for token in tokenizer.addedTokens.prefix(8) { _ = tokenizer.id(of: token.content) }
    }

    /// adapter_config.json, then adapter_model.safetensors (absent when the input has one part),
    /// then optionally the model's config.json (the fixture student's when absent or unusable).
    static func peft(_ data: Data) throws {
        let parts = parts(data)
        _ = FuzzEnvironment.write(parts[0], to: "adapter/\(PEFTAdapter.configName)")
        let directory = (FuzzEnvironment.write(parts.count > 1 ? parts[1] : nil, to: "adapter/\(PEFTAdapter.weightsName)")
            as NSString).deletingLastPathComponent
        var spec = FuzzEnvironment.adapterSpec
        if parts.count > 2, let given = try? ModelConfigurations.decode(parts[2], file: "config.json"), isSmall(given) {
            spec = given
        }
        let settings = try PEFTAdapter.settings(directory: directory)
        _ = settings.scale
        guard let spec else { return }
        let device = FuzzEnvironment.device
        _ = try PEFTAdapter.tensors(directory: directory, spec: spec) { _ in device }
    }

    /// manifest.json, then the shards it names, in its order (a shard absent when the input has
    /// fewer parts); every cached row of every split is then read, as training reads them.
    static func teacherCache(_ data: Data) throws {
        let parts = parts(data)
        let directory = (FuzzEnvironment.write(parts[0], to: "cache/\(TeacherCache.manifestName)") as NSString).deletingLastPathComponent
        for name in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] where name != TeacherCache.manifestName {
            try? FileManager.default.removeItem(atPath: (directory as NSString).appendingPathComponent(name))
        }
        let manifest = try? JSONDecoder().decode(TeacherCache.Manifest.self, from: parts[0])
        let files = (manifest?.splits.keys.sorted() ?? []).flatMap { manifest!.splits[$0]!.shards.map(\.file) }
        for (file, bytes) in zip(files, parts.dropFirst()) where !file.contains("/") && !file.hasPrefix(".") && file.count < 200 {
            _ = FuzzEnvironment.write(bytes, to: "cache/\(file)")
        }
        let cache = try TeacherCache(directory: directory)
        for split in cache.manifest.splits.keys.sorted() {
            _ = try cache.rows(split: split, lines: cache.lines(of: split))
        }
    }

    /// An Open MPI hostfile (`kd plan --hostfile`), and where 1,000 ranks land on it.
    static func hostfile(_ data: Data) throws {
        let hosts = try Hostfile(path: FuzzEnvironment.write(data, to: "hostfile"))
        _ = hosts.slots
        _ = hosts.placement(ranks: 1000)
    }

    static func trainerState(_ data: Data) throws {
        let directory = (FuzzEnvironment.write(data, to: "checkpoint/\(TrainingCheckpoint.stateName)") as NSString)
            .deletingLastPathComponent
        let state = try TrainingCheckpoint.readState(directory)
        _ = state.shapes.count
    }
}
