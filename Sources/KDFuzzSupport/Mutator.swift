import Foundation

/// SplitMix64: a tiny, seedable, reproducible generator (the same mutants on every machine).
public struct FuzzRandom {
    private var state: UInt64

    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform in 0..<n (n > 0).
    public mutating func below(_ n: Int) -> Int { Int(next() % UInt64(max(n, 1))) }

    public mutating func chance(_ percent: Int) -> Bool { below(100) < percent }

    public mutating func pick<T>(_ items: [T]) -> T { items[below(items.count)] }
}

/// Inputs made of several files (a run YAML and its `--set` overrides, an adapter's config and
/// weights) are the files joined by this line, so libFuzzer and the mutator see one byte string.
public enum FuzzParts {
    public static let separator = Array("\n@@kd-fuzz-part@@\n".utf8)

    public static func split(_ bytes: [UInt8]) -> [[UInt8]] {
        var parts: [[UInt8]] = []
        var start = 0, i = 0
        let n = separator.count
        while i + n <= bytes.count {
            if bytes[i] == separator[0] && Array(bytes[i..<(i + n)]) == separator {
                parts.append(Array(bytes[start..<i]))
                i += n
                start = i
            } else {
                i += 1
            }
        }
        parts.append(Array(bytes[start...]))
        return parts
    }

    public static func join(_ parts: [[UInt8]]) -> [UInt8] {
        var out: [UInt8] = []
        for (k, part) in parts.enumerated() {
            if k > 0 { out += separator }
            out += part
        }
        return out
    }
}

/// A deterministic mutator for the in-process mutation tests (libFuzzer has its own): stacked
/// byte-level edits (bit flips, inserts, deletes, truncation, splices with other seeds, boundary
/// integers written in binary or spliced in as text) and, for JSON, structural edits (type swaps,
/// boundary numbers, huge strings, deep nesting, dropped and duplicated keys and elements). Each
/// part of a multi-part input is mutated on its own; a safetensors header is mutated as JSON and
/// re-framed with its length.
public struct Mutator {
    public var random: FuzzRandom
    /// Keys seen in the seeds, to add and swap in.
    public var keys: [String]

    public init(seed: UInt64, corpus: [[UInt8]] = []) {
        random = FuzzRandom(seed: seed)
        var keys = Set<String>()
        for input in corpus {
            for part in FuzzParts.split(input) {
                let body = Mutator.safetensorsHeader(part).map { Array(part[8..<(8 + $0)]) } ?? part
                for line in Mutator.lines(body) {
                    if let value = try? JSONSerialization.jsonObject(with: Data(line), options: [.fragmentsAllowed]) {
                        Mutator.collectKeys(value, into: &keys)
                    }
                }
            }
        }
        self.keys = keys.sorted()
    }

    /// Numbers at and around the edges of Int32, Int64, UInt64, Double and what JSON allows.
    public static let interestingNumbers: [String] = [
        "0", "-0", "1", "-1", "2", "7", "255", "256", "65535", "65536", "2147483647", "2147483648", "-2147483648",
        "4294967295", "4294967296", "1099511627776", "9007199254740993", "4611686018427387904",
        "9223372036854775807", "9223372036854775808", "-9223372036854775808", "-9223372036854775809",
        "18446744073709551615", "18446744073709551616", "1e308", "-1e308", "1e400", "-1e400", "1e-400",
        "0.5", "1.5", "-0.5", "1e19", "NaN", "Infinity", "-Infinity", "0x10", "1_000", "077",
    ]

    public static let interestingTokens: [String] = interestingNumbers + [
        "null", "true", "false", "\"\"", "[]", "{}", "[[]]", "{\"\":{}}", "\"\\u0000\"", "\"\\ud800\"", "~", "!!binary",
        "&a", "*a", "<<", "- ", ": ", "\n", "\t", "#", "\"", "'", "\\", ",", ":", "{", "}", "[", "]", "=", ".", "---",
        "...", "\u{FEFF}", "é", "\u{301}", "😀", "\u{0}",
    ]

    static let interestingBinary: [UInt64] = [
        0, 1, 2, 7, 8, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF, 0x1_0000_0000,
        0x7FFF_FFFF_FFFF_FFF8, 0x7FFF_FFFF_FFFF_FFFF, 0x8000_0000_0000_0000, 0xFFFF_FFFF_FFFF_FFFF, 0xFFFF_FFFF_FFFF_FFF0,
    ]

