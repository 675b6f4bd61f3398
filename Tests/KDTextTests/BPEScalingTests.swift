import Foundation
import Testing
import KDCore
@testable import KDText

/// BPE on one long pre-tokenized piece is O(n log n) and gives exactly the ids of merging the
/// leftmost lowest-rank pair, one merge at a time.
@Suite struct BPEScalingTests {
    /// The definition: scan for the lowest rank (leftmost on ties), merge, repeat. O(n²).
    static func referenceMerge(_ tokenizer: Tokenizer, _ initial: [Int32]) -> [Int32] {
        var symbols = initial
        while symbols.count > 1 {
            var best: (rank: UInt64, index: Int, merged: Int32)?
            for k in 0..<(symbols.count - 1) {
                if let merge = tokenizer.merges[UInt64(UInt32(symbols[k])) << 32 | UInt64(UInt32(symbols[k + 1]))],
                   merge >> 32 < best?.rank ?? .max {
                    best = (merge >> 32, k, Int32(truncatingIfNeeded: merge & 0xFFFF_FFFF))
                }
            }
            guard let best else { break }
            symbols[best.index] = best.merged
            symbols.remove(at: best.index + 1)
        }
        return symbols
    }

    @Test func mergesEqualTheDefinitionOnRandomPieces() {
        let tokenizer = TextFixtures.qwen3
        // Small alphabets make long merge chains and many equal-rank ties ("aaaa", "ababab").
        let alphabets: [[UInt8]] = [Array("a".utf8), Array("ab".utf8), Array("ab ".utf8), Array("etaoin s".utf8),
                                    Array("\u{301}e".utf8), Array("0123456789".utf8)]
        var rng = RandomGenerator(seed: 7, stream: RandomGenerator.hash("bpe-pieces"))
        var compared = 0
        for alphabet in alphabets {
            for _ in 0..<60 {
                let length = 2 + Int(rng.next() % 300)
                let bytes = (0..<length).map { _ in alphabet[Int(rng.next() % UInt64(alphabet.count))] }
                let initial = bytes.map { tokenizer.byteIDs[Int($0)] }
                #expect(tokenizer.merge(initial) == Self.referenceMerge(tokenizer, initial), "\(bytes)")
                compared += 1
            }
        }
        #expect(compared == 360)
    }

    /// Seconds to encode `text` once.
    static func seconds(_ text: String, _ tokenizer: Tokenizer) -> (Double, [Int]) {
        let start = DispatchTime.now().uptimeNanoseconds
        let ids = tokenizer.encode(text)
        return (Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9, ids)
    }

    // The bound is 5 s on a shared 2-core machine for work that takes well under a tenth of that
    // in release; the quadratic merge loop took 227 s for 80 KB of 'a' and 186 s for 40k marks.
    @Test func longRunsEncodeInNearLinearTime() throws {
        let tokenizer = TextFixtures.qwen3
        let (aTime, aIDs) = Self.seconds(String(repeating: "a", count: 100_000), tokenizer)
        #expect(aTime < 5, "100 KB of 'a': \(aTime) s")
        #expect(try tokenizer.decode(aIDs) == String(repeating: "a", count: 100_000))

        let marks = String(repeating: "\u{301}", count: 40_000)
        let (mTime, mIDs) = Self.seconds(marks, tokenizer)
        #expect(mTime < 5, "40k U+0301: \(mTime) s")
        #expect(try tokenizer.decode(mIDs) == marks)

        // Mixed combining classes after a base letter: NFC must reorder them, in sorted order.
        let mixed = "e" + String(repeating: "\u{301}\u{316}", count: 20_000)
        let (xTime, _) = Self.seconds(mixed, tokenizer)
        #expect(xTime < 5, "40k mixed marks: \(xTime) s")

        let spaces = "x" + String(repeating: " ", count: 100_000) + "\n" + String(repeating: " \n", count: 50_000) + "y"
        let (sTime, _) = Self.seconds(spaces, tokenizer)
        #expect(sTime < 5, "whitespace runs: \(sTime) s")

        let nearAdded = String(repeating: "<|im_start", count: 10_000)
        let (nTime, nIDs) = Self.seconds(nearAdded, tokenizer)
        #expect(nTime < 5, "near-miss added tokens: \(nTime) s")
        #expect(try tokenizer.decode(nIDs) == nearAdded)
    }

    @Test func theCacheStaysBoundedOnAdversarialInput() {
        let tokenizer = try! SyntheticTokenizer.load(SyntheticTokenizer.root()).get()
        // 100k distinct short words, then long words that are never memoised.
        var words: [String] = []
        for k in 0..<100_000 { words.append(" w" + String(k, radix: 36)) }
        _ = tokenizer.encode(words.joined())
        #expect(tokenizer.cacheCount <= Tokenizer.cacheCapacity)
        #expect(tokenizer.cacheCount > 0)
        let before = tokenizer.cacheCount
        _ = tokenizer.encode(" " + String(repeating: "q", count: Tokenizer.cachedPieceBytes + 1))
        #expect(tokenizer.cacheCount == before)
    }
}

