import Foundation
import KDCore

/// How the next token is chosen from logits, as transformers' generate does it: temperature
/// (0 = greedy), then top-k, then top-p (nucleus), then a draw from the renormalised rest.
public struct Sampling: Sendable, Equatable {
    public var temperature: Float
    public var topK: Int?
    public var topP: Float?
    public var seed: UInt64

    public init(temperature: Float = 0, topK: Int? = nil, topP: Float? = nil, seed: UInt64 = 0) {
        self.temperature = temperature
        self.topK = topK
        self.topP = topP
        self.seed = seed
    }

    public func validate() throws {
        guard temperature >= 0, temperature.isFinite else { throw KDError("--temperature must be 0 (greedy) or positive") }
        if let topK, topK < 1 { throw KDError("--top-k must be at least 1") }
        if let topP, !(topP > 0 && topP <= 1) { throw KDError("--top-p must be in (0, 1]") }
    }

    public var isGreedy: Bool { temperature == 0 }

    /// The first index of the largest logit (torch.argmax's tie-break).
    public static func argmax(_ logits: UnsafePointer<Float>, count: Int) -> Int {
        var best = 0
        for i in 1..<count where logits[i] > logits[best] { best = i }
        return best
    }

    /// The candidate tokens and their probabilities after temperature, top-k and top-p, most
    /// probable first (probabilities renormalised to sum to 1).
    public func candidates(_ logits: UnsafePointer<Float>, count: Int) -> [(id: Int, probability: Float)] {
        let inverseT = 1 / temperature
        var maximum = -Float.infinity
        for i in 0..<count { maximum = max(maximum, logits[i]) }
        let threshold = topKThreshold(logits, count: count)
        var probabilities = [Float](repeating: 0, count: count)
        var total: Float = 0
        for i in 0..<count where logits[i] >= threshold {
            let p = Kernels.exp((logits[i] - maximum) * inverseT)
            probabilities[i] = p
            total += p
        }
        var kept: [(id: Int, probability: Float)]
        if let topP, topP < 1 {
            // Only tokens at least as likely as some τ can be in the nucleus once those above τ
            // already hold top_p of the mass; lower τ until they do, then sort just those.
            let pMax = (probabilities.max() ?? 0) / total
            var tau = pMax * 1e-3
            while true {
                let mass = probabilities.reduce(0) { $0 + ($1 / total >= tau ? $1 : 0) } / total
                if mass >= topP || tau < 1e-30 { break }
                tau *= 1e-3
            }
            let limit = tau < 1e-30 ? 0 : tau
            kept = probabilities.indices.compactMap { probabilities[$0] / total >= limit && probabilities[$0] > 0
                ? ($0, probabilities[$0] / total) : nil }
            kept.sort { $0.probability > $1.probability || ($0.probability == $1.probability && $0.id < $1.id) }
            var cumulative: Float = 0
            var end = 0
            while end < kept.count {
                cumulative += kept[end].probability
                end += 1
                if cumulative >= topP { break }
            }
            kept = Array(kept.prefix(max(1, end)))
        } else {
            kept = probabilities.indices.compactMap { probabilities[$0] > 0 ? ($0, probabilities[$0] / total) : nil }
            kept.sort { $0.probability > $1.probability || ($0.probability == $1.probability && $0.id < $1.id) }
        }
        let mass = kept.reduce(0) { $0 + $1.probability }
        return kept.map { ($0.id, $0.probability / mass) }
    }

    /// Top-k: the k-th largest logit, kept in a min-heap of k (ties at it are all kept, as
    /// torch's warper does); -inf without top-k.
    func topKThreshold(_ logits: UnsafePointer<Float>, count: Int) -> Float {
        guard let topK, topK < count else { return -.infinity }
        var heap = Array(UnsafeBufferPointer(start: logits, count: topK))
        func siftDown(_ start: Int) {
            var i = start
            while true {
                let l = 2 * i + 1, r = l + 1
                var smallest = i
                if l < heap.count && heap[l] < heap[smallest] { smallest = l }
                if r < heap.count && heap[r] < heap[smallest] { smallest = r }
                if smallest == i { return }
                heap.swapAt(i, smallest)
                i = smallest
            }
        }
        for i in stride(from: heap.count / 2 - 1, through: 0, by: -1) { siftDown(i) }
        for i in topK..<count where logits[i] > heap[0] {
            heap[0] = logits[i]
            siftDown(0)
        }
        return heap[0]
    }

    /// The next token for one row.
    public func next(_ logits: UnsafePointer<Float>, count: Int, rng: inout RandomGenerator) -> Int {
        if isGreedy { return Sampling.argmax(logits, count: count) }
        let u = rng.nextUniform()
        if topP == nil || topP! >= 1 {
            // No nucleus to find: draw over the tokens in id order, without sorting.
            let threshold = topKThreshold(logits, count: count)
            var maximum = -Float.infinity
            for i in 0..<count { maximum = max(maximum, logits[i]) }
            let inverseT = 1 / temperature
            var total: Float = 0
            for i in 0..<count where logits[i] >= threshold { total += Kernels.exp((logits[i] - maximum) * inverseT) }
            var remaining = u * total
            var last = 0
            for i in 0..<count where logits[i] >= threshold {
                remaining -= Kernels.exp((logits[i] - maximum) * inverseT)
                last = i
                if remaining < 0 { return i }
            }
            return last
        }
        let kept = candidates(logits, count: count)
        var remaining = u
        for candidate in kept {
            remaining -= candidate.probability
            if remaining < 0 { return candidate.id }
        }
        return kept.last!.id
    }
}
