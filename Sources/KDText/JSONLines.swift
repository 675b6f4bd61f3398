import Foundation
import KDCore
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

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

    /// JSON booleans also arrive as NSNumber; they are not token ids.
    public static func isBoolean(_ number: NSNumber) -> Bool { String(cString: number.objCType) == "c" }

    /// One line as a JSON object, or a KDError saying what it is instead.
    public static func parse(_ line: Data) throws -> [String: Any] {
        guard let value = try? JSONSerialization.jsonObject(with: line, options: [.fragmentsAllowed]) else {
            throw KDError("not valid JSON")
        }
        guard let object = value as? [String: Any] else { throw KDError("expected a JSON object") }
        return object
    }
}

extension JSONLines.Record {
    /// An array of token ids under `key`, checked element by element: integers in
    /// 0...Int32.max (the trainer holds ids as Int32), or -100 where `allowIgnored` (labels).
    public func tokenIDs(_ key: String, allowIgnored: Bool = false) throws -> [Int]? {
        guard let value = object[key] else { return nil }
        guard let array = value as? [Any] else { throw KDError("\"\(key)\" must be an array of integers") }
        var ids: [Int] = []
        ids.reserveCapacity(array.count)
        for (index, element) in array.enumerated() {
            guard let number = element as? NSNumber, !JSONLines.isBoolean(number),
                  number.doubleValue.isFinite, number.doubleValue == number.doubleValue.rounded(.towardZero) else {
                throw KDError("\"\(key)\"[\(index)] is not an integer")
            }
            // Every id in range is exact in a Double, and rounding keeps anything beyond out of range.
            let double = number.doubleValue
            if double >= 0 && double <= Double(Int32.max) {
                ids.append(Int(double))
            } else if allowIgnored && double == Double(Example.ignored) {
                ids.append(Example.ignored)
            } else {
                throw KDError("\"\(key)\"[\(index)] = \(number) is not a token id (0 to \(Int32.max)"
                    + (allowIgnored ? ", or -100)" : ")"))
            }
        }
        return ids
    }
}

/// The contents of the regular file at `path`; nil when nothing is there and `optional`. A
/// directory, a FIFO, a device or an unreadable file is a one-line KDError naming `path`. The
/// file is opened without blocking and checked before anything is read, so a FIFO cannot hang.
public func readRegularFile(_ path: String, optional: Bool = false) throws -> Data? {
    let fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC)
    guard fd >= 0 else {
        let code = errno
        if code == ENOENT || code == ENOTDIR {
            if optional { return nil }
            throw KDError("\(path): no such file")
        }
        if code == EACCES { throw KDError("\(path): permission denied") }
        throw KDError("\(path): cannot open (\(String(cString: strerror(code))))")
    }
    let handle = FileHandle(fileDescriptor: fd, closeOnDealloc: true)
    var info = stat()
    guard fstat(fd, &info) == 0 else { throw KDError("\(path): cannot read its status") }
    switch info.st_mode & S_IFMT {
    case S_IFREG: break
    case S_IFDIR: throw KDError("\(path): is a directory")
    default: throw KDError("\(path): not a regular file")
    }
    do {
        return try handle.readToEnd() ?? Data()
    } catch {
        throw KDError("\(path): cannot read (\(error.localizedDescription))")
    }
}
