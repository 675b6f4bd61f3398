import Foundation
import Testing
import KDCore
@testable import KDText

@Suite struct DatasetTests {
    static let tokenizer = TextFixtures.qwen3
    static let ignored = [Int](repeating: -100, count: 20)

    static func dataset(_ lines: [String], _ options: DatasetOptions = DatasetOptions()) throws -> Dataset {
        let dir = TextFixtures.temporaryDirectory()
        let path = dir + "/data.jsonl"
        try Data(lines.joined(separator: "\n").utf8).write(to: URL(fileURLWithPath: path))
        return try Dataset(path: path, tokenizer: tokenizer, options: options)
    }

    static func message(_ lines: [String], _ options: DatasetOptions = DatasetOptions()) -> String {
        do {
            _ = try dataset(lines, options)
            return "no error"
        } catch {
            return ((error as? KDError)?.message ?? "\(error)").components(separatedBy: "data.jsonl").last!
        }
    }

    // Hand-checked ids (Qwen3 tokenizer): the user turn and assistant header, the empty think block,
    // then the completion with its <|im_end|>\n.
    static let hiPrompt = [151644, 872, 198, 13048, 151645, 198, 151644, 77091, 198]
    static let emptyThink = [151667, 271, 151668, 271]
    static let helloCompletion = [9707, 151645, 198]

