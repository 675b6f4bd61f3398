import Foundation
import Testing
import KDCore
@testable import KDText

/// Thousands of seeded mutations of a valid tokenizer.json and of valid JSONL records: each
/// must load or fail with a KDError. A trap or an out-of-bounds access would kill the test
/// process, so this suite passing is the proof; the counts show both outcomes were exercised.
@Suite struct ParserMutationTests {
    static let nastyNumbers = ["-1", "-100", "0", "2147483647", "2147483648", "4294967301", "9223372036854775807",
                               "-9223372036854775808", "18446744073709551621", "1e308", "-1e400", "1e30", "0.5", "16777216"]
    static let nastyFragments = nastyNumbers + ["true", "false", "null", "\"\"", "{}", "[]", "\"\\u0000\"", "\"\\ud800\"",
                                                "\"x\"", ",", ":", "\"", "\\", "\u{FEFF}", "\n", "é\u{301}",
                                                String(repeating: "[", count: 2000), String(repeating: "{\"a\":", count: 2000),
                                                String(repeating: "[", count: 100) + String(repeating: "]", count: 100)]
    static let nastyValues: [Any] = [NSNull(), "", "x", -1, 0, Int(Int32.max) + 1, Int(Int64.max), 1e300, 0.5, true,
                                     [Any](), [String: Any](), ["a", "b"], ["id": 1]]

    struct Mutator {
        var rng: RandomGenerator

        mutating func below(_ n: Int) -> Int { n <= 0 ? 0 : Int(rng.next() % UInt64(n)) }

        /// One to three byte-level edits: bit flips, truncation, insertions of huge, negative or
        /// badly typed values and deep nesting, deletions and duplications.
        mutating func bytes(_ input: [UInt8]) -> [UInt8] {
            var bytes = input
            for _ in 0...below(3) {
                let at = below(bytes.count + 1)
                switch below(6) {
                case 0 where !bytes.isEmpty:
                    bytes[min(at, bytes.count - 1)] ^= UInt8(1) << UInt8(below(8))
                case 1:
                    bytes.removeSubrange(at...)
                case 2, 3:
                    let fragment = ParserMutationTests.nastyFragments[below(ParserMutationTests.nastyFragments.count)]
                    // Replace a number when one starts here, else insert.
                    var end = at
                    while end < bytes.count, (bytes[end] >= 0x30 && bytes[end] <= 0x39) || bytes[end] == 0x2D { end += 1 }
                    bytes.replaceSubrange(at..<end, with: Array(fragment.utf8))
                case 4:
                    bytes.removeSubrange(at..<min(bytes.count, at + 1 + below(40)))
                default:
                    let slice = Array(bytes[at..<min(bytes.count, at + below(60))])
                    bytes.insert(contentsOf: slice, at: below(bytes.count + 1))
                }
            }
            return bytes
        }

        /// Replaces one value somewhere in `value` (walking down a random path) with a value of
        /// another type, or wraps it in deep nesting.
        mutating func structure(_ value: Any, depth: Int = 0) -> Any {
            let stop = depth > 0 && below(3) == 0
            if var object = value as? [String: Any], !object.isEmpty, !stop {
                let keys = object.keys.sorted()
                let key = keys[below(keys.count)]
                object[key] = structure(object[key]!, depth: depth + 1)
                return object
            }
            if var array = value as? [Any], !array.isEmpty, !stop {
                let index = below(array.count)
                array[index] = structure(array[index], depth: depth + 1)
                return array
            }
            if below(8) == 0 {
                var nested: Any = value
                for _ in 0..<(50 + below(400)) { nested = [nested] }
                return nested
            }
            return ParserMutationTests.nastyValues[below(ParserMutationTests.nastyValues.count)]
        }
    }

    /// Structural mutations are chosen over sorted keys, so their outcome does not depend on
    /// the order in which the keys are written.
    static func json(_ value: Any) -> [UInt8]? {
        (try? JSONSerialization.data(withJSONObject: value)).map(Array.init)
    }

