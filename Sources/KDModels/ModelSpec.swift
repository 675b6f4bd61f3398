import Foundation
import KDCore

/// What a decoder layer's feed-forward block is.
public enum FeedForwardKind: Equatable, Sendable {
    case dense(intermediateSize: Int)
    case sparse(experts: Int, topK: Int, intermediateSize: Int, normalizeTopK: Bool)
}

/// The architecture-neutral shape of a decoder-only model, derived from a checkpoint's
/// `config.json` by the per-architecture configuration types.
public struct ModelSpec: Equatable, Sendable {
    public var modelType: String
    public var vocabSize: Int
    public var hiddenSize: Int
    public var numLayers: Int
    public var numHeads: Int
    public var numKVHeads: Int
    public var headDim: Int
    public var rmsNormEps: Float
    public var ropeTheta: Double
    public var tieWordEmbeddings: Bool
    public var feedForward: [FeedForwardKind]
    public var bosTokenID: Int?
    public var eosTokenIDs: [Int]
    /// The dtype the checkpoint declares (`torch_dtype` / `dtype`), if any.
    public var declaredDType: String?

    public var isMoE: Bool { feedForward.contains { if case .sparse = $0 { true } else { false } } }

    /// Every tensor of the checkpoint, named as Hugging Face names it, in a stable order.
    public func checkpointTensors() -> [(name: String, shape: [Int])] {
        var tensors: [(String, [Int])] = [("model.embed_tokens.weight", [vocabSize, hiddenSize])]
        for layer in 0..<numLayers { tensors += layerTensors(layer) }
        tensors.append(("model.norm.weight", [hiddenSize]))
        if !tieWordEmbeddings { tensors.append(("lm_head.weight", [vocabSize, hiddenSize])) }
        return tensors
    }

    /// The tensors of decoder layer `layer`.
    public func layerTensors(_ layer: Int) -> [(name: String, shape: [Int])] {
        let p = "model.layers.\(layer)."
        var tensors: [(String, [Int])] = [
            (p + "input_layernorm.weight", [hiddenSize]),
            (p + "self_attn.q_proj.weight", [numHeads * headDim, hiddenSize]),
            (p + "self_attn.k_proj.weight", [numKVHeads * headDim, hiddenSize]),
            (p + "self_attn.v_proj.weight", [numKVHeads * headDim, hiddenSize]),
            (p + "self_attn.o_proj.weight", [hiddenSize, numHeads * headDim]),
            (p + "self_attn.q_norm.weight", [headDim]),
            (p + "self_attn.k_norm.weight", [headDim]),
            (p + "post_attention_layernorm.weight", [hiddenSize]),
        ]
        switch feedForward[layer] {
        case .dense(let size):
            tensors += [
                (p + "mlp.gate_proj.weight", [size, hiddenSize]),
                (p + "mlp.up_proj.weight", [size, hiddenSize]),
                (p + "mlp.down_proj.weight", [hiddenSize, size]),
            ]
        case .sparse(let experts, _, let size, _):
            tensors.append((p + "mlp.gate.weight", [experts, hiddenSize]))
            for e in 0..<experts {
                tensors += [
                    (p + "mlp.experts.\(e).gate_proj.weight", [size, hiddenSize]),
                    (p + "mlp.experts.\(e).up_proj.weight", [size, hiddenSize]),
                    (p + "mlp.experts.\(e).down_proj.weight", [hiddenSize, size]),
                ]
            }
        }
        return tensors
    }

    /// Parameters of one decoder layer (without building the name list).
    public func layerParameterCount(_ layer: Int) -> Int {
        let attention = hiddenSize * headDim * (2 * numHeads + 2 * numKVHeads) + 2 * headDim + 2 * hiddenSize
        switch feedForward[layer] {
        case .dense(let size): return attention + 3 * size * hiddenSize
        case .sparse(let experts, _, let size, _): return attention + experts * hiddenSize + experts * 3 * size * hiddenSize
        }
    }

    public var embeddingParameterCount: Int { vocabSize * hiddenSize }
    /// Final norm plus the output projection when it is not tied to the embedding.
    public var headParameterCount: Int { hiddenSize + (tieWordEmbeddings ? 0 : vocabSize * hiddenSize) }

    /// Exact parameter count (a tied embedding counted once).
    public var parameterCount: Int {
        embeddingParameterCount + (0..<numLayers).reduce(0) { $0 + layerParameterCount($1) } + headParameterCount
    }