/// Records with long runs of combining marks out of canonical order, where String comparison
/// and hashing normalise (quadratically in the run): the data path stays fast.
@Suite struct MarkRunRecordTests {
    @Test func aChatRecordOfMarksIsReadAndEncodedQuickly() throws {
        let marks = String(repeating: "\u{301}\u{316}", count: 20_000)
        let line = #"{"messages": [{"role": "user", "content": "\#(marks)"}, {"role": "assistant", "content": "e\#(marks)"}]}"#
        let start = DispatchTime.now().uptimeNanoseconds
        let file = try JSONLines(data: Data(line.utf8), name: "data.jsonl")
        let example = try Dataset.example(file.records[0], format: .chat, tokenizer: TextFixtures.qwen3, options: DatasetOptions())
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        #expect(seconds < 5, "\(seconds) s")
        #expect(example.inputIDs.count > 100)

        let role = #"{"messages": [{"role": "\#(marks)", "content": "x"}]}"#
        let roleStart = DispatchTime.now().uptimeNanoseconds
        let roleFile = try JSONLines(data: Data(role.utf8), name: "data.jsonl")
        #expect(throws: KDError.self) {
            try Dataset.example(roleFile.records[0], format: .chat, tokenizer: TextFixtures.qwen3, options: DatasetOptions())
        }
        let roleSeconds = Double(DispatchTime.now().uptimeNanoseconds - roleStart) / 1e9
        #expect(roleSeconds < 5, "\(roleSeconds) s")
    }

    @Test func keysWithLongRunsOfMarksAreRefusedBeforeParsing() throws {
        func message(_ line: String) -> String {
            do { _ = try JSONLines(data: Data(line.utf8), name: "data.jsonl"); return "parsed" } catch { return "\(error)" }
        }
        let escaped = String(repeating: "\\u0301\\u0316", count: 20_000)
        let literal = String(repeating: "\u{301}\u{316}", count: 20_000)
        let supplementary = String(repeating: "\\ud834\\udd65", count: 2_000)  // U+1D165, a combining mark
        let start = DispatchTime.now().uptimeNanoseconds
        #expect(message("{\"\(escaped)\": 1}") == "data.jsonl:1: an object key has 40000 combining marks in a row (at most 1024)")
        #expect(message("{\"a\": {\"x\(literal)\" : 1}}") == "data.jsonl:1: an object key has 40000 combining marks in a row (at most 1024)")
        #expect(message("{\"\(supplementary)\": 1}") == "data.jsonl:1: an object key has 2000 combining marks in a row (at most 1024)")
        // In values they are fine, and so are keys up to the limit.
        #expect(message("{\"a\": \"\(escaped)\", \"b\": [\"\(literal)\"]}") == "parsed")
        #expect(message("{\"\(String(repeating: "\u{301}", count: 1024))\": 1}") == "parsed")
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        #expect(seconds < 5, "\(seconds) s")
        var root = SyntheticTokenizer.root()
        root["x" + literal] = 1
        #expect(SyntheticTokenizer.message(root) == "tokenizer.json: an object key has 40000 combining marks in a row (at most 1024)")
    }

    @Test func normalisationIsUnicodeNFC() {
        func scalars(_ text: String) -> [Unicode.Scalar] { Array(text.unicodeScalars) }
        // Where Foundation's NFC is right, and short enough for its quadratic reordering.
        for text in ["e" + String(repeating: "\u{301}\u{316}", count: 100),
                     "\u{1E09}" + String(repeating: "\u{316}", count: 50) + String(repeating: "\u{301}", count: 50),
                     "a" + String(repeating: "\u{301}", count: 40) + "\u{327}b\u{30A}\u{323}\u{212B}\u{344}",
                     "\u{1100}\u{1161}\u{11A8} caf\u{E9} \u{5D0}\u{5B0}\u{5B9}\u{5C1}\u{5BC} \u{FB2C}"] {
            #expect(Normalization.nfc(scalars(text)) == Normalization.foundationNFC(scalars(text)))
        }
        // Two corners where Foundation is wrong (checked against Python's unicodedata, Unicode 14):
        // LV + T composes, and the Tibetan signs' decompositions are put in canonical order.
        #expect(Normalization.nfc(scalars("\u{AC00}\u{11A8}")) == scalars("\u{AC01}"))
        #expect(Normalization.nfc(scalars(String(repeating: "\u{F73}\u{F71}\u{F75}\u{F81}", count: 3) + "\u{344}\u{340}"))
            == scalars(String(repeating: "\u{F71}", count: 12) + String(repeating: "\u{F72}\u{F80}", count: 3)
                + String(repeating: "\u{F74}", count: 3) + "\u{308}\u{301}\u{300}"))
    }
}
