import Foundation
import KDCore

/// Writes a checkpoint with LoRA adapters merged in (W + s·B·A on each targeted linear), in the
/// base checkpoint's layout and dtypes, beside which transformers loads it like the base.
public enum Merge {
    /// `adapters` maps a linear's checkpoint name (`model.layers.0.self_attn.q_proj`) to its A and B.
    public static func write(base: Checkpoint, adapters: [String: (a: Tensor, b: Tensor)], scale: Float,
                             to output: String, replace: Bool = false) throws {
        let fm = FileManager.default
        if fm.fileExists(atPath: output) && !replace {
            throw KDError("\(output): already exists (pass --force to replace it)")
        }
        if replace { try requireReplaceableDirectory(output) }
        for name in adapters.keys.sorted() where base.tensors[name + ".weight"] == nil {
            throw KDError("\(base.directory): the adapter has '\(name)' but the model has no tensor '\(name).weight'")
        }
        try writeDirectoryAtomically(output) { staging in
            // Everything but the weights is copied: config, generation config, tokenizer files.
            for name in try fm.contentsOfDirectory(atPath: base.directory).sorted()
            where !name.hasSuffix(".safetensors") && name != Checkpoint.indexName && !name.hasPrefix(".") {
                let source = (base.directory as NSString).appendingPathComponent(name)
                var isDirectory: ObjCBool = false
                if fm.fileExists(atPath: source, isDirectory: &isDirectory), !isDirectory.boolValue {
                    try fm.copyItem(atPath: source, toPath: (staging as NSString).appendingPathComponent(name))
                }
            }
            let device = Device(id: 0)
            for file in base.files {
                let names = file.tensors.keys.sorted { file.tensors[$0]!.byteRange.lowerBound < file.tensors[$1]!.byteRange.lowerBound }
                let writer = try SafetensorsWriter(
                    path: (staging as NSString).appendingPathComponent((file.path as NSString).lastPathComponent),
                    entries: names.map { .init(name: $0, dtype: file.tensors[$0]!.dtype, shape: file.tensors[$0]!.shape) },
                    metadata: file.metadata.isEmpty ? ["format": "pt"] : file.metadata)
                do {
                    for name in names {
                        let linear = String(name.dropLast(".weight".count))
                        if name.hasSuffix(".weight"), let (a, b) = adapters[linear] {
                            let weight = try file.load(name, on: device).clone()
                            let (out, inFeatures, rank) = (weight.shape[0], weight.shape[1], a.shape[0])
                            BLAS.gemm(m: out, n: inFeatures, k: rank, alpha: scale, a: b.data, lda: rank, b: a.data,
                                      ldb: inFeatures, beta: 1, c: weight.data, ldc: inFeatures)
                            try writer.write(weight)
                        } else {
                            try writer.write(raw: try file.bytes(name))
                        }
                    }
                    try writer.finish()
                } catch {
                    writer.discard()
                    throw error
                }
            }
            let index = (base.directory as NSString).appendingPathComponent(Checkpoint.indexName)
            if fm.fileExists(atPath: index) {
                try fm.copyItem(atPath: index, toPath: (staging as NSString).appendingPathComponent(Checkpoint.indexName))
            }
        }
    }
}
