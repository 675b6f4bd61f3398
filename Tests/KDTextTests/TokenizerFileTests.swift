import Foundation
import Testing
import KDCore
@testable import KDText

/// tokenizer.json is untrusted input: every value is type-checked and every id bounded before
/// it sizes or indexes a table, and each fault ends in one line naming the file.
@Suite struct TokenizerFileTests {
    typealias T = SyntheticTokenizer

    @Test func theSyntheticTokenizerLoadsAndEncodes() throws {
        let tokenizer = try T.load(T.root()).get()
        #expect(tokenizer.count == 263)
        // Merges: aa 256, aaaa 257, Ġa 258, ab 259, Ġab 260; " ab" merges Ġ a first (lower rank).
        #expect(tokenizer.encode("aaaa ab<|end|>") == [257, 260, 261])
        #expect(try tokenizer.decode([257, 260, 261, 262]) == "aaaa ab<|end|><think>")
        #expect(tokenizer.isSpecial(261) && !tokenizer.isSpecial(262))
    }

    @Test func idsOutsideTheBoundAreRefusedNotWritten() {
        // Each used to write out of bounds (negative ids of added tokens, Int64.max) or to size
        // a table from the id (2e9: 15.7 GB).
        for bad in [-1, Int(Int64.max), 2_000_000_000, 1 << 24] as [Int] {
            #expect(T.editedVocab({ $0["zz"] = bad })
                == "tokenizer.json: model.vocab['zz']: id \(bad) is outside 0..<16777216")
            #expect(T.withAdded([["id": bad, "content": "<x>"]])
                == "tokenizer.json: added_tokens[0] ('<x>'): id \(bad) is outside 0..<16777216")
        }
        #expect(T.withAdded([["id": 1e30, "content": "<x>"]])
            == "tokenizer.json: added_tokens[0] ('<x>'): id 1e+30 is outside 0..<16777216")
    }

    @Test func sparseIdTablesAreRefusedByTheHoleRule() {
        // 261 vocabulary tokens and one added token listed: ids below 2 × 262 + 1024 = 1548.
        #expect(T.withAdded([["id": 1547, "content": "<far>"]]) == "loaded")
        #expect(T.withAdded([["id": 1548, "content": "<far>"]])
            == "tokenizer.json: id 1548 is far beyond the 262 tokens listed (kd accepts ids below 2 × tokens + 1024)")
    }

    @Test func holesDecodeToNothingAsTokenizersDoes() throws {
        let tokenizer = try T.load({ var root = T.root(); root["added_tokens"] = [["id": 300, "content": "<x>"]]; return root }()).get()
        #expect(tokenizer.count == 301)
        #expect(try tokenizer.decode([280, 300]) == "<x>")
        #expect(tokenizer.encode("<x>") == [300])
    }

    @Test func settingsThatWouldChangeTheIdsAreRefused() {
        let file = "tokenizer.json: "
        #expect(T.editedModel({ $0["ignore_merges"] = true }) == file + "model.ignore_merges true is not supported")
        #expect(T.editedModel({ $0["ignore_merges"] = false }) == "loaded")
        #expect(T.editedModel({ $0["byte_fallback"] = "no" }) == file + "model.byte_fallback must be true or false")
        #expect(T.editedModel({ $0["continuing_subword_prefix"] = "##" })
            == file + "model.continuing_subword_prefix is not supported (kd implements byte-level BPE without one)")
        #expect(T.editedModel({ $0["end_of_word_suffix"] = "" }) == "loaded")
        #expect(T.withAdded([["id": 300, "content": "<x>", "lstrip": true]]) == file + "added_tokens[0]: lstrip true is not supported")
        #expect(T.withAdded([["id": 300, "content": "<x>", "single_word": 1]]) == file + "added_tokens[0]: \"single_word\" must be true or false")
        #expect(T.withAdded([["id": 300, "content": "<x>", "rstrip": false]]) == "loaded")
    }

    @Test func duplicateIdsAreRefused() {
        #expect(T.editedVocab({ $0["zz"] = 5 }).hasPrefix("tokenizer.json: model.vocab: tokens "))
        #expect(T.editedVocab({ $0["zz"] = 5 }).hasSuffix(" both have id 5"))
        #expect(T.withAdded([["id": 300, "content": "<x>"], ["id": 300, "content": "<y>"]])
            == "tokenizer.json: added_tokens[0] and added_tokens[1] both have id 300")
    }

    @Test func everyValueIsTypeChecked() {
        let file = "tokenizer.json: "
        #expect(T.edited { $0["model"] = "BPE" } == file + "\"model\" must be a JSON object (kd reads byte-level BPE tokenizers)")
        #expect(T.edited { $0["model"] = nil } == file + "\"model\" must be a JSON object (kd reads byte-level BPE tokenizers)")
        #expect(T.editedModel({ $0["type"] = "WordPiece" }) == file + "model.type 'WordPiece' is not BPE (kd reads byte-level BPE tokenizers)")
        #expect(T.editedModel({ $0["type"] = 3 }) == file + "model.type (not a string) is not BPE (kd reads byte-level BPE tokenizers)")
        #expect(T.editedModel({ $0["vocab"] = ["a", "b"] }) == file + "model.vocab must be a JSON object of token to id")
        #expect(T.editedModel({ $0["merges"] = "a b" }) == file + "model.merges must be a list")
        #expect(T.editedVocab({ $0["zz"] = "7" }) == file + "model.vocab['zz']: the id must be an integer")
        #expect(T.editedVocab({ $0["zz"] = 7.5 }) == file + "model.vocab['zz']: the id must be an integer")
        #expect(T.editedVocab({ $0["zz"] = true }) == file + "model.vocab['zz']: the id must be an integer")
        #expect(T.editedVocab({ $0["zz"] = NSNull() }) == file + "model.vocab['zz']: the id must be an integer")
        #expect(T.edited { $0["added_tokens"] = ["id": 1] } == file + "added_tokens must be a list")
        #expect(T.withAdded([7]) == file + "added_tokens[0] must be a JSON object")
        #expect(T.withAdded([["id": 300]]) == file + "added_tokens[0]: \"content\" must be a string")
        #expect(T.withAdded([["id": 300, "content": 5]]) == file + "added_tokens[0]: \"content\" must be a string")
        #expect(T.withAdded([["content": "<x>"]]) == file + "added_tokens[0] ('<x>') has no \"id\"")
        #expect(T.withAdded([["id": "300", "content": "<x>"]]) == file + "added_tokens[0] ('<x>'): the id must be an integer")
        #expect(T.withAdded([["id": 300, "content": "<x>", "special": "yes"]])
            == file + "added_tokens[0]: \"special\" must be true or false")
        #expect(T.editedModel({ $0["merges"] = ["a a", 3] }) == file + "merge 1 must be a string or a pair of strings")
        #expect(T.editedModel({ $0["merges"] = [["a", 3]] }) == file + "merge 0 must be a string or a pair of strings")
        #expect(T.editedModel({ $0["merges"] = [["a", "a"], ["aa", "aa"]] }) == "loaded")
        #expect(T.editedModel({ $0["merges"] = ["a q"] }) == file + "merge 0 ('a q') does not join two vocabulary tokens into one")
        #expect(T.edited { $0["normalizer"] = ["type": "NFKC"] } == file + "normalizer 'NFKC' is not supported (kd implements NFC)")
        #expect(T.edited { $0["normalizer"] = NSNull() }
            == file + "no normalizer is not supported (kd implements NFC, which tokenizers would skip)")
        #expect(T.edited { $0["normalizer"] = "NFC" } == file + "normalizer must be a JSON object")
        #expect(T.edited { $0["pre_tokenizer"] = 1 }
            == file + "pre_tokenizer is not the Qwen2 byte-level split (kd implements only that one)")
        #expect(T.editedVocab({ $0["\u{0}zz"] = 300 }) == file + "vocabulary token '\\u{0}zz' is not byte-level encoded")
    }

    @Test func configValuesAreTypeChecked() throws {
        let dir = TextFixtures.temporaryDirectory()
        try T.data(T.root()).write(to: URL(fileURLWithPath: dir + "/tokenizer.json"))
        func message(_ config: [String: Any]) -> String {
            let path = dir + "/tokenizer_config.json"
            try? JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: path))
            do {
                let tokenizer = try Tokenizer.load(directory: dir)
                return "pad \(tokenizer.padID ?? -1) eos \(tokenizer.eosID ?? -1) template \(tokenizer.chatTemplate ?? "-")"
            } catch { return "\(error)".replacingOccurrences(of: dir + "/", with: "") }
        }
        #expect(message(["pad_token": "<|end|>", "eos_token": ["content": "<|end|>"], "chat_template": "t"])
            == "pad 261 eos 261 template t")
        #expect(message(["pad_token": NSNull(), "chat_template": [["name": "tool_use", "template": "u"], ["name": "default", "template": "d"]]])
            == "pad -1 eos -1 template d")
        #expect(message(["pad_token": 5]) == "tokenizer_config.json: pad_token must be a string or an object with a \"content\" string")
        #expect(message(["eos_token": ["content": 5]]) == "tokenizer_config.json: eos_token.content must be a string")
        #expect(message(["chat_template": 5]) == "tokenizer_config.json: chat_template must be a string or a list of named templates")
        #expect(message(["pad_token": String(repeating: "x", count: 500)])
            == "tokenizer_config.json: pad_token '\(String(repeating: "x", count: 120))…' (500 characters) is not an added token of tokenizer.json")
    }

    @Test func tokenizerFilesThatAreNotRegularFilesAreNamed() throws {
        let dir = TextFixtures.temporaryDirectory()
        try FileManager.default.createDirectory(atPath: dir + "/tokenizer.json", withIntermediateDirectories: true)
        #expect(throws: KDError("\(dir)/tokenizer.json: is a directory")) { try Tokenizer.load(directory: dir) }
        #expect(throws: KDError("\(dir)/none.json: no such file")) { try Tokenizer(file: dir + "/none.json") }
        #expect(throws: KDError("\(dir)/missing: no tokenizer.json (kd reads Hugging Face fast-tokenizer files)")) {
            try Tokenizer.load(directory: dir + "/missing")
        }
    }
}
