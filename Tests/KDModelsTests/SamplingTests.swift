import Foundation
import Testing
import KDCore
@testable import KDModels

@Suite struct SamplingTests {
    // Probabilities at temperature 1: softmax of these logits.
    static let logits: [Float] = [2.0, 1.0, 0.5, 3.0, -1.0, 1.0]

    func candidates(_ sampling: Sampling) -> [(id: Int, probability: Float)] {
        Self.logits.withUnsafeBufferPointer { sampling.candidates($0.baseAddress!, count: $0.count) }
    }

    @Test func greedyTakesTheFirstLargest() {
        let tied: [Float] = [0, 5, 5, 1]
        #expect(tied.withUnsafeBufferPointer { Sampling.argmax($0.baseAddress!, count: 4) } == 1)
        var rng = RandomGenerator(seed: 1)
        #expect(Self.logits.withUnsafeBufferPointer { Sampling().next($0.baseAddress!, count: 6, rng: &rng) } == 3)
    }

    @Test func topKKeepsTheKLargestAndTies() {
        let kept = candidates(Sampling(temperature: 1, topK: 2))
        #expect(kept.map(\.id) == [3, 0])
        let e3 = exp(Float(3)), e2 = exp(Float(2))
        #expect(abs(kept[0].probability - e3 / (e3 + e2)) < 1e-6)
        // The 3rd largest logit (1.0) is shared by ids 1 and 5: both stay, as torch's top-k warper keeps ties.
        #expect(Set(candidates(Sampling(temperature: 1, topK: 3)).map(\.id)) == [3, 0, 1, 5])
    }

    @Test func topPKeepsTheSmallestSetReachingP() {
        let all = candidates(Sampling(temperature: 1))
        #expect(all.map(\.id).prefix(2) == [3, 0])
        // p(3) ≈ 0.61, p(0) ≈ 0.22: 0.5 needs only the first; 0.7 needs two; 0.9 needs four (ties broken by id).
        #expect(candidates(Sampling(temperature: 1, topP: 0.5)).map(\.id) == [3])
        #expect(candidates(Sampling(temperature: 1, topP: 0.7)).map(\.id) == [3, 0])
        #expect(candidates(Sampling(temperature: 1, topP: 0.9)).map(\.id) == [3, 0, 1, 5])
        let kept = candidates(Sampling(temperature: 1, topP: 0.7))
        #expect(abs(kept.reduce(0) { $0 + $1.probability } - 1) < 1e-6)
    }

    @Test func temperatureSharpensAndSeedsRepeat() {
        let hot = candidates(Sampling(temperature: 2)), cold = candidates(Sampling(temperature: 0.5))
        #expect(cold[0].probability > hot[0].probability)
        func draws(_ seed: UInt64) -> [Int] {
            var rng = RandomGenerator(seed: seed)
            return (0..<50).map { _ in
                Self.logits.withUnsafeBufferPointer { Sampling(temperature: 1, seed: seed).next($0.baseAddress!, count: 6, rng: &rng) }
            }
        }
        #expect(draws(7) == draws(7))
        #expect(draws(7) != draws(8))
        #expect(Set(draws(7)).count > 2)
    }

    @Test func settingsAreValidated() {
        #expect(throws: KDError("--top-p must be in (0, 1]")) { try Sampling(temperature: 1, topP: 1.5).validate() }
        #expect(throws: KDError("--top-k must be at least 1")) { try Sampling(temperature: 1, topK: 0).validate() }
        #expect(throws: KDError("--temperature must be 0 (greedy) or positive")) { try Sampling(temperature: -1).validate() }
    }
}

@Suite struct SamplingDrawTests {
    @Test func drawsStayInTheTopKAndFollowTheProbabilities() {
        let logits: [Float] = [2.0, 1.0, 0.5, 3.0, -1.0, 1.0]
        var rng = RandomGenerator(seed: 3)
        var counts = [Int](repeating: 0, count: 6)
        for _ in 0..<4000 {
            counts[logits.withUnsafeBufferPointer { Sampling(temperature: 1, topK: 2).next($0.baseAddress!, count: 6, rng: &rng) }] += 1
        }
        #expect(counts[1] + counts[2] + counts[4] + counts[5] == 0)
        let expected = exp(Float(3)) / (exp(Float(3)) + exp(Float(2)))
        #expect(abs(Float(counts[3]) / 4000 - expected) < 0.03)
    }
}
