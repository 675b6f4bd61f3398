import Foundation
import KDCore

/// `config.json` of a Qwen3-MoE checkpoint (`model_type: qwen3_moe`): the Qwen3 keys plus the
/// expert settings. transformers 5 writes `num_local_experts` where older files say `num_experts`.
public struct Qwen3MoEConfiguration: ModelConfiguration {
    public static let modelType = "qwen3_moe"

    var base: Qwen3Configuration
    var numExperts: Int?
    var numLocalExperts: Int?
    var numExpertsPerTok: Int
    var moeIntermediateSize: Int
    var normTopkProb: Bool?
    var decoderSparseStep: Int?
    var mlpOnlyLayers: [Int]?

    enum CodingKeys: String, CodingKey {
        case numExperts = "num_experts"
        case numLocalExperts = "num_local_experts"
        case numExpertsPerTok = "num_experts_per_tok"
        case moeIntermediateSize = "moe_intermediate_size"
        case normTopkProb = "norm_topk_prob"
        case decoderSparseStep = "decoder_sparse_step"
        case mlpOnlyLayers = "mlp_only_layers"
    }

    public init(from decoder: Decoder) throws {
        base = try Qwen3Configuration(from: decoder)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        numExperts = try c.decodeIfPresent(Int.self, forKey: .numExperts)
        numLocalExperts = try c.decodeIfPresent(Int.self, forKey: .numLocalExperts)
        numExpertsPerTok = try c.decode(Int.self, forKey: .numExpertsPerTok)
        moeIntermediateSize = try c.decode(Int.self, forKey: .moeIntermediateSize)
        normTopkProb = try c.decodeIfPresent(Bool.self, forKey: .normTopkProb)
        decoderSparseStep = try c.decodeIfPresent(Int.self, forKey: .decoderSparseStep)
        mlpOnlyLayers = try c.decodeIfPresent([Int].self, forKey: .mlpOnlyLayers)
    }

    public func encode(to encoder: Encoder) throws {
        try base.encode(to: encoder)
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encodeIfPresent(numExperts, forKey: .numExperts)
        try c.encodeIfPresent(numLocalExperts, forKey: .numLocalExperts)
        try c.encode(numExpertsPerTok, forKey: .numExpertsPerTok)
        try c.encode(moeIntermediateSize, forKey: .moeIntermediateSize)
        try c.encodeIfPresent(normTopkProb, forKey: .normTopkProb)
        try c.encodeIfPresent(decoderSparseStep, forKey: .decoderSparseStep)
        try c.encodeIfPresent(mlpOnlyLayers, forKey: .mlpOnlyLayers)
    }

    public func spec() throws -> ModelSpec {
        guard let experts = numExperts ?? numLocalExperts else { throw KDError("missing key 'num_experts'") }
        try ModelSpec.checkLayerCount(base.numHiddenLayers)
        let step = decoderSparseStep ?? 1
        guard step >= 1 else { throw KDError("decoder_sparse_step must be at least 1") }
        let denseOnly = Set(mlpOnlyLayers ?? [])
        // As transformers: a layer is sparse unless listed in mlp_only_layers, when (layer+1) % step == 0.
        let feedForward: [FeedForwardKind] = (0..<base.numHiddenLayers).map { layer in
            if !denseOnly.contains(layer) && experts > 0 && (layer + 1) % step == 0 {
                return .sparse(
                    experts: experts, topK: numExpertsPerTok, intermediateSize: moeIntermediateSize,
                    normalizeTopK: normTopkProb ?? false)
            }
            return .dense(intermediateSize: base.intermediateSize)
        }
        return try base.baseSpec(modelType: Self.modelType, feedForward: feedForward)
    }
}

/// Qwen3-MoE's sparse block: a router picks `topK` of the experts per token from a softmax over
/// all of them (in f32), optionally renormalises their weights, and sums the chosen experts'
/// SwiGLU outputs. Tokens are routed in batches: each expert gathers its tokens and runs one
/// sgemm per projection.
public final class SparseMoE {
    public let router: Tensor  // [experts, hidden], the checkpoint's mlp.gate.weight
    public let experts: [MLP]
    public let topK: Int
    public let normalizeTopK: Bool

    public init(router: Tensor, experts: [MLP], topK: Int, normalizeTopK: Bool) {
        self.router = router
        self.experts = experts
        self.topK = topK
        self.normalizeTopK = normalizeTopK
    }

    /// For each token, the chosen experts and their weights, from the router's softmax.
    func route(_ x: Tensor, rows: Int) throws -> (experts: [Int32], weights: [Float]) {
        let count = experts.count
        let hidden = router.shape[1]
        let probabilities = try Tensor(uninitializedShape: [rows, count], on: x.device)
        BLAS.linear(x.data, rows: rows, inFeatures: hidden, weight: router.data, outFeatures: count, into: probabilities.data)
        var chosen = [Int32](repeating: 0, count: rows * topK)
        var weights = [Float](repeating: 0, count: rows * topK)
        for t in 0..<rows {
            let p = probabilities.data + t * count
            Kernels.softmax(p, count: count)
            // Top-k by repeated selection (k is small); ties keep the lower expert index as torch.topk does.
            var total: Float = 0
            for slot in 0..<topK {
                var best = -1
                for e in 0..<count where p[e] >= 0 && (best < 0 || p[e] > p[best]) { best = e }
                chosen[t * topK + slot] = Int32(best)
                weights[t * topK + slot] = p[best]
                total += p[best]
                p[best] = -1  // taken
            }
            if normalizeTopK {
                for slot in 0..<topK { weights[t * topK + slot] /= total }
            }
        }
        return (chosen, weights)
    }

    public func forward(_ x: Tensor, rows: Int) throws -> Tensor {
        let hidden = router.shape[1]
        let (chosen, weights) = try route(x, rows: rows)
        // Group the (token, weight) pairs by expert, in token order.
        var tokensOf = [[Int]](repeating: [], count: experts.count)
        var weightsOf = [[Float]](repeating: [], count: experts.count)
        for t in 0..<rows {
            for slot in 0..<topK {
                let e = Int(chosen[t * topK + slot])
                tokensOf[e].append(t)
                weightsOf[e].append(weights[t * topK + slot])
            }
        }
        let out = try Tensor.zeros([rows, hidden], on: x.device)
        for (e, expert) in experts.enumerated() where !tokensOf[e].isEmpty {
            let tokens = tokensOf[e]
            let gathered = try Tensor(uninitializedShape: [tokens.count, hidden], on: x.device)
            for (i, t) in tokens.enumerated() {
                (gathered.data + i * hidden).update(from: x.data + t * hidden, count: hidden)
            }
            let y = try expert.forward(gathered, rows: tokens.count)
            for (i, t) in tokens.enumerated() {
                Kernels.axpy(weightsOf[e][i], y.data + i * hidden, into: out.data + t * hidden, count: hidden)
            }
        }
        return out
    }
}
