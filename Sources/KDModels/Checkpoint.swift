import Foundation
import KDCore

/// A Hugging Face model directory: `config.json` and its safetensors weights, single-file or
/// sharded with `model.safetensors.index.json`. Opening reads headers only.
public final class Checkpoint {
    public let directory: String
    public let spec: ModelSpec
    /// Every tensor in the weight files, by name, with the file that holds it.
    public let tensors: [String: (file: SafetensorsFile, info: TensorInfo)]
    public let files: [SafetensorsFile]

    public static let indexName = "model.safetensors.index.json"
    public static let singleName = "model.safetensors"

    public init(directory: String) throws {
        self.directory = directory
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw KDError("\(directory): no such model directory")
        }
        let configPath = (directory as NSString).appendingPathComponent("config.json")
        guard FileManager.default.fileExists(atPath: configPath) else {
            throw KDError("\(directory): no config.json (a Hugging Face model directory has config.json and safetensors weights)")
        }
        spec = try ModelConfigurations.load(configFile: configPath)
        files = try Checkpoint.openWeights(directory)
        var tensors: [String: (SafetensorsFile, TensorInfo)] = [:]
        for file in files {
            for (name, info) in file.tensors {
                if let other = tensors[name] {
                    throw KDError("\(file.path): tensor '\(name)' is also in \(other.0.path)")
                }
                tensors[name] = (file, info)
            }
        }
        self.tensors = tensors
    }

    /// Opens `model.safetensors`, or every shard the index names, checking that each listed
    /// tensor is where the index says.
    static func openWeights(_ directory: String) throws -> [SafetensorsFile] {
        let fm = FileManager.default
        func path(_ name: String) -> String { (directory as NSString).appendingPathComponent(name) }
        let indexPath = path(indexName)
        if fm.fileExists(atPath: indexPath) {
            guard let weightMap = try readJSONObject(atPath: indexPath)["weight_map"] as? [String: String]
            else { throw KDError("\(indexPath): not a safetensors index (no \"weight_map\" object)") }
            var files: [String: SafetensorsFile] = [:]
            for shard in Set(weightMap.values).sorted() {
                guard !shard.isEmpty, !shard.contains("/"), shard != ".", shard != ".." else {
                    throw KDError("\(indexPath): shard name \(quoted(shard)) is not a file name in the model directory")
                }
                guard fm.fileExists(atPath: path(shard)) else {
                    throw KDError("\(path(shard)): missing shard (listed in \(indexName))")
                }
                files[shard] = try SafetensorsFile(path: path(shard))
            }
            for (name, shard) in weightMap.sorted(by: { $0.key < $1.key }) where files[shard]!.tensors[name] == nil {
                throw KDError("\(path(shard)): tensor \(quoted(name)) is listed in \(indexName) but not in the shard")
            }
            return Set(weightMap.values).sorted().map { files[$0]! }
        }
        if fm.fileExists(atPath: path(singleName)) { return [try SafetensorsFile(path: path(singleName))] }
        let contents = (try? fm.contentsOfDirectory(atPath: directory)) ?? []
        if let pickle = contents.sorted().first(where: { [".bin", ".pt", ".pth", ".ckpt"].contains(where: $0.hasSuffix) }) {
            throw KDError(
                "\(path(pickle)): pickle checkpoints are not read (they can run code); convert to safetensors, e.g. "
                    + "model.save_pretrained(dir, safe_serialization=True)")
        }
        throw KDError("\(directory): no \(singleName) or \(indexName)")
    }

    /// Checks the weight files against the architecture: every expected tensor present with its
    /// shape and a floating-point dtype, nothing unexpected.
    public func validate() throws {
        let expected = spec.checkpointTensors()
        var expectedNames = Set<String>()
        for (name, shape) in expected {
            expectedNames.insert(name)
            guard let (file, info) = tensors[name] else {
                let location = files.count == 1 ? files[0].path : directory
                throw KDError("\(location): missing tensor '\(name)'")
            }
            guard info.shape == shape else {
                throw KDError("\(file.path): tensor '\(name)' has shape \(info.shape), config.json implies \(shape)")
            }
            guard info.dtype.isFloatingPoint else {
                throw KDError("\(file.path): tensor '\(name)' has unsupported dtype \(info.dtype.rawValue) (kd reads F32, BF16, F16)")
            }
        }
        if let extra = tensors.keys.sorted().first(where: { !expectedNames.contains($0) }) {
            let hint = extra == "lm_head.weight" && spec.tieWordEmbeddings ? " (config.json has tie_word_embeddings: true)" : ""
            throw KDError("\(tensors[extra]!.file.path): unexpected tensor '\(extra)'\(hint)")
        }
    }

    /// One tensor onto `device`, as f32 or bf16 (see `SafetensorsFile.load`).
    public func load(_ name: String, on device: Device, as dtype: DType = .f32) throws -> Tensor {
        guard let (file, _) = tensors[name] else { throw KDError("\(directory): missing tensor '\(name)'") }
        return try file.load(name, on: device, as: dtype)
    }

    /// One tensor onto `device`, in the dtype `setting` holds it in.
    public func load(_ name: String, on device: Device, heldAs setting: WeightDType) throws -> Tensor {
        try load(name, on: device, as: heldDType(of: name, setting))
    }

    /// The dtype kd holds tensor `name` in under `setting` (see `WeightDType`).
    public func heldDType(of name: String, _ setting: WeightDType) -> DType {
        guard let info = tensors[name]?.info else { return .f32 }
        return setting.held(name, shape: info.shape, stored: info.dtype)
    }

    /// Bytes per element of each tensor as held under `setting` (for placement and budgets).
    public func heldElementSize(_ setting: WeightDType) -> (String) -> Int {
        { [self] name in heldDType(of: name, setting).size }
    }

    /// The dtypes of the weights with how many tensors have each.
    public var dtypeCounts: [String: Int] {
        tensors.values.reduce(into: [:]) { $0[$1.info.dtype.rawValue, default: 0] += 1 }
    }

    /// Bytes of tensor data in the weight files.
    public var storedBytes: Int { tensors.values.reduce(0) { $0 + $1.info.byteRange.count } }
    /// Parameters stored in the weight files.
    public var storedParameters: Int { tensors.values.reduce(0) { $0 + $1.info.count } }
}
