import Foundation
import KDCore

/// A Hugging Face byte-level BPE tokenizer (the Qwen2/Qwen3 family): NFC normalisation, added
/// tokens matched before pre-tokenisation, the Qwen2 split, byte-level mapping, BPE merges by
/// rank, and byte-level decoding. Encodes to exactly the ids of the `tokenizers` library.
public final class Tokenizer: @unchecked Sendable {
    public struct AddedToken: Sendable {
        public let id: Int
        public let content: String
        public let special: Bool
    }

    /// Bytes of every id (added tokens: their UTF-8 content).
    let tokenBytes: [[UInt8]]
    /// The id of each single byte.
    let byteIDs: [Int32]
    /// (left id << 32 | right id) → (rank << 32 | merged id).
    let merges: [UInt64: UInt64]
    public let addedTokens: [AddedToken]
    /// Added tokens by first scalar, longest first.
    let addedByFirstScalar: [Unicode.Scalar: [(scalars: [Unicode.Scalar], id: Int32)]]
    let specialIDs: Set<Int>
    /// From tokenizer_config.json, when loaded from a directory.
    public private(set) var padID: Int?
    public private(set) var eosID: Int?
    public private(set) var chatTemplate: String?
    public private(set) var configFile = "tokenizer_config.json"
    private var cache: [[UInt8]: [Int32]] = [:]
    private let cacheLock = NSLock()

    /// `len(tokenizer)`: the ids a text can encode to.
    public var count: Int { tokenBytes.count }

    /// Loads `tokenizer.json` and `tokenizer_config.json` (pad and eos tokens, chat template) from
    /// a model or tokenizer directory.
    public static func load(directory: String) throws -> Tokenizer {
        let jsonPath = (directory as NSString).appendingPathComponent("tokenizer.json")
        guard FileManager.default.fileExists(atPath: jsonPath) else {
            throw KDError("\(directory): no tokenizer.json (kd reads Hugging Face fast-tokenizer files)")
        }
        let tokenizer = try Tokenizer(file: jsonPath)
        let configPath = (directory as NSString).appendingPathComponent("tokenizer_config.json")
        tokenizer.configFile = configPath
        if let data = FileManager.default.contents(atPath: configPath) {
            let config = try jsonObject(data, file: configPath)
            func tokenID(_ key: String) throws -> Int? {
                let value = config[key]
                let content = (value as? String) ?? ((value as? [String: Any])?["content"] as? String)
                guard let content else { return nil }
                guard let id = tokenizer.id(of: content) else {
                    throw KDError("\(configPath): \(key) '\(content)' is not an added token of tokenizer.json")
                }
                return id
            }
            tokenizer.padID = try tokenID("pad_token")
            tokenizer.eosID = try tokenID("eos_token")
            tokenizer.chatTemplate = config["chat_template"] as? String
        }
        return tokenizer
    }

    public convenience init(file path: String) throws {
        guard let data = FileManager.default.contents(atPath: path) else { throw KDError("\(path): no such file") }
        try self.init(json: data, file: path)
    }