    @Test func mutatedTokenizerFilesLoadOrFailWithKDError() {
        let root = SyntheticTokenizer.root()
        let base = Array(SyntheticTokenizer.data(root, sorted: true))
        var mutator = Mutator(rng: RandomGenerator(seed: 2024, stream: RandomGenerator.hash("tokenizer-mutations")))
        var loaded = 0, refused = 0
        var others: [String] = []
        for trial in 0..<3000 {
            let bytes = trial % 3 == 2 ? Self.json(mutator.structure(root)) ?? base : mutator.bytes(base)
            do {
                let tokenizer = try Tokenizer(json: Data(bytes), file: "tokenizer.json")
                let ids = tokenizer.encode("aaaa ab<|end|> héllo 123\n\u{301}<think>")
                _ = try tokenizer.decode(ids + [-1, tokenizer.count, Int.max], skipSpecialTokens: true, skipUnknown: true)
                loaded += 1
            } catch let error as KDError {
                #expect(!error.message.contains("\n"), "trial \(trial): \(error.message)")
                #expect(error.message.utf8.count < 400, "trial \(trial): \(error.message)")
                refused += 1
            } catch {
                others.append("trial \(trial): \(error)")
            }
        }
        print("tokenizer mutations: \(loaded) loaded, \(refused) refused")
        #expect(others.isEmpty, "\(others.prefix(5))")
        #expect(loaded + refused == 3000)
        #expect(loaded > 50 && refused > 1000)
    }

    @Test func mutatedJSONLRecordsParseOrFailWithKDError() throws {
        let tokenizer = try SyntheticTokenizer.load(SyntheticTokenizer.root()).get()
        let lines = [
            #"{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "<think>\nhm\n</think>\n\nHello", "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]}, {"role": "tool", "content": "ok"}]}"#,
            #"{"prompt": "Hi", "response": "Hello"}"#,
            #"{"instruction": "Fix", "input": "x = 1", "output": "ok"}"#,
            #"{"question": "What is 6 times 7?", "answer": "It is 42.\n#### 42"}"#,
            #"{"task_id": "t", "prompt": "def f():", "canonical_solution": "  return 1", "test": "", "entry_point": "f"}"#,
            #"{"input_ids": [1, 2, 3, 4], "labels": [-100, -100, 3, 4]}"#,
        ]
        let formats = DataFormat.allCases.filter { $0 != .auto }
        var mutator = Mutator(rng: RandomGenerator(seed: 2024, stream: RandomGenerator.hash("jsonl-mutations")))
        var parsed = 0, refused = 0, examples = 0
        var others: [String] = []
        for trial in 0..<6000 {
            let line = lines[trial % lines.count]
            let bytes: [UInt8]
            if trial % 3 == 2, let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) {
                bytes = Self.json(mutator.structure(object)) ?? Array(line.utf8)
            } else {
                bytes = mutator.bytes(Array(line.utf8))
            }
            do {
                let file = try JSONLines(data: Data(bytes), name: "data.jsonl")
                parsed += 1
                for record in file.records {
                    let detected = Dataset.detect(record.object)
                    for format in formats where format == detected || trial % 7 == 0 {
                        do {
                            let example = try Dataset.example(record, format: format, tokenizer: tokenizer, options: DatasetOptions())
                            #expect(example.inputIDs.count == example.labels.count)
                            examples += 1
                        } catch let error as KDError {
                            #expect(!error.message.contains("\n"), "trial \(trial): \(error.message)")
                        }
                    }
                }
            } catch let error as KDError {
                #expect(!error.message.contains("\n") && error.message.utf8.count < 400, "trial \(trial): \(error.message)")
                refused += 1
            } catch {
                others.append("trial \(trial): \(error)")
            }
        }
        print("JSONL mutations: \(parsed) parsed (\(examples) examples), \(refused) refused")
        #expect(others.isEmpty, "\(others.prefix(5))")
        #expect(parsed + refused == 6000)
        #expect(examples > 500 && refused > 1000)
    }
}
