import ArgumentParser
import Foundation
import KDCore
import KDModels

struct Inspect: KDCommand {
    static let configuration = CommandConfiguration(
        abstract: "Describe a checkpoint: architecture, layers, exact parameter count, dtypes, bytes.")

    @Option(help: "Model directory.") var model: String
    @Flag(help: "Print JSON on stdout.") var json = false

    func execute() throws {
        let checkpoint = try Checkpoint(directory: model)
        try checkpoint.validate()
        let spec = checkpoint.spec
        let sparse = spec.feedForward.filter { if case .sparse = $0 { true } else { false } }.count
        var summary: [String: Any] = [
            "path": model, "model_type": spec.modelType, "layers": spec.numLayers, "hidden_size": spec.hiddenSize,
            "num_attention_heads": spec.numHeads, "num_key_value_heads": spec.numKVHeads, "head_dim": spec.headDim,
            "vocab_size": spec.vocabSize, "tie_word_embeddings": spec.tieWordEmbeddings,
            "params": checkpoint.storedParameters, "active_params": spec.activeParameterCount,
            "dtypes": checkpoint.dtypeCounts, "bytes": checkpoint.storedBytes,
            "bytes_f32": spec.parameterCount * 4, "files": checkpoint.files.count, "sparse_layers": sparse,
        ]
        var ffn = ""
        if let first = spec.feedForward.first(where: { if case .sparse = $0 { true } else { false } }),
           case .sparse(let experts, let topK, let size, let normalize) = first {
            summary["num_experts"] = experts
            summary["num_experts_per_tok"] = topK
            summary["moe_intermediate_size"] = size
            ffn = "\(sparse) sparse layers: \(experts) experts of \(size), top \(topK)\(normalize ? " renormalised" : "")"
        }
        if case .dense(let size)? = spec.feedForward.first(where: { if case .dense = $0 { true } else { false } }) {
            summary["intermediate_size"] = size
            ffn += (ffn.isEmpty ? "" : "; ") + "\(spec.numLayers - sparse) dense layers of \(size)"
        }
        if json {
            Console.json(summary)
            return
        }
        let dtypes = checkpoint.dtypeCounts.sorted { $0.key < $1.key }.map { "\($0.key) × \($0.value)" }.joined(separator: ", ")
        Console.info("""
            model        \(model)
            type         \(spec.modelType), \(spec.numLayers) layers
            attention    hidden \(spec.hiddenSize), \(spec.numHeads) heads (\(spec.numKVHeads) kv), head_dim \(spec.headDim), rope_theta \(spec.ropeTheta)
            feed-forward \(ffn)
            vocabulary   \(spec.vocabSize)\(spec.tieWordEmbeddings ? ", tied embeddings" : "")
            parameters   \(grouped(checkpoint.storedParameters)) (\(grouped(spec.activeParameterCount)) active per token)
            dtypes       \(dtypes)
            bytes        \(formatBytes(checkpoint.storedBytes)) in \(checkpoint.files.count) file(s), \(formatBytes(spec.parameterCount * 4)) as f32
            """)
    }
}