    public init(json data: Data, file: String) throws {
        let root = try jsonObject(data, file: file)
        guard let model = root["model"] as? [String: Any], model["type"] as? String == "BPE",
              let vocab = model["vocab"] as? [String: Int], let mergeList = model["merges"] as? [Any]
        else { throw KDError("\(file): not a BPE tokenizer (model.type, model.vocab and model.merges are required)") }
        try Tokenizer.checkPipeline(root, file: file)

        let added = (root["added_tokens"] as? [[String: Any]] ?? []).compactMap { entry -> AddedToken? in
            guard let id = entry["id"] as? Int, let content = entry["content"] as? String else { return nil }
            return AddedToken(id: id, content: content, special: entry["special"] as? Bool ?? false)
        }
        let size = max((vocab.values.max() ?? -1) + 1, (added.map(\.id).max() ?? -1) + 1)
        var tokenBytes = [[UInt8]](repeating: [], count: size)
        let decodeByte = ByteLevel.unicodeToByte
        for (token, id) in vocab {
            guard id >= 0 else { throw KDError("\(file): negative id for token '\(token)'") }
            var bytes: [UInt8] = []
            for scalar in token.unicodeScalars {
                guard let byte = decodeByte[scalar] else {
                    throw KDError("\(file): vocabulary token '\(token)' is not byte-level encoded")
                }
                bytes.append(byte)
            }
            tokenBytes[id] = bytes
        }
        for token in added { tokenBytes[token.id] = Array(token.content.utf8) }
        var byteIDs = [Int32](repeating: -1, count: 256)
        for byte in 0..<256 {
            guard let id = vocab[String(ByteLevel.byteToUnicode[byte])] else {
                throw KDError("\(file): byte \(byte) has no vocabulary token")
            }
            byteIDs[byte] = Int32(id)
        }
        var merges: [UInt64: UInt64] = [:]
        merges.reserveCapacity(mergeList.count)
        for (rank, entry) in mergeList.enumerated() {
            let pair: [String]
            if let text = entry as? String {
                pair = text.split(separator: " ", omittingEmptySubsequences: false).map(String.init)
            } else {
                pair = entry as? [String] ?? []
            }
            guard pair.count == 2, let left = vocab[pair[0]], let right = vocab[pair[1]],
                  let merged = vocab[pair[0] + pair[1]] else {
                throw KDError("\(file): merge \(rank) (\(entry)) does not join two vocabulary tokens into one")
            }
            merges[UInt64(left) << 32 | UInt64(right)] = UInt64(rank) << 32 | UInt64(merged)
        }
        var byFirst: [Unicode.Scalar: [(scalars: [Unicode.Scalar], id: Int32)]] = [:]
        for token in added {
            let scalars = Array(token.content.unicodeScalars)
            guard let first = scalars.first else { continue }
            byFirst[first, default: []].append((scalars, Int32(token.id)))
        }
        for key in byFirst.keys { byFirst[key]!.sort { $0.scalars.count > $1.scalars.count } }

        self.tokenBytes = tokenBytes
        self.byteIDs = byteIDs
        self.merges = merges
        self.addedTokens = added
        self.addedByFirstScalar = byFirst
        self.specialIDs = Set(added.filter(\.special).map(\.id))
    }

    /// kd implements one pipeline; anything else is refused rather than tokenised differently.
    static func checkPipeline(_ root: [String: Any], file: String) throws {
        if let normalizer = root["normalizer"] as? [String: Any], normalizer["type"] as? String != "NFC" {
            throw KDError("\(file): normalizer \(normalizer["type"] ?? "?") is not supported (kd implements NFC)")
        }
        let pre = root["pre_tokenizer"] as? [String: Any]
        let steps = pre?["pretokenizers"] as? [[String: Any]] ?? []
        let split = steps.first { $0["type"] as? String == "Split" }
        let regex = (split?["pattern"] as? [String: Any])?["Regex"] as? String
        guard pre?["type"] as? String == "Sequence", steps.count == 2, regex == PreTokenizer.pattern,
              steps.last?["type"] as? String == "ByteLevel", steps.last?["use_regex"] as? Bool == false,
              steps.last?["add_prefix_space"] as? Bool != true
        else {
            throw KDError("\(file): pre_tokenizer is not the Qwen2 byte-level split (kd implements only that one)")
        }
        let model = root["model"] as? [String: Any] ?? [:]
        if let dropout = model["dropout"], !(dropout is NSNull) {
            throw KDError("\(file): BPE dropout is not supported")
        }
    }

    // MARK: Encoding

    /// Token ids of `text`, as `tokenizer.encode(text, add_special_tokens=False).ids`.
    public func encode(_ text: String) -> [Int] {
        var ids: [Int32] = []
        ids.reserveCapacity(text.utf8.count / 3)
        let scalars = Array(text.unicodeScalars)
        var segmentStart = 0
        var i = 0
        while i < scalars.count {
            if let candidates = addedByFirstScalar[scalars[i]],
               let match = candidates.first(where: { matches($0.scalars, in: scalars, at: i) }) {
                encodeOrdinary(scalars[segmentStart..<i], into: &ids)
                ids.append(match.id)
                i += match.scalars.count
                segmentStart = i
            } else {
                i += 1
            }
        }
        encodeOrdinary(scalars[segmentStart..<scalars.count], into: &ids)
        return ids.map(Int.init)
    }

    private func matches(_ token: [Unicode.Scalar], in scalars: [Unicode.Scalar], at start: Int) -> Bool {
        guard start + token.count <= scalars.count else { return false }
        for (k, scalar) in token.enumerated() where scalars[start + k] != scalar { return false }
        return true
    }

