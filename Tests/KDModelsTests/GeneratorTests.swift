import Foundation
import Testing
import KDCore
@testable import KDModels

@Suite struct GeneratorTests {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Fixtures").path

    static func model(_ path: String) throws -> CausalLM {
        try CausalLM.load(try Checkpoint(directory: fixtures + "/" + path), on: try DeviceGroup.make(count: 1))
    }

    @Test func batchGenerationEqualsOneRowAtATimeWithPerRowStops() throws {
        let lm = try Self.model("forward/moe-8x2")
        let generator = Generator(model: lm)
        let prompts = [[3, 17, 42, 8, 99], [120, 7], [5, 5, 5]]
        let single = try prompts.map {
            try generator.generate([$0], maxNewTokens: 10, sampling: Sampling(), stop: StopCondition())[0].ids
        }
        let batched = try generator.generate(prompts, maxNewTokens: 10, sampling: Sampling(), stop: StopCondition())
        #expect(batched.map(\.ids) == single)
        // Stopping on a token one row produces early ends that row only.
        let stopID = single[1][3]
        let stopped = try generator.generate(prompts, maxNewTokens: 10, sampling: Sampling(), stop: StopCondition(tokenIDs: [stopID]))
        #expect(stopped[1].finish == .stop)
        #expect(stopped[1].ids == Array(single[1].prefix(through: single[1].firstIndex(of: stopID)!)))
        for row in [0, 2] where !single[row].contains(stopID) {
            #expect(stopped[row].ids == single[row])
            #expect(stopped[row].finish == .length)
        }
    }

    @Test func samplingIsSeeded() throws {
        // The training fixtures have moderate logits, so sampling really varies with the seed.
        let generator = Generator(model: try Self.model("train/dense-teacher/student"))
        func run(_ seed: UInt64) throws -> [Int] {
            try generator.generate([[1, 2, 3]], maxNewTokens: 16, sampling: Sampling(temperature: 1.2, topK: 40, topP: 0.95, seed: seed),
                                   stop: StopCondition())[0].ids
        }
        #expect(try run(11) == run(11))
        #expect(try run(11) != run(12))
    }
}
