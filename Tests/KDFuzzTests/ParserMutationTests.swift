import Foundation
import Testing
import KDCore
import KDFuzzSupport

/// Every parser of a file a user hands kd, run on thousands of deterministic mutants of its seeds
/// (the committed fixtures and Tests/Fixtures/fuzz-corpus): each call must return or throw. A trap
/// ends the test process, so reaching the end is the assertion; the input that was running is
/// then in the file the test prints first (`kd-fuzz TARGET FILE` replays it).
///
/// Mutants per target (`mutants`) and their time in a release build on 2 shared cores: safetensors
/// 3000 in ~1.4 s, config 3000 in ~0.5 s, run-yaml 3000 in ~1.7 s (Yams), jsonl 2000 in ~2 s plus
/// ~1 s to load the Qwen3 tokenizer once (each mutant also builds two datasets), tokenizer 3000 in
/// ~3 s, peft 3000 in ~4 s, trainer-state 3000 in ~0.5 s, hostfile 3000 in ~0.6 s. Before the parsers were hardened,
/// safetensors, config, tokenizer and peft trapped here (a header length >= 2^63, a
/// num_hidden_layers of 2^32 or Int.max, vocabulary ids of 2^32-1 or Int.max). The mutator's
/// large inserts stop at 4 KiB so a mutant parses in milliseconds. Scripts/fuzz.sh runs the
/// same targets under libFuzzer for longer.
@Suite(.serialized) struct ParserMutationTests {
    static func mutants(_ target: FuzzTarget) -> Int { target == .jsonl ? 2000 : 3000 }

    static func run(_ target: FuzzTarget, seed: UInt64 = 0x6B64_2D66_757A_7A00) -> MutationRun.Summary {
        let seeds = FuzzSeeds.seeds(for: target, small: true)
        let run = MutationRun(target: target, seeds: seeds)
        // On stderr, unbuffered: it must be out before a crash.
        FileHandle.standardError.write(Data(
            "\(target.rawValue): \(seeds.count) seeds; each mutant is written to \(run.lastInputPath) before it runs\n".utf8))
        let summary = run.run(mutants: mutants(target), seed: seed)
        print(summary)
        return summary
    }

    /// The seeds are inputs kd accepts, so a run that rejects everything is not testing the parser.
    static func check(_ summary: MutationRun.Summary, seeds: Int) {
        #expect(seeds > 0)
        #expect(summary.mutants == seeds + mutants(summary.target))
        #expect(summary.accepted >= seeds, "the seeds themselves parse")
        #expect(summary.rejected > 0, "mutants reach the error paths")
    }

    /// Every target: the safetensors header, model config.json, run YAML with overrides, JSONL
    /// records and datasets, tokenizer.json, PEFT adapters, trainer_state.json and Open MPI hostfiles.
    @Test(arguments: FuzzTarget.allCases)
    func mutantsReturnOrThrow(_ target: FuzzTarget) {
        if target == .jsonl { #expect(FuzzEnvironment.qwen3 != nil, "the Qwen3 tokenizer in Configs/tokenizer/qwen3 loads") }
        let seeds = FuzzSeeds.seeds(for: target, small: true).count
        ParserMutationTests.check(ParserMutationTests.run(target), seeds: seeds)
    }
}

@Suite struct MutatorTests {
    /// A failure found by the mutation tests reproduces: the same seed gives the same mutants.
    @Test func sameSeedSameMutants() {
        let seeds = FuzzSeeds.seeds(for: .config, small: true)
        func mutants(_ seed: UInt64) -> [[UInt8]] {
            var mutator = Mutator(seed: seed, corpus: seeds)
            return (0..<200).map { mutator.mutate(seeds[$0 % seeds.count], corpus: seeds) }
        }
        #expect(mutants(7) == mutants(7))
        #expect(mutants(7) != mutants(8))
        #expect(Set(mutants(7)).count > 150, "mutants are varied")
    }

    /// Each part of a multi-part input (an adapter's config, weights and model config) survives the
    /// split and join, and a mutant edits the parts rather than the separators most of the time.
    @Test func partsRoundTrip() {
        let parts: [[UInt8]] = [Array("{\"r\": 4}".utf8), [0, 1, 2, 0x0A], Array("x".utf8)]
        #expect(FuzzParts.split(FuzzParts.join(parts)) == parts)
        var mutator = Mutator(seed: 1)
        let kept = (0..<100).filter { _ in FuzzParts.split(mutator.mutate(FuzzParts.join(parts), corpus: [])).count == 3 }
        #expect(kept.count > 80)
    }
}