    /// Text between added tokens: NFC, the Qwen2 split, then BPE on each piece's UTF-8 bytes.
    private func encodeOrdinary(_ segment: ArraySlice<Unicode.Scalar>, into ids: inout [Int32]) {
        if segment.isEmpty { return }
        var scalars = Array(segment)
        // Scalars below U+0300 are unchanged by NFC and never compose with a preceding scalar.
        if scalars.contains(where: { $0.value >= 0x300 }) {
            var view = String.UnicodeScalarView()
            view.append(contentsOf: scalars)
            scalars = Array(String(view).precomposedStringWithCanonicalMapping.unicodeScalars)
        }
        let classes = scalars.map(PreTokenizer.classOf)
        var bytes: [UInt8] = []
        scalars.withUnsafeBufferPointer { scalarBuffer in
            classes.withUnsafeBufferPointer { classBuffer in
                PreTokenizer.split(scalarBuffer, classes: classBuffer) { range in
                    bytes.removeAll(keepingCapacity: true)
                    for k in range { UTF8.encode(scalarBuffer[k]) { bytes.append($0) } }
                    ids.append(contentsOf: bpe(bytes))
                }
            }
        }
    }

    /// Byte-pair merges of one piece, lowest rank first (leftmost on ties), memoised.
    func bpe(_ bytes: [UInt8]) -> [Int32] {
        if bytes.count == 1 { return [byteIDs[Int(bytes[0])]] }
        cacheLock.lock()
        if let cached = cache[bytes] {
            cacheLock.unlock()
            return cached
        }
        cacheLock.unlock()
        var symbols = bytes.map { byteIDs[Int($0)] }
        while symbols.count > 1 {
            var bestRank = UInt64.max
            var bestIndex = -1
            var bestMerged: Int32 = 0
            for k in 0..<(symbols.count - 1) {
                if let merge = merges[UInt64(UInt32(symbols[k])) << 32 | UInt64(UInt32(symbols[k + 1]))] {
                    let rank = merge >> 32
                    if rank < bestRank {
                        bestRank = rank
                        bestIndex = k
                        bestMerged = Int32(truncatingIfNeeded: merge & 0xFFFF_FFFF)
                    }
                }
            }
            if bestIndex < 0 { break }
            symbols[bestIndex] = bestMerged
            symbols.remove(at: bestIndex + 1)
        }
        cacheLock.lock()
        if cache.count > 1 << 20 { cache.removeAll(keepingCapacity: true) }
        cache[bytes] = symbols
        cacheLock.unlock()
        return symbols
    }

    // MARK: Decoding

    /// The text of `ids` (byte-level decoding; invalid UTF-8 becomes U+FFFD, as `tokenizers` does).
    /// Ids beyond the tokenizer are an error, or, with `skipUnknown` (generated text: a model's
    /// embedding padding rows can be sampled), dropped as `tokenizers` drops them.
    public func decode(_ ids: [Int], skipSpecialTokens: Bool = false, skipUnknown: Bool = false) throws -> String {
        var bytes: [UInt8] = []
        for id in ids {
            guard id >= 0 && id < tokenBytes.count else {
                if skipUnknown { continue }
                throw KDError("token id \(id) is outside the tokenizer (\(tokenBytes.count) tokens)")
            }
            if skipSpecialTokens && specialIDs.contains(id) { continue }
            bytes.append(contentsOf: tokenBytes[id])
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// The raw bytes of one token, for streaming text out as it is generated.
    public func bytes(of id: Int) -> [UInt8] {
        id >= 0 && id < tokenBytes.count ? tokenBytes[id] : []
    }

    public func id(of addedToken: String) -> Int? {
        addedTokens.first { $0.content == addedToken }?.id
    }

    public func isSpecial(_ id: Int) -> Bool { specialIDs.contains(id) }
}

/// GPT-2's reversible map between bytes and printable Unicode characters.
enum ByteLevel {
    static let byteToUnicode: [Character] = {
        var printable = Array(33...126) + Array(161...172) + Array(174...255)
        var mapped = printable
        var extra = 0
        for byte in 0..<256 where !printable.contains(byte) {
            printable.append(byte)
            mapped.append(256 + extra)
            extra += 1
        }
        var table = [Character](repeating: " ", count: 256)
        for (byte, code) in zip(printable, mapped) { table[byte] = Character(Unicode.Scalar(UInt32(code))!) }
        return table
    }()

    static let unicodeToByte: [Unicode.Scalar: UInt8] = {
        var table: [Unicode.Scalar: UInt8] = [:]
        for (byte, character) in byteToUnicode.enumerated() { table[character.unicodeScalars.first!] = UInt8(byte) }
        return table
    }()
}