    /// Parameters that one token's forward pass multiplies by (routed experts only), for FLOP estimates.
    public var activeParameterCount: Int {
        var total = headParameterCount - hiddenSize + (tieWordEmbeddings ? vocabSize * hiddenSize : 0)
        for layer in 0..<numLayers {
            switch feedForward[layer] {
            case .dense: total += layerParameterCount(layer)
            case .sparse(let experts, let topK, let size, _):
                total += layerParameterCount(layer) - experts * 3 * size * hiddenSize + topK * 3 * size * hiddenSize
            }
        }
        return total
    }

    /// Limits on config.json values, far above any published model and low enough that every size
    /// kd derives from them (parameters, bytes, FLOPs) fits an Int with room to spare.
    public enum Limits {
        public static let vocabSize = 1 << 24
        public static let hiddenSize = 1 << 17
        public static let layers = 1 << 10
        public static let heads = 1 << 10
        public static let headDim = 1 << 12
        public static let intermediateSize = 1 << 20
        public static let experts = 1 << 12
        /// 2^42 ≈ 4.4 trillion parameters.
        public static let parameters = 1 << 42
    }

    /// `num_hidden_layers` checked before anything is sized by it.
    static func checkLayerCount(_ layers: Int) throws {
        guard layers >= 1 && layers <= Limits.layers else {
            throw KDError("num_hidden_layers (\(layers)) must be between 1 and \(Limits.layers)")
        }
    }

    /// Checks the invariants the kernels rely on, with a message naming the config key.
    func validate(file: String) throws {
        func require(_ ok: Bool, _ what: String) throws {
            if !ok { throw KDError("\(file): \(what)") }
        }
        func range(_ value: Int, _ key: String, _ limit: Int) throws {
            try require(value >= 1 && value <= limit, "\(key) (\(value)) must be between 1 and \(limit)")
        }
        try range(vocabSize, "vocab_size", Limits.vocabSize)
        try range(hiddenSize, "hidden_size", Limits.hiddenSize)
        try range(numLayers, "num_hidden_layers", Limits.layers)
        try require(feedForward.count == numLayers, "num_hidden_layers (\(numLayers)) does not match the layer list")
        try range(numHeads, "num_attention_heads", Limits.heads)
        try range(numKVHeads, "num_key_value_heads", Limits.heads)
        try require(numHeads % numKVHeads == 0,
                    "num_attention_heads (\(numHeads)) must be a positive multiple of num_key_value_heads (\(numKVHeads))")
        try range(headDim, "head_dim", Limits.headDim)
        try require(headDim % 2 == 0, "head_dim (\(headDim)) must be positive and even for rotary embeddings")
        try require(rmsNormEps > 0 && rmsNormEps.isFinite, "rms_norm_eps (\(rmsNormEps)) must be positive and finite")
        try require(ropeTheta > 0 && ropeTheta.isFinite, "rope_theta (\(ropeTheta)) must be positive and finite")
        var kinds: [FeedForwardKind] = []
        for kind in feedForward where !kinds.contains(kind) { kinds.append(kind) }
        for kind in kinds {
            switch kind {
            case .dense(let size):
                try range(size, "intermediate_size", Limits.intermediateSize)
            case .sparse(let experts, let topK, let size, _):
                try range(experts, "num_experts", Limits.experts)
                try require(topK >= 1 && topK <= experts,
                            "num_experts_per_tok (\(topK)) must be between 1 and num_experts (\(experts))")
                try range(size, "moe_intermediate_size", Limits.intermediateSize)
            }
        }
        // Estimated in floating point first, so the exact count cannot overflow.
        let attention = Double(hiddenSize) * Double(headDim) * Double(2 * numHeads + 2 * numKVHeads)
        let feedForwardParameters = feedForward.reduce(0.0) { total, kind in
            switch kind {
            case .dense(let size): total + 3 * Double(size) * Double(hiddenSize)
            case .sparse(let experts, _, let size, _): total + Double(experts) * (3 * Double(size) + 1) * Double(hiddenSize)
            }
        }
        let estimate = Double(numLayers) * attention + feedForwardParameters + 2 * Double(vocabSize) * Double(hiddenSize)
        try require(estimate <= Double(Limits.parameters),
                    "the model would have about \(String(format: "%.3g", estimate)) parameters, more than the \(Limits.parameters) kd accepts")
    }
}