    /// One mutant of `input`: one to four stacked edits. `corpus` supplies splicing partners.
    public mutating func mutate(_ input: [UInt8], corpus: [[UInt8]]) -> [UInt8] {
        let parts = FuzzParts.split(input)
        if parts.count > 1 {
            var parts = parts
            if random.chance(5) {  // lose or gain a part
                if random.chance(50) { parts.remove(at: random.below(parts.count)) } else { parts.append(random.pick(parts)) }
                return FuzzParts.join(parts)
            }
            let k = random.below(parts.count)
            let partners = corpus.flatMap { FuzzParts.split($0) }
            parts[k] = mutatePart(parts[k], corpus: partners)
            return FuzzParts.join(parts)
        }
        return mutatePart(input, corpus: corpus)
    }

    mutating func mutatePart(_ input: [UInt8], corpus: [[UInt8]]) -> [UInt8] {
        if let length = Mutator.safetensorsHeader(input), random.chance(60) {
            let header = Array(input[8..<(8 + length)])
            let rest = Array(input[(8 + length)...])
            let mutated = random.chance(75) ? mutateJSON(header) ?? mutateBytes(header, corpus: corpus) : mutateBytes(header, corpus: corpus)
            var framed = Mutator.littleEndian(UInt64(mutated.count))
            if random.chance(10) { framed = Mutator.littleEndian(random.pick(Mutator.interestingBinary)) }
            return framed + mutated + (random.chance(10) ? Array(rest.prefix(random.below(rest.count + 1))) : rest)
        }
        if random.chance(55), let mutated = mutateJSONLines(input) { return mutated }
        return mutateBytes(input, corpus: corpus)
    }

    // MARK: Bytes

    public mutating func mutateBytes(_ input: [UInt8], corpus: [[UInt8]]) -> [UInt8] {
        var bytes = input
        for _ in 0..<(1 + random.below(4)) { mutateOnce(&bytes, corpus: corpus) }
        return bytes
    }

    mutating func mutateOnce(_ bytes: inout [UInt8], corpus: [[UInt8]]) {
        let n = bytes.count
        switch random.below(11) {
        case 0 where n > 0:  // flip a bit
            bytes[random.below(n)] ^= UInt8(1) << UInt8(random.below(8))
        case 1 where n > 0:  // set a byte
            bytes[random.below(n)] = random.chance(50) ? UInt8(truncatingIfNeeded: random.next())
                : random.pick(Array("\"{}[],:-0123456789 \n\\\u{0}".utf8) + [0xFF, 0x80, 0x7F])
        case 2:  // insert random bytes
            let count = 1 + random.below(8)
            bytes.insert(contentsOf: (0..<count).map { _ in UInt8(truncatingIfNeeded: random.next()) }, at: random.below(n + 1))
        case 3 where n > 0:  // delete a range
            let start = random.below(n)
            bytes.removeSubrange(start..<min(n, start + 1 + random.below(16)))
        case 4 where n > 0:  // truncate
            bytes.removeSubrange(random.below(n)..<n)
        case 5 where n > 0:  // duplicate a range
            let start = random.below(n), end = min(n, start + 1 + random.below(32))
            bytes.insert(contentsOf: bytes[start..<end], at: random.below(n + 1))
        case 6 where n >= 4:  // a boundary integer in binary (offset 0 is a safetensors header length)
            let width = random.chance(50) ? 8 : 4
            let at = random.chance(30) ? 0 : random.below(n - width + 1 > 0 ? n - width + 1 : 1)
            let value = Mutator.littleEndian(random.pick(Mutator.interestingBinary))
            for k in 0..<width where at + k < n { bytes[at + k] = value[k] }
        case 7:  // a boundary number replacing a run of digits, or inserted
            let number = Array(random.pick(Mutator.interestingNumbers).utf8)
            if let run = digitRun(bytes) { bytes.replaceSubrange(run, with: number) } else { bytes.insert(contentsOf: number, at: random.below(n + 1)) }
        case 8:  // a token
            bytes.insert(contentsOf: Array(random.pick(Mutator.interestingTokens).utf8), at: random.below(n + 1))
        case 9 where !corpus.isEmpty:  // splice with another seed
            let other = random.pick(corpus)
            bytes = Array(bytes.prefix(random.below(n + 1))) + Array(other.suffix(random.below(other.count + 1)))
        default:  // something large (up to 4 KiB, so a mutant parses in milliseconds): a long run or deep brackets
            let big: [UInt8]
            switch random.below(3) {
            case 0: big = [UInt8](repeating: UInt8(ascii: "A"), count: 1 << (6 + random.below(7)))
            case 1: big = [UInt8](repeating: UInt8(ascii: "["), count: 1 << (4 + random.below(9)))
            default: big = Array(String(repeating: "{\"a\":", count: 1 << (4 + random.below(7))).utf8)
            }
            bytes.insert(contentsOf: big, at: random.below(n + 1))
        }
    }

