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
        guard let data = try readRegularFile(jsonPath, optional: true) else {
            throw KDError("\(directory): no tokenizer.json (kd reads Hugging Face fast-tokenizer files)")
        }
        let tokenizer = try Tokenizer(json: data, file: jsonPath)
        let configPath = (directory as NSString).appendingPathComponent("tokenizer_config.json")
        tokenizer.configFile = configPath
        if let data = try readRegularFile(configPath, optional: true) {
            do { try JSONLines.checkKeys(data) } catch let error as KDError { throw KDError("\(configPath): \(error.message)") }
            let config = try jsonObject(data, file: configPath)
            func tokenID(_ key: String) throws -> Int? {
                let content: String
                switch config[key] {
                case nil, is NSNull: return nil
                case let text as String: content = text
                case let object as [String: Any]:
                    guard let text = object["content"] as? String else {
                        throw KDError("\(configPath): \(key).content must be a string")
                    }
                    content = text
                default: throw KDError("\(configPath): \(key) must be a string or an object with a \"content\" string")
                }
                guard let id = tokenizer.id(of: content) else {
                    throw KDError("\(configPath): \(key) \(quoted(content)) is not an added token of tokenizer.json")
                }
                return id
            }
            tokenizer.padID = try tokenID("pad_token")
            tokenizer.eosID = try tokenID("eos_token")
            tokenizer.chatTemplate = try chatTemplate(config["chat_template"], file: configPath)
        }
        return tokenizer
    }

    /// `chat_template`: a string, or (newer files) a list of `{"name", "template"}` of which
    /// transformers uses the one named "default".
    static func chatTemplate(_ value: Any?, file: String) throws -> String? {
        switch value {
        case nil, is NSNull: return nil
        case let text as String: return text
        case let list as [Any]:
            for entry in list {
                guard let entry = entry as? [String: Any], let name = entry["name"] as? String,
                      let template = entry["template"] as? String else {
                    throw KDError("\(file): chat_template list entries must be {\"name\": string, \"template\": string}")
                }
                if name == "default" { return template }
            }
            return nil
        default:
            throw KDError("\(file): chat_template must be a string or a list of named templates")
        }
    }

    public convenience init(file path: String) throws {
        guard let data = try readRegularFile(path) else { throw KDError("\(path): no such file") }
        try self.init(json: data, file: path)
    }

    /// The largest token id kd accepts (exclusive): 2^24 = 16,777,216, far beyond any published
    /// vocabulary (the largest are about 256k) and small enough that the id table stays bounded.
    public static let idLimit = 1 << 24
    /// Ids index a table with one slot per id up to the largest, so the holes in it are bounded
    /// too: the largest id must be below 2 × (tokens listed) + `holeAllowance`, i.e. at most as
    /// many unused ids as tokens, plus this many.
    public static let holeAllowance = 1024

    /// A token id read from JSON: an integer (not a boolean, no fraction) in 0..<`idLimit`.
    static func tokenID(_ value: Any?, _ what: @autoclosure () -> String, file: String) throws -> Int {
        guard let value else { throw KDError("\(file): \(what()) has no \"id\"") }
        guard let number = value as? NSNumber, !JSONValue.isBoolean(number),
              number.doubleValue.isFinite, number.doubleValue == number.doubleValue.rounded(.towardZero) else {
            throw KDError("\(file): \(what()): the id must be an integer")
        }
        let double = number.doubleValue
        guard double >= 0, double < Double(idLimit) else {
            throw KDError("\(file): \(what()): id \(JSONLines.shown(number)) is outside 0..<\(idLimit)")
        }
        return Int(double)
    }

    public init(json data: Data, file: String) throws {
        do { try JSONLines.checkKeys(data) } catch let error as KDError { throw KDError("\(file): \(error.message)") }
        let root = try jsonObject(data, file: file)
        guard let model = root["model"] as? [String: Any] else {
            throw KDError("\(file): \"model\" must be a JSON object (kd reads byte-level BPE tokenizers)")
        }
        guard let type = model["type"] as? String, type == "BPE" else {
            let shown: String
            switch model["type"] {
            case let type as String: shown = quoted(type, limit: 40)
            case nil: shown = "(missing)"
            default: shown = "(not a string)"
            }
            throw KDError("\(file): model.type \(shown) is not BPE (kd reads byte-level BPE tokenizers)")
        }
        guard let vocabObject = model["vocab"] as? [String: Any] else {
            throw KDError("\(file): model.vocab must be a JSON object of token to id")
        }
        guard let mergeList = model["merges"] as? [Any] else {
            throw KDError("\(file): model.merges must be a list")
        }
        try Tokenizer.checkPipeline(root, file: file)

        var vocab: [String: Int] = [:]
        vocab.reserveCapacity(vocabObject.count)
        var tokenOfID: [Int: String] = [:]
        tokenOfID.reserveCapacity(vocabObject.count)
        for (token, value) in vocabObject {
            let id = try Tokenizer.tokenID(value, "model.vocab[\(quoted(token, limit: 40))]", file: file)
            if let other = tokenOfID.updateValue(token, forKey: id) {
                let pair = [other, token].sorted().map { quoted($0, limit: 40) }
                throw KDError("\(file): model.vocab: tokens \(pair[0]) and \(pair[1]) both have id \(id)")
            }
            vocab[token] = id
        }

        var added: [AddedToken] = []
        switch root["added_tokens"] {
        case nil, is NSNull: break
        case let list as [Any]:
            var contentOfID: [Int: Int] = [:]
            for (index, item) in list.enumerated() {
                guard let entry = item as? [String: Any] else {
                    throw KDError("\(file): added_tokens[\(index)] must be a JSON object")
                }
                guard let content = entry["content"] as? String else {
                    throw KDError("\(file): added_tokens[\(index)]: \"content\" must be a string")
                }
                let id = try Tokenizer.tokenID(entry["id"], "added_tokens[\(index)] (\(quoted(content, limit: 40)))", file: file)
                var special = false
                switch entry["special"] {
                case nil, is NSNull: break
                case let number as NSNumber where JSONValue.isBoolean(number): special = number.boolValue
                default: throw KDError("\(file): added_tokens[\(index)]: \"special\" must be true or false")
                }
                if let other = contentOfID.updateValue(index, forKey: id) {
                    throw KDError("\(file): added_tokens[\(other)] and added_tokens[\(index)] both have id \(id)")
                }
                added.append(AddedToken(id: id, content: content, special: special))
            }
        default:
            throw KDError("\(file): added_tokens must be a list")
        }

        // One slot per id up to the largest: refuse tables mostly made of holes (see holeAllowance).
        let largest = max(vocab.values.max() ?? -1, added.map(\.id).max() ?? -1)
        let listed = vocab.count + added.count
        guard largest < 2 * listed + Tokenizer.holeAllowance else {
            throw KDError("\(file): id \(largest) is far beyond the \(listed) tokens listed "
                + "(kd accepts ids below 2 × tokens + \(Tokenizer.holeAllowance))")
        }
        var tokenBytes = [[UInt8]](repeating: [], count: largest + 1)
        let decodeByte = ByteLevel.unicodeToByte
        for (token, id) in vocab {
            var bytes: [UInt8] = []
            for scalar in token.unicodeScalars {
                guard let byte = decodeByte[scalar] else {
                    throw KDError("\(file): vocabulary token \(quoted(token, limit: 40)) is not byte-level encoded")
                }
                bytes.append(byte)
            }
            tokenBytes[id] = bytes
        }
        // An added token shares an id with a vocabulary token only when the file says so; its
        // content wins when decoding, as in `tokenizers`.
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
            switch entry {
            case let text as String:
                pair = text.split(separator: " ", omittingEmptySubsequences: false).map(String.init)
            case let list as [Any]:
                pair = list.compactMap { $0 as? String }
                guard pair.count == list.count else {
                    throw KDError("\(file): merge \(rank) must be a string or a pair of strings")
                }
            default:
                throw KDError("\(file): merge \(rank) must be a string or a pair of strings")
            }
            guard pair.count == 2, let left = vocab[pair[0]], let right = vocab[pair[1]],
                  let merged = vocab[pair[0] + pair[1]] else {
                throw KDError("\(file): merge \(rank) (\(quoted(pair.joined(separator: " "), limit: 80))) "
                    + "does not join two vocabulary tokens into one")
            }
            merges[UInt64(left) << 32 | UInt64(right)] = UInt64(rank) << 32 | UInt64(merged)
        }
        var byFirst: [Unicode.Scalar: [(scalars: [Unicode.Scalar], id: Int32)]] = [:]
        for token in added {
            let scalars = Array(token.content.unicodeScalars)
            guard let first = scalars.first else { continue }
            byFirst[first, default: []].append((scalars, Int32(token.id)))
        }
        for key in byFirst.keys { byFirst[key]?.sort { $0.scalars.count > $1.scalars.count } }

        self.tokenBytes = tokenBytes
        self.byteIDs = byteIDs
        self.merges = merges
        self.addedTokens = added
        self.addedByFirstScalar = byFirst
        self.specialIDs = Set(added.filter(\.special).map(\.id))
    }

    /// kd implements one pipeline; anything else is refused rather than tokenised differently.
    static func checkPipeline(_ root: [String: Any], file: String) throws {
        switch root["normalizer"] {
        case let normalizer as [String: Any] where normalizer["type"] as? String == "NFC":
            break
        case let normalizer as [String: Any]:
            let type = (normalizer["type"] as? String).map { quoted($0, limit: 40) } ?? "without a type"
            throw KDError("\(file): normalizer \(type) is not supported (kd implements NFC)")
        case nil, is NSNull:
            throw KDError("\(file): no normalizer is not supported (kd implements NFC, which tokenizers would skip)")
        default:
            throw KDError("\(file): normalizer must be a JSON object")
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
        // Settings that would change the ids kd computes are refused, not ignored.
        for key in ["ignore_merges", "byte_fallback"] where model[key] != nil && !(model[key] is NSNull) {
            guard let value = JSONValue.bool(model[key]) else { throw KDError("\(file): model.\(key) must be true or false") }
            if value { throw KDError("\(file): model.\(key) true is not supported") }
        }
        for key in ["continuing_subword_prefix", "end_of_word_suffix"] where model[key] != nil && !(model[key] is NSNull) {
            guard model[key] as? String == "" else { throw KDError("\(file): model.\(key) is not supported (kd implements byte-level BPE without one)") }
        }
        for (index, entry) in (root["added_tokens"] as? [[String: Any]] ?? []).enumerated() {
            for key in ["lstrip", "rstrip", "single_word"] where entry[key] != nil && !(entry[key] is NSNull) {
                guard let value = JSONValue.bool(entry[key]) else {
                    throw KDError("\(file): added_tokens[\(index)]: \"\(key)\" must be true or false")
                }
                if value { throw KDError("\(file): added_tokens[\(index)]: \(key) true is not supported") }
            }
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
        if scalars.contains(where: { $0.value >= 0x300 }) { scalars = Normalization.nfc(scalars) }
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

    /// Pieces up to this many bytes are memoised (longer ones are rare and would make the
    /// cache's memory depend on the input)...
    static let cachedPieceBytes = 64
    /// ...and at most this many of them: the cache is emptied when full, so it holds at most
    /// about 64 Ki × (64 + 64) bytes whatever the text.
    static let cacheCapacity = 1 << 16

    /// How many pieces are memoised now (for tests).
    var cacheCount: Int {
        cacheLock.lock()
        defer { cacheLock.unlock() }
        return cache.count
    }

    /// Byte-pair merges of one piece, lowest rank first (leftmost on ties), memoised.
    func bpe(_ bytes: [UInt8]) -> [Int32] {
        if bytes.count == 1 { return [byteIDs[Int(bytes[0])]] }
        let cacheable = bytes.count <= Tokenizer.cachedPieceBytes
        if cacheable {
            cacheLock.lock()
            if let cached = cache[bytes] {
                cacheLock.unlock()
                return cached
            }
            cacheLock.unlock()
        }
        let symbols = merge(bytes.map { byteIDs[Int($0)] })
        if cacheable {
            cacheLock.lock()
            if cache.count >= Tokenizer.cacheCapacity { cache.removeAll(keepingCapacity: true) }
            cache[bytes] = symbols
            cacheLock.unlock()
        }
        return symbols
    }

    /// A candidate merge of the symbols at `left` and `right` (positions in the piece), valid
    /// while they are still neighbours holding the ids it was made from.
    private struct Candidate {
        /// rank << 32 | left: the heap's order, lowest rank first, leftmost on ties.
        var key: UInt64
        var right: Int32
        var leftID: Int32
        var rightID: Int32
        var merged: Int32
    }

    /// Applies merges to `symbols` exactly as repeatedly merging the leftmost pair of lowest rank
    /// would, in O(n log n): the symbols form a linked list over their first positions, and a
    /// binary min-heap holds every candidate pair; one made stale by a neighbouring merge is
    /// skipped when it surfaces. Positions keep their order, so (rank, left position) orders the
    /// heap exactly as the leftmost-lowest-rank rule does. Pieces are below 2^31 bytes (a
    /// JSONL line is at most 1 GiB).
    func merge(_ initial: [Int32]) -> [Int32] {
        let n = initial.count
        if n < 2 { return initial }
        // Every merge pops one candidate and pushes at most two, so at most 2n are ever held.
        let ids = UnsafeMutablePointer<Int32>.allocate(capacity: n)
        let next = UnsafeMutablePointer<Int32>.allocate(capacity: n)
        let previous = UnsafeMutablePointer<Int32>.allocate(capacity: n)
        let heap = UnsafeMutablePointer<Candidate>.allocate(capacity: 2 * n)
        defer {
            ids.deallocate()
            next.deallocate()
            previous.deallocate()
            heap.deallocate()
        }
        for k in 0..<n {
            ids[k] = initial[k]
            next[k] = Int32(k + 1)
            previous[k] = Int32(k - 1)
        }
        let merges = self.merges
        var count = 0

        func candidate(_ left: Int32) -> Candidate? {
            guard left >= 0 else { return nil }
            let right = next[Int(left)]
            guard Int(right) < n else { return nil }
            let a = ids[Int(left)], b = ids[Int(right)]
            guard let merge = merges[UInt64(UInt32(bitPattern: a)) << 32 | UInt64(UInt32(bitPattern: b))] else { return nil }
            return Candidate(key: (merge >> 32) << 32 | UInt64(UInt32(left)), right: right, leftID: a, rightID: b,
                             merged: Int32(truncatingIfNeeded: merge & 0xFFFF_FFFF))
        }
        func siftDown(_ start: Int) {
            let item = heap[start]
            var parent = start
            while true {
                var child = 2 * parent + 1
                if child >= count { break }
                if child + 1 < count && heap[child + 1].key < heap[child].key { child += 1 }
                if item.key <= heap[child].key { break }
                heap[parent] = heap[child]
                parent = child
            }
            heap[parent] = item
        }
        func push(_ left: Int32) {
            guard let item = candidate(left) else { return }
            var child = count
            count += 1
            while child > 0 {
                let parent = (child - 1) / 2
                if heap[parent].key <= item.key { break }
                heap[child] = heap[parent]
                child = parent
            }
            heap[child] = item
        }

        for k in 0..<(n - 1) {
            if let item = candidate(Int32(k)) {
                heap[count] = item
                count += 1
            }
        }
        if count > 1 {
            for k in stride(from: count / 2 - 1, through: 0, by: -1) { siftDown(k) }
        }
        while count > 0 {
            let top = heap[0]
            count -= 1
            if count > 0 {
                heap[0] = heap[count]
                siftDown(0)
            }
            let left = Int(top.key & 0xFFFF_FFFF)
            let right = Int(top.right)
            // Stale unless still neighbours with the same ids (an absorbed symbol's next is -1).
            guard next[left] == top.right, ids[left] == top.leftID, ids[right] == top.rightID else { continue }
            ids[left] = top.merged
            let after = next[right]
            next[left] = after
            next[right] = -1
            if Int(after) < n { previous[Int(after)] = Int32(left) }
            push(previous[left])
            push(Int32(left))
        }
        var out: [Int32] = []
        var k = 0
        while k < n {
            out.append(ids[k])
            k = Int(next[k])
        }
        return out
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

/// NFC as Unicode defines it (and the `unicode-normalization` crate behind `tokenizers`
/// computes it), in O(n log n). kd builds the canonical decomposition (NFD) itself: every scalar
/// decomposed on its own by Foundation (memoised), then each run of non-starters stably sorted by
/// combining class. Foundation then only composes. Handing Foundation the text directly was
/// quadratic in a run of marks out of canonical order (it reorders by swapping neighbours: 40k
/// alternating U+0301 U+0316 took 4 s, 100k about 50 s) and wrong in two corners that its own
/// decomposition misses: a precomposed Hangul LV syllable followed by a T jamo (U+AC00 U+11A8 is
/// U+AC01) and the Tibetan vowel signs U+0F73/0F75/0F81 among other marks (not reordered).
enum Normalization {
    static func foundationNFC(_ scalars: [Unicode.Scalar]) -> [Unicode.Scalar] {
        var view = String.UnicodeScalarView()
        view.append(contentsOf: scalars)
        return Array(String(view).precomposedStringWithCanonicalMapping.unicodeScalars)
    }

    static func nfc(_ scalars: [Unicode.Scalar]) -> [Unicode.Scalar] {
        foundationNFC(nfd(scalars))
    }

    /// Decompositions of the scalars seen (at most `memoCapacity`, then it starts afresh).
    private static var memo: [Unicode.Scalar: [Unicode.Scalar]] = [:]
    private static let memoLock = NSLock()
    static let memoCapacity = 1 << 16

    static func decomposition(_ scalar: Unicode.Scalar) -> [Unicode.Scalar] {
        memoLock.lock()
        let known = memo[scalar]
        memoLock.unlock()
        if let known { return known }
        let parts = Array(String(scalar).decomposedStringWithCanonicalMapping.unicodeScalars)
        memoLock.lock()
        if memo.count >= memoCapacity { memo.removeAll(keepingCapacity: true) }
        memo[scalar] = parts
        memoLock.unlock()
        return parts
    }

    /// The canonical decomposition: each scalar's own decomposition, then
    /// canonical ordering, a stable sort of each run of non-starters by combining class.
    static func nfd(_ scalars: [Unicode.Scalar]) -> [Unicode.Scalar] {
        var decomposed: [Unicode.Scalar] = []
        decomposed.reserveCapacity(scalars.count)
        var local: [Unicode.Scalar: [Unicode.Scalar]] = [:]
        for scalar in scalars {
            // Nothing below U+00C0 has a canonical decomposition.
            if scalar.value < 0xC0 {
                decomposed.append(scalar)
            } else if let parts = local[scalar] {
                decomposed.append(contentsOf: parts)
            } else {
                let parts = decomposition(scalar)
                local[scalar] = parts
                decomposed.append(contentsOf: parts)
            }
        }
        let classes = decomposed.map { $0.properties.canonicalCombiningClass.rawValue }
        var start = 0
        while start < decomposed.count {
            guard classes[start] != 0 else {
                start += 1
                continue
            }
            var end = start + 1
            while end < decomposed.count && classes[end] != 0 { end += 1 }
            if end - start > 1 {
                // (class, position) keys are distinct, so this sort is stable by construction.
                let order = (start..<end).sorted { (classes[$0], $0) < (classes[$1], $1) }
                let sorted = order.map { decomposed[$0] }
                decomposed.replaceSubrange(start..<end, with: sorted)
            }
            start = end
        }
        return decomposed
    }
}
