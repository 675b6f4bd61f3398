import Foundation
import KDCore

/// A JSON Lines file read record by record; every error names the file and line.
public struct JSONLines {
    public struct Record {
        public init(line: Int, object: [String: Any]) {
            self.line = line
            self.object = object
        }

        public let line: Int
        public let object: [String: Any]
    }

    public let path: String
    public let records: [Record]
    /// Lines that failed to parse, when reading leniently (`skipBad`).
    public let skipped: [(line: Int, problem: String)]

    /// Reads `path` ("-" for standard input). Blank lines are ignored. A line that is not a
    /// JSON object fails with `path:line: ...`, or is collected in `skipped` when `skipBad`.
    /// A missing path, a directory or a non-regular file (a FIFO, a device) fails with one line
    /// naming it; nothing blocks.
    public init(path: String, skipBad: Bool = false) throws {
        let data: Data
        if path == "-" {
            data = FileHandle.standardInput.readDataToEndOfFile()
        } else {
            guard let contents = try readRegularFile(path) else { throw KDError("\(path): no such file") }
            data = contents
        }
        try self.init(data: data, name: path, skipBad: skipBad)
    }

    /// Lines longer than this (1 GiB) are refused: no record is that large, and positions within
    /// a line must stay below 2^31.
    public static let maxLineBytes = 1 << 30

    public init(data: Data, name: String, skipBad: Bool = false) throws {
        path = name
        var records: [Record] = []
        var skipped: [(Int, String)] = []
        var lineNumber = 0
        for line in data.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) {
            lineNumber += 1
            if line.allSatisfy({ $0 == 0x20 || $0 == 0x09 || $0 == 0x0D }) { continue }
            do {
                guard line.count <= JSONLines.maxLineBytes else {
                    throw KDError("line of \(line.count) bytes (at most \(JSONLines.maxLineBytes))")
                }
                records.append(Record(line: lineNumber, object: try JSONLines.parse(Data(line))))
            } catch let error as KDError {
                if !skipBad { throw KDError("\(name):\(lineNumber): \(error.message)") }
                skipped.append((lineNumber, error.message))
            }
        }
        self.records = records
        self.skipped = skipped
    }

    /// A number from the input as an error message shows it: a huge one (a 300-digit literal
    /// arrives as a decimal number) cut after 24 characters.
    static func shown(_ number: NSNumber) -> String {
        let text = "\(number)"
        return text.count <= 24 ? text : text.prefix(24) + "… (\(text.count) characters)"
    }

    /// One line as a JSON object, or a KDError saying what it is instead.
    public static func parse(_ line: Data) throws -> [String: Any] {
        try checkKeys(line)
        guard let value = try? JSONSerialization.jsonObject(with: line, options: [.fragmentsAllowed]) else {
            throw KDError("not valid JSON")
        }
        guard let object = value as? [String: Any] else { throw KDError("expected a JSON object") }
        return object
    }
}

extension JSONLines {
    /// Object keys may hold at most this many combining marks (non-starters) in a row. Swift
    /// hashes and compares strings in normalised form, in time quadratic in such a run when it
    /// is out of canonical order, and JSONSerialization hashes every key: a 40k-mark key took
    /// 0.6 s, a megabyte of them would take hours. Unicode's stream-safe text format allows 30.
    public static let maxKeyMarkRun = 1024

