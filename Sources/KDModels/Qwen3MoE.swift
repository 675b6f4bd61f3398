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
/// SwiGLU outputs.
///
/// Tokens go through in blocks of `tokenBlock`. In a block the (token, expert) pairs are sorted by
/// expert once (tokens ascending within an expert) and gathered into one matrix, so each expert's
/// rows are contiguous; the experts then run their three products on those rows, several experts
/// at once on the helper threads (`Parallel.parts`), each product single-threaded
/// (`WeightProducts.expertLinear`); finally every token sums its experts' outputs, weighted, in
/// ascending expert order. No expert's result depends on another's or on the thread count, so
/// neither do the bits.
public final class SparseMoE {
    public let router: Tensor  // [experts, hidden], the checkpoint's mlp.gate.weight
    public let experts: [MLP]
    public let topK: Int
    public let normalizeTopK: Bool

    /// Tokens routed at once: enough that an expert sees ~`tokenBlock`·topK/experts rows (32 for
    /// Qwen3-30B-A3B), few enough that the block's gathered rows, gate and up (topK·(hidden +
    /// 2·intermediate) floats per token, 115 KiB there) stay small beside the weights.
    public static let tokenBlock = 512

    public init(router: Tensor, experts: [MLP], topK: Int, normalizeTopK: Bool) {
        self.router = router
        self.experts = experts
        self.topK = topK
        self.normalizeTopK = normalizeTopK
    }

    /// For each token, the chosen experts and their weights, from the router's softmax.
    func route(_ x: UnsafePointer<Float>, rows: Int, on device: Device) throws -> (experts: [Int32], weights: [Float]) {
        let count = experts.count
        let hidden = router.shape[1]
        let probabilities = try Tensor(uninitializedShape: [rows, count], on: device)
        BLAS.linear(x, rows: rows, inFeatures: hidden, weight: router.data, outFeatures: count, into: probabilities.data)
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

    /// The block's output for `x` [rows, hidden], with the experts split into at most `parts`
    /// groups run at once (the result does not depend on it).
    public func forward(_ x: Tensor, rows: Int, parts: Int = BLAS.threads) throws -> Tensor {
        let hidden = router.shape[1]
        let out = try Tensor.zeros([rows, hidden], on: x.device)
        for first in stride(from: 0, to: rows, by: Self.tokenBlock) {
            try forwardBlock(x.data + first * hidden, rows: min(Self.tokenBlock, rows - first), parts: parts, on: x.device,
                             into: out.data + first * hidden)
        }
        return out
    }

    /// out[rows, hidden] += the block's expert outputs (out holds zeros on entry).
    func forwardBlock(_ x: UnsafePointer<Float>, rows: Int, parts: Int, on device: Device,
                      into out: UnsafeMutablePointer<Float>) throws {
        let hidden = router.shape[1]
        let size = experts.first?.gateProj.outFeatures ?? 0
        let (chosen, weights) = try route(x, rows: rows, on: device)
        // Sort the pairs by expert (a counting sort keeps tokens ascending within an expert).
        let pairs = rows * topK
        var first = [Int](repeating: 0, count: experts.count + 1)
        for e in chosen { first[Int(e) + 1] += 1 }
        for e in 0..<experts.count { first[e + 1] += first[e] }
        var next = first
        var position = [Int](repeating: 0, count: pairs)  // pair (token, slot) → its row among the sorted pairs
        let gathered = try Tensor(uninitializedShape: [pairs, hidden], on: device)
        for t in 0..<rows {
            for slot in 0..<topK {
                let e = Int(chosen[t * topK + slot])
                position[t * topK + slot] = next[e]
                (gathered.data + next[e] * hidden).update(from: x + t * hidden, count: hidden)
                next[e] += 1
            }
        }
        // Each expert: gate and up of its rows, SwiGLU into gate, down into its gathered rows.
        let gate = try Tensor(uninitializedShape: [pairs, size], on: device)
        let up = try Tensor(uninitializedShape: [pairs, size], on: device)
        let groups = Parallel.balancedRanges(first, parts: parts)
        var failure: Error?
        let lock = NSLock()
        Parallel.parts(groups.count) { group in
            do {
                for e in groups[group] where first[e + 1] > first[e] {
                    let (row, count) = (first[e], first[e + 1] - first[e])
                    let expert = experts[e]
                    let input = gathered.data + row * hidden, g = gate.data + row * size, u = up.data + row * size
                    try WeightProducts.expertLinear(input, rows: count, weight: expert.gateProj.weight, into: g)
                    try WeightProducts.expertLinear(input, rows: count, weight: expert.upProj.weight, into: u)
                    Kernels.swiglu(gate: g, up: u, into: g, count: count * size)
                    try WeightProducts.expertLinear(g, rows: count, weight: expert.downProj.weight, into: gathered.data + row * hidden)
                }
            } catch {
                lock.withLock { failure = failure ?? error }
            }
        }
        if let failure { throw failure }
        // Each token: its experts' outputs, weighted, in ascending expert order.
        let tokenParts = max(1, min(parts, rows))
        Parallel.parts(tokenParts) { part in
            var slots = [Int](repeating: 0, count: topK)
            for t in Parallel.range(part, of: tokenParts, count: rows) {
                for slot in 0..<topK { slots[slot] = slot }
                slots.sort { chosen[t * topK + $0] < chosen[t * topK + $1] }
                for slot in slots {
                    Kernels.axpy(weights[t * topK + slot], gathered.data + position[t * topK + slot] * hidden,
                                 into: out + t * hidden, count: hidden)
                }
            }
        }
    }
}
