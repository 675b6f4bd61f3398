import Foundation
import Testing
@testable import KDText

/// Ids against the Hugging Face `tokenizers` library on HumanEval and stress strings.
@Suite struct TokenizerParityTests {
    @Test func idsEqualTokenizersOnTheWholeCorpus() throws {
        let tokenizer = TextFixtures.qwen3
        var mismatches: [String] = []
        var tokens = 0
        let records = try TextFixtures.jsonLines("expected.jsonl")
        for record in records {
            let text = record["text"] as! String
            let expected = record["ids"] as! [Int]
            tokens += expected.count
            let ids = tokenizer.encode(text)
            if ids != expected { mismatches.append(String(text.prefix(60))) }
            #expect(try tokenizer.decode(ids) == text.precomposedStringWithCanonicalMapping)
        }
        print("tokenizer parity: \(records.count) texts, \(tokens) tokens, \(mismatches.count) mismatches")
        #expect(records.count == 526)
        #expect(mismatches.isEmpty, "\(mismatches)")
    }

    @Test func preTokenizerPiecesOnHandCheckedCases() {
        func pieces(_ text: String) -> [String] {
            let scalars = Array(text.unicodeScalars)
            let classes = scalars.map(PreTokenizer.classOf)
            var out: [String] = []
            scalars.withUnsafeBufferPointer { s in
                classes.withUnsafeBufferPointer { c in
                    PreTokenizer.split(s, classes: c) { range in
                        var view = String.UnicodeScalarView()
                        view.append(contentsOf: scalars[range])
                        out.append(String(view))
                    }
                }
            }
            return out
        }
        #expect(pieces("Hello world") == ["Hello", " world"])
        #expect(pieces("I'm here's") == ["I", "'m", " here", "'s"])
        #expect(pieces("a   b") == ["a", "  ", " b"])
        #expect(pieces("x\n\n  y") == ["x", "\n\n", " ", " y"])
        #expect(pieces("x  \n  ") == ["x", "  \n", "  "])
        #expect(pieces("123") == ["1", "2", "3"])
        #expect(pieces(" (a)") == [" (", "a", ")"])
        #expect(pieces("\tfoo") == ["\tfoo"])
        #expect(pieces("end.\n") == ["end", ".\n"])
    }

    @Test func addedTokensAndDecoding() throws {
        let tokenizer = TextFixtures.qwen3
        #expect(tokenizer.count == 151_669)
        let ids = tokenizer.encode("<|im_start|>user\nhi<|im_end|>")
        #expect(ids.first == 151_644 && ids.last == 151_645)
        #expect(try tokenizer.decode(ids, skipSpecialTokens: true) == "user\nhi")
        #expect(tokenizer.id(of: "<think>") == 151_667)
        #expect(!tokenizer.isSpecial(151_667) && tokenizer.isSpecial(151_643))
        #expect(throws: Error.self) { try tokenizer.decode([151_700]) }
    }
}