    /// Refuses JSON text with an object key longer in combining marks than `maxKeyMarkRun`,
    /// before JSONSerialization sees it: one pass over the bytes, marks written as UTF-8 or as
    /// \u escapes (surrogate pairs included). Malformed JSON is left for the parser to report.
    public static func checkKeys(_ json: Data) throws {
        let longest: Int? = json.withUnsafeBytes { raw -> Int? in
            let bytes = raw.bindMemory(to: UInt8.self)
            let n = bytes.count
            var i = 0
            while i < n {
                guard bytes[i] == 0x22 else { i += 1; continue }  // a string starts
                i += 1
                var run = 0, longest = 0
                var pendingHigh: UInt32 = 0
                func scalar(_ value: UInt32) {
                    let isMark = value >= 0x300 && (Unicode.Scalar(value).map {
                        $0.properties.canonicalCombiningClass.rawValue != 0 || value == 0xF73 || value == 0xF75 || value == 0xF81
                    } ?? false)
                    run = isMark ? run + 1 : 0
                    longest = max(longest, run)
                }
                while i < n && bytes[i] != 0x22 {
                    let byte = bytes[i]
                    if byte == 0x5C, i + 1 < n {  // an escape
                        if bytes[i + 1] == 0x75, i + 5 < n, let value = hex4(bytes, i + 2) {
                            if value >= 0xD800 && value < 0xDC00 {
                                pendingHigh = value
                            } else if value >= 0xDC00 && value < 0xE000 && pendingHigh != 0 {
                                scalar(0x10000 + ((pendingHigh - 0xD800) << 10) + (value - 0xDC00))
                                pendingHigh = 0
                            } else {
                                scalar(value)
                                pendingHigh = 0
                            }
                            i += 6
                        } else {
                            scalar(0)
                            i += 2
                        }
                        continue
                    }
                    pendingHigh = 0
                    if byte < 0xCC || byte >= 0xF8 {
                        // ASCII, a continuation byte, or a lead byte of a scalar below U+0300.
                        if byte < 0x80 || byte >= 0xC0 { scalar(0) }
                        i += 1
                        continue
                    }
                    let length = byte < 0xE0 ? 2 : byte < 0xF0 ? 3 : 4
                    guard i + length <= n else { break }
                    var value = UInt32(byte) & (length == 2 ? 0x1F : length == 3 ? 0x0F : 0x07)
                    for k in 1..<length { value = value << 6 | UInt32(bytes[i + k] & 0x3F) }
                    scalar(value)
                    i += length
                }
                i += 1  // the closing quote
                guard longest > maxKeyMarkRun else { continue }
                // A key when a colon follows.
                var j = i
                while j < n && (bytes[j] == 0x20 || bytes[j] == 0x09 || bytes[j] == 0x0D || bytes[j] == 0x0A) { j += 1 }
                if j < n && bytes[j] == 0x3A { return longest }
            }
            return nil
        }
        if let longest {
            throw KDError("an object key has \(longest) combining marks in a row (at most \(maxKeyMarkRun))")
        }
    }

    private static func hex4(_ bytes: UnsafeBufferPointer<UInt8>, _ at: Int) -> UInt32? {
        var value: UInt32 = 0
        for k in at..<(at + 4) {
            let c = bytes[k]
            let digit: UInt8
            switch c {
            case 0x30...0x39: digit = c - 0x30
            case 0x41...0x46: digit = c - 0x41 + 10
            case 0x61...0x66: digit = c - 0x61 + 10
            default: return nil
            }
            value = value << 4 | UInt32(digit)
        }
        return value
    }
}

extension JSONLines.Record {
    /// An array of integer token ids under `key`, checked element by element. With `bounded`
    /// (training data) each must be in 0...Int32.max, the trainer holding ids as Int32, or -100
    /// where `allowIgnored` (labels); without, callers check ids against their vocabulary.
    public func tokenIDs(_ key: String, bounded: Bool = false, allowIgnored: Bool = false) throws -> [Int]? {
        guard let value = object[key] else { return nil }
        guard let array = value as? [Any] else { throw KDError("\"\(key)\" must be an array of integers") }
        var ids: [Int] = []
        ids.reserveCapacity(array.count)
        for (index, element) in array.enumerated() {
            guard let number = element as? NSNumber, !JSONValue.isBoolean(number),
                  number.doubleValue.isFinite, number.doubleValue == number.doubleValue.rounded(.towardZero),
                  let id = bounded ? Int(exactly: max(-0x1p62, min(0x1p62, number.doubleValue))) : Int(exactly: number.doubleValue)
            else {
                throw KDError("\"\(key)\"[\(index)] is not an integer")
            }
            // Every id in range is exact in a Double, and rounding keeps anything beyond out of range.
            if bounded && !(id >= 0 && id <= Int(Int32.max)) && !(allowIgnored && id == Example.ignored) {
                throw KDError("\"\(key)\"[\(index)] = \(JSONLines.shown(number)) is not a token id (0 to \(Int32.max)"
                    + (allowIgnored ? ", or -100)" : ")"))
            }
            ids.append(id)
        }
        return ids
    }
}

/// The contents of the regular file at `path`; nil when nothing is there and `optional`. A
/// directory, a FIFO, a device or an unreadable file is a one-line KDError naming `path` (see
/// `InputFile`: a FIFO cannot hang).
public func readRegularFile(_ path: String, optional: Bool = false) throws -> Data? {
    if optional && !InputFile.exists(path) { return nil }
    return try InputFile.read(path)
}