    mutating func digitRun(_ bytes: [UInt8]) -> Range<Int>? {
        let isDigit = { (b: UInt8) in b >= 0x30 && b <= 0x39 }
        let starts = bytes.indices.filter { isDigit(bytes[$0]) && ($0 == 0 || !isDigit(bytes[$0 - 1])) }
        guard !starts.isEmpty else { return nil }
        var start = random.pick(starts)
        if start > 0 && bytes[start - 1] == UInt8(ascii: "-") { start -= 1 }
        var end = start + 1
        while end < bytes.count && (isDigit(bytes[end]) || bytes[end] == UInt8(ascii: ".")) { end += 1 }
        return start..<end
    }

    // MARK: JSON

    /// One record of a JSON (or JSON Lines) input edited structurally; nil when no line is JSON.
    mutating func mutateJSONLines(_ input: [UInt8]) -> [UInt8]? {
        var lines = Mutator.lines(input)
        let candidates = lines.indices.filter { !lines[$0].isEmpty && (lines[$0].first == UInt8(ascii: "{") || lines[$0].first == UInt8(ascii: "[")) }
        if lines.count > 1 && !candidates.isEmpty {
            let k = random.pick(candidates)
            guard let mutated = mutateJSON(lines[k]) else { return nil }
            lines[k] = mutated
            return Array(lines.joined(separator: [UInt8(ascii: "\n")]))
        }
        return mutateJSON(input)
    }

    /// `text` parsed, one node replaced or edited, and written back (nil when it is not JSON).
    public mutating func mutateJSON(_ text: [UInt8]) -> [UInt8]? {
        guard let value = try? JSONSerialization.jsonObject(with: Data(text), options: [.fragmentsAllowed]) else { return nil }
        var root = JSONValue(value)
        let count = root.nodeCount
        var target = random.below(count)
        root.edit(&target) { node in self.mutateNode(&node) }
        return Array(root.serialized().utf8)
    }

    mutating func mutateNode(_ node: inout JSONValue) {
        switch random.below(10) {
        case 0, 1:  // a boundary number
            node = .raw(random.pick(Mutator.interestingNumbers))
        case 2:  // perturb a number, or any scalar becomes one
            if case .number(let text) = node, let value = Int(text) {
                let (result, _) = random.pick([
                    value.addingReportingOverflow(1), value.subtractingReportingOverflow(1),
                    value.multipliedReportingOverflow(by: -1), value.multipliedReportingOverflow(by: 1 << 20),
                    value.multipliedReportingOverflow(by: 1 << 31),
                ])
                node = .number(String(result))
            } else {
                node = .number(String(random.below(5) - 1))
            }
        case 3:  // type swap
            switch node {
            case .number(let text), .raw(let text): node = random.chance(50) ? .string(text) : .array([node])
            case .string(let text): node = Double(text) != nil ? .raw(text) : random.pick([.bool(true), .null, .number("1")])
            case .array(let items): node = .object(items.enumerated().map { ("\($0.offset)", $0.element) })
            case .object(let members): node = random.chance(50) ? .array(members.map(\.1)) : .string("object")
            case .bool, .null: node = random.pick([.string("true"), .number("0"), .array([]), .object([])])
            }
        case 4:  // huge or odd string
            node = .string(random.pick([
                String(repeating: "x", count: 1 << (6 + random.below(7))), "", "\u{0}", "é\u{301}", "😀",
                "q_proj", "LORA", "qwen3", "qwen3_moe", "F32", "BF16", "I64", "default", "silu",
            ]))
        case 5:  // deep nesting
            let depth = 1 << (3 + random.below(10))
            node = .raw(String(repeating: "[", count: depth) + String(repeating: "]", count: depth))
        case 6:  // arrays: drop, duplicate, grow, empty
            if case .array(var items) = node {
                if !items.isEmpty && random.chance(40) { items.remove(at: random.below(items.count)) }
                else if !items.isEmpty && random.chance(50) { items += [JSONValue](repeating: random.pick(items), count: 1 + random.below(64)) }
                else { items = [] }
                node = .array(items)
            } else {
                node = .array([node, node])
            }
        case 7:  // objects: drop a key, add a known key, or rename one
            if case .object(var members) = node {
                if !members.isEmpty && random.chance(40) {
                    members.remove(at: random.below(members.count))
                } else if !keys.isEmpty {
                    let key = random.pick(keys)
                    let value: JSONValue = members.isEmpty ? .number("1") : random.pick(members).1
                    if !members.isEmpty && random.chance(50) { members[random.below(members.count)].0 = key } else { members.append((key, value)) }
                }
                node = .object(members)
            } else {
                node = .object([(keys.isEmpty ? "a" : random.pick(keys), node)])
            }
        case 8:  // null, booleans, empty containers
            node = random.pick([.null, .bool(true), .bool(false), .array([]), .object([])])
        default:  // duplicate key (JSON objects keep the last one)
            if case .object(let members) = node, let first = members.first {
                node = .object(members + [(first.0, .raw(random.pick(Mutator.interestingNumbers)))])
            } else {
                node = .raw(random.pick(Mutator.interestingTokens))
            }
        }
    }