    @Test func promptResponseMasksThePrompt() throws {
        let data = try Self.dataset([#"{"prompt": "Hi", "response": "Hello"}"#])
        #expect(data.format == .prompt_response)
        let example = data.examples[0]
        #expect(example.inputIDs == Self.hiPrompt + Self.emptyThink + Self.helloCompletion)
        #expect(example.labels == Array(Self.ignored.prefix(13)) + Self.helloCompletion)
        #expect(example.scoredTokens == 3)

        let onPrompt = try Self.dataset([#"{"prompt": "Hi", "response": "Hello"}"#], DatasetOptions(trainOnPrompt: true))
        #expect(onPrompt.examples[0].labels == onPrompt.examples[0].inputIDs)
    }

    @Test func alpacaAndGSM8KAndHumanEvalAndChat() throws {
        let alpaca = try Self.dataset([#"{"instruction": "Fix", "input": "x = 1", "output": "ok"}"#])
        #expect(alpaca.examples[0].inputIDs
            == [151644, 872, 198, 25958, 271, 87, 284, 220, 16, 151645, 198, 151644, 77091, 198] + Self.emptyThink + [562, 151645, 198])

        let gsm = try Self.dataset([#"{"question": "What is 6 times 7?", "answer": "It is 42.\n#### 42"}"#])
        #expect(gsm.format == .gsm8k)
        let completion = [2132, 374, 220, 19, 17, 624, 820, 220, 19, 17, 151645, 198]
        #expect(gsm.examples[0].inputIDs.suffix(12) == ArraySlice(completion))
        #expect(gsm.examples[0].labels.filter { $0 != -100 } == completion)

        let humaneval = try Self.dataset([#"{"task_id": "t", "prompt": "Hi", "canonical_solution": "Hello", "test": "", "entry_point": "f"}"#])
        #expect(humaneval.format == .humaneval)
        #expect(humaneval.examples[0].inputIDs == Self.hiPrompt + Self.emptyThink + Self.helloCompletion)

        let chat = try Self.dataset([
            #"{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "yes", "reasoning_content": "hmm"}]}"#,
        ])
        #expect(chat.format == .chat)
        let thought = [151667, 198, 71, 3821, 198, 151668, 271, 9693, 151645, 198]
        #expect(chat.examples[0].inputIDs == Self.hiPrompt + thought)
        #expect(chat.examples[0].labels == Array(Self.ignored.prefix(9)) + thought)
    }

    @Test func tokensFormatKeepsGivenLabels() throws {
        let data = try Self.dataset([
            #"{"input_ids": [1, 2, 3, 4], "labels": [-100, -100, 3, 4]}"#,
            #"{"input_ids": [5, 6, 7]}"#,
        ])
        #expect(data.format == .tokens)
        #expect(data.examples[0].labels == [-100, -100, 3, 4])
        #expect(data.examples[1].labels == [5, 6, 7])
        let batch = PaddedBatch(data.examples, padID: 151_643)
        #expect(batch.length == 4)
        #expect(batch.inputIDs == [1, 2, 3, 4, 5, 6, 7, 151_643])
        #expect(batch.labels == [-100, -100, 3, 4, 5, 6, 7, -100])
        #expect(batch.attentionMask == [1, 1, 1, 1, 1, 1, 1, 0])
        #expect(batch.scoredTokens == 2 + 2)
    }

    @Test func truncationAndEmptyTargetsAreCounted() throws {
        let data = try Self.dataset([
            #"{"input_ids": [1, 2, 3, 4, 5, 6], "labels": [-100, 2, 3, 4, 5, 6]}"#,
            #"{"input_ids": [1, 2, 3, 4, 5, 6], "labels": [-100, -100, -100, -100, 5, 6]}"#,
            #"{"input_ids": [1, 2]}"#,
        ], DatasetOptions(maxSeqLen: 4))
        #expect(data.stats.truncated == 2)
        #expect(data.stats.droppedEmptyTarget == 1)
        #expect(data.examples.count == 2)
        #expect(data.examples[0].inputIDs == [1, 2, 3, 4])
        #expect(data.stats.scoredTokens == 3 + 1)
    }

    @Test func badRecordsNameTheLine() throws {
        #expect(Self.message([#"{"prompt": "a", "response": "b"}"#, #"{"prompt": "a"}"#]) == ":2: missing \"response\"")
        #expect(Self.message([#"{"prompt": "a", "response": "b"}"#, "{oops"]) == ":2: not valid JSON")
        #expect(Self.message([#"{"prompt": "a", "response": 3}"#]) == ":1: \"response\" must be a string")
        #expect(Self.message([#"{"messages": [{"role": "bot", "content": "x"}]}"#])
            == ":1: messages[0]: unknown role 'bot' (expected one of system, user, assistant, tool)")
        #expect(Self.message([#"{"input_ids": [1, 2], "labels": [1]}"#]) == ":1: \"labels\" has 1 entries, \"input_ids\" 2")
        #expect(Self.message([#"{"input_ids": [1, 999999]}"#])
            == ":1: \"input_ids\"[1] = 999999 is not a token id (tokenizer has 151669)")
        #expect(Self.message([#"{"text": "hello"}"#]) == ":1: cannot tell the format from the keys ['text']; set data.format")

        let skipping = try Self.dataset([
            #"{"prompt": "a", "response": "b"}"#, "{oops", #"{"prompt": "a"}"#, #"{"prompt": "c", "response": "d"}"#,
        ], DatasetOptions(onBadRecord: .skip))
        #expect(skipping.examples.count == 2)
        #expect(skipping.stats.skipped.map(\.line) == [2, 3])
    }

    @Test func samplerIsDeterministicAndResumable() {
        var a = BatchSampler(count: 10, batchSize: 3, shuffle: true, seed: 42)
        var b = BatchSampler(count: 10, batchSize: 3, shuffle: true, seed: 42)
        var batches: [[Int]] = []
        for _ in 0..<9 {
            let batch = a.next()
            #expect(batch == b.next())
            batches.append(batch)
        }
        // Each epoch is a permutation: 3 + 3 + 3 + 1.
        #expect(Set(batches[0..<4].flatMap { $0 }) == Set(0..<10))
        #expect(batches[3].count == 1)
        #expect(batches[0] != Array(0..<3) || batches[1] != Array(3..<6))
        #expect(batches[0..<4].flatMap { $0 } != batches[4..<8].flatMap { $0 })

        // A sampler restored from a saved cursor continues identically.
        var first = BatchSampler(count: 10, batchSize: 3, shuffle: true, seed: 42)
        for _ in 0..<5 { _ = first.next() }
        var restored = BatchSampler(count: 10, batchSize: 3, shuffle: true, seed: 42, cursor: first.cursor)
        for _ in 0..<6 { #expect(first.next() == restored.next()) }

        var ordered = BatchSampler(count: 5, batchSize: 2, shuffle: false, seed: 1)
        #expect([ordered.next(), ordered.next(), ordered.next(), ordered.next()] == [[0, 1], [2, 3], [4], [0, 1]])
        var otherSeed = BatchSampler(count: 10, batchSize: 10, shuffle: true, seed: 43)
        #expect(otherSeed.next() != BatchSampler.order(count: 10, shuffle: true, seed: 42, epoch: 0))
    }
}
