import Foundation
@testable import KDText

/// A small valid tokenizer.json in the one pipeline kd implements (NFC, the Qwen2 split,
/// byte-level BPE): the 256 byte tokens at ids 0..<256, a few merges, two added tokens.
enum SyntheticTokenizer {
    static let merges = ["a a", "aa aa", "Ġ a", "a b", "Ġa b"]

    static func root() -> [String: Any] {
        var vocab: [String: Any] = [:]
        for byte in 0..<256 { vocab[String(ByteLevel.byteToUnicode[byte])] = byte }
        for merge in merges {
            let pair = merge.split(separator: " ").map(String.init)
            vocab[pair[0] + pair[1]] = vocab.count
        }
        let next = vocab.count
        return [
            "version": "1.0",
            "added_tokens": [
                ["id": next, "content": "<|end|>", "special": true, "normalized": false],
                ["id": next + 1, "content": "<think>", "special": false, "normalized": false],
            ],
            "normalizer": ["type": "NFC"],
            "pre_tokenizer": [
                "type": "Sequence",
                "pretokenizers": [
                    ["type": "Split", "pattern": ["Regex": PreTokenizer.pattern], "behavior": "Isolated", "invert": false],
                    ["type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false],
                ],
            ],
            "decoder": ["type": "ByteLevel"],
            "model": [
                "type": "BPE", "dropout": NSNull(), "vocab": vocab, "merges": merges,
            ] as [String: Any],
        ]
    }

    /// `sorted`: the same bytes in every run (for seeded byte mutations), but slow on Linux.
    static func data(_ root: [String: Any], sorted: Bool = false) -> Data {
        (try? JSONSerialization.data(withJSONObject: root, options: sorted ? [.sortedKeys] : [])) ?? Data()
    }

    /// The tokenizer of `root` or the message it is refused with.
    static func load(_ root: [String: Any]) -> Result<Tokenizer, KDErrorBox> {
        do { return .success(try Tokenizer(json: data(root), file: "tokenizer.json")) } catch {
            return .failure(KDErrorBox(message: "\(error)"))
        }
    }

    static func message(_ root: [String: Any]) -> String {
        switch load(root) {
        case .success: return "loaded"
        case .failure(let box): return box.message
        }
    }

    static func edited(_ edit: (inout [String: Any]) -> Void) -> String {
        var root = root()
        edit(&root)
        return message(root)
    }

    static func editedModel(_ edit: (inout [String: Any]) -> Void) -> String {
        edited { root in
            var model = root["model"] as! [String: Any]
            edit(&model)
            root["model"] = model
        }
    }

    static func editedVocab(_ edit: (inout [String: Any]) -> Void) -> String {
        editedModel { model in
            var vocab = model["vocab"] as! [String: Any]
            edit(&vocab)
            model["vocab"] = vocab
        }
    }

    static func withAdded(_ list: [Any]) -> String {
        edited { $0["added_tokens"] = list }
    }

    struct KDErrorBox: Error { let message: String }
}