    // MARK: Helpers

    /// The header length of a well-framed safetensors input.
    static func safetensorsHeader(_ bytes: [UInt8]) -> Int? {
        guard bytes.count >= 10 else { return nil }
        var length: UInt64 = 0
        for k in 0..<8 { length |= UInt64(bytes[k]) << (8 * UInt64(k)) }
        guard length >= 2, length <= UInt64(bytes.count - 8), bytes[8] == UInt8(ascii: "{") else { return nil }
        return Int(length)
    }

    static func littleEndian(_ value: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: value >> (8 * UInt64($0))) } }

    static func lines(_ bytes: [UInt8]) -> [[UInt8]] {
        bytes.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false).map(Array.init)
    }

    static func collectKeys(_ value: Any, into keys: inout Set<String>) {
        if let object = value as? [String: Any] {
            for (key, child) in object {
                keys.insert(key)
                collectKeys(child, into: &keys)
            }
        } else if let array = value as? [Any] {
            for child in array { collectKeys(child, into: &keys) }
        }
    }
}

/// A JSON document kept in order, with raw tokens (NaN, 1e400, deep brackets) JSONSerialization
/// would not write.
public indirect enum JSONValue {
    case null
    case bool(Bool)
    case number(String)
    case string(String)
    case array([JSONValue])
    case object([(String, JSONValue)])
    case raw(String)

    init(_ value: Any) {
        switch value {
        case let number as NSNumber where String(cString: number.objCType) == "c": self = .bool(number.boolValue)
        case let number as NSNumber: self = .number(number.stringValue)
        case let string as String: self = .string(string)
        case let array as [Any]: self = .array(array.map(JSONValue.init))
        case let object as [String: Any]: self = .object(object.keys.sorted().map { ($0, JSONValue(object[$0] as Any)) })
        default: self = .null
        }
    }

    var nodeCount: Int {
        switch self {
        case .array(let items): 1 + items.reduce(0) { $0 + $1.nodeCount }
        case .object(let members): 1 + members.reduce(0) { $0 + $1.1.nodeCount }
        default: 1
        }
    }

    /// Applies `body` to the node numbered `target` in pre-order (counting down to it).
    mutating func edit(_ target: inout Int, _ body: (inout JSONValue) -> Void) {
        if target == 0 {
            target = -1
            body(&self)
            return
        }
        target -= 1
        switch self {
        case .array(var items):
            for k in items.indices where target >= 0 { items[k].edit(&target, body) }
            self = .array(items)
        case .object(var members):
            for k in members.indices where target >= 0 { members[k].1.edit(&target, body) }
            self = .object(members)
        default:
            break
        }
    }

    func serialized() -> String {
        var out = ""
        write(into: &out)
        return out
    }

    func write(into out: inout String) {
        switch self {
        case .null: out += "null"
        case .bool(let value): out += value ? "true" : "false"
        case .number(let text), .raw(let text): out += text
        case .string(let text): JSONValue.quote(text, into: &out)
        case .array(let items):
            out += "["
            for (k, item) in items.enumerated() {
                if k > 0 { out += "," }
                item.write(into: &out)
            }
            out += "]"
        case .object(let members):
            out += "{"
            for (k, member) in members.enumerated() {
                if k > 0 { out += "," }
                JSONValue.quote(member.0, into: &out)
                out += ":"
                member.1.write(into: &out)
            }
            out += "}"
        }
    }

    static func quote(_ text: String, into out: inout String) {
        out += "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case _ where scalar.value < 0x20: out += String(format: "\\u%04x", scalar.value)
            default: out.unicodeScalars.append(scalar)
            }
        }
        out += "\""
    }
}