/// A checkpoint's `config.json` decoded by the configuration type of its `model_type`.
public protocol ModelConfiguration: Codable {
    static var modelType: String { get }
    func spec() throws -> ModelSpec
}

public enum ModelConfigurations {
    /// The configuration types kd understands, by `model_type`.
    public static let all: [any ModelConfiguration.Type] = [Qwen3Configuration.self, Qwen3MoEConfiguration.self]

    /// Reads a `config.json` into a spec, with one-line errors naming the file and key.
    public static func load(configFile path: String) throws -> ModelSpec {
        try decode(try InputFile.read(path, limit: 1 << 24), file: path)
    }

    public static func decode(_ data: Data, file: String) throws -> ModelSpec {
        let object = try jsonObject(data, file: file)
        guard let modelType = object["model_type"] as? String else {
            throw KDError("\(file): missing \"model_type\"")
        }
        guard let type = all.first(where: { $0.modelType == modelType }) else {
            throw KDError(
                "\(file): unsupported model_type '\(modelType)' (kd runs \(all.map { $0.modelType }.joined(separator: ", ")))")
        }
        let spec: ModelSpec
        do {
            spec = try JSONDecoder().decode(type, from: data).spec()
        } catch let error as DecodingError {
            throw KDError("\(file): \(describe(error))")
        } catch let error as KDError {
            throw KDError("\(file): \(error.message)")
        }
        try spec.validate(file: file)
        return spec
    }

    /// One line for a decoding failure: the key path and what was wrong.
    public static func describe(_ error: DecodingError) -> String {
        func path(_ keys: [CodingKey]) -> String {
            keys.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".")
        }
        switch error {
        case .keyNotFound(let key, let context):
            return "missing key '\(path(context.codingPath + [key]))'"
        case .typeMismatch(let type, let context):
            return "key '\(path(context.codingPath))': expected \(typeName(type))"
        case .valueNotFound(let type, let context):
            return "key '\(path(context.codingPath))': expected \(typeName(type)), found null"
        case .dataCorrupted(let context):
            return context.codingPath.isEmpty
                ? "malformed JSON" : "key '\(path(context.codingPath))': \(context.debugDescription)"
        @unknown default:
            return "\(error)"
        }
    }

    private static func typeName(_ type: Any.Type) -> String {
        switch type {
        case is Int.Type, is Double.Type, is Float.Type: "a number"
        case is String.Type: "a string"
        case is Bool.Type: "true or false"
        default: "\(type)"
        }
    }
}

/// `eos_token_id` may be one id or a list of ids.
struct TokenIDList: Codable {
    let ids: [Int]

    init(from decoder: Decoder) throws {
        let container = try decoder.singleValueContainer()
        if let one = try? container.decode(Int.self) {
            ids = [one]
        } else {
            ids = try container.decode([Int].self)
        }
    }

    func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(ids)
    }
}

/// `rope_parameters` (transformers 5) or the older `rope_scaling` object.
struct RopeParameters: Codable {
    let ropeTheta: Double?
    let ropeType: String?
    let type: String?

    enum CodingKeys: String, CodingKey {
        case ropeTheta = "rope_theta"
        case ropeType = "rope_type"
        case type
    }

    var kind: String { ropeType ?? type ?? "default" }
}

/// The attention and rotary settings Qwen3 and Qwen3-MoE share, checked for what kd implements.
struct AttentionSettings {
    static func ropeTheta(_ ropeTheta: Double?, parameters: RopeParameters?, scaling: RopeParameters?) throws -> Double {
        for (key, rope) in [("rope_parameters", parameters), ("rope_scaling", scaling)] {
            if let rope, rope.kind != "default" {
                throw KDError("\(key): rope type '\(rope.kind)' is not supported (kd implements the default rotary embedding)")
            }
        }
        guard let theta = ropeTheta ?? parameters?.ropeTheta else {
            throw KDError("missing key 'rope_theta' (or 'rope_parameters.rope_theta')")
        }
        return theta
    }

    static func check(hiddenAct: String?, attentionBias: Bool?, useSlidingWindow: Bool?) throws {
        if let act = hiddenAct, act != "silu" { throw KDError("hidden_act '\(act)' is not supported (kd implements silu)") }
        if attentionBias == true { throw KDError("attention_bias true is not supported (Qwen3 has no attention bias)") }
        if useSlidingWindow == true { throw KDError("use_sliding_window true is not supported") }
    }
}
