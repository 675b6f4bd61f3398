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
    public init(path: String, skipBad: Bool = false) throws {
        let data: Data
        if path == "-" {
            data = FileHandle.standardInput.readDataToEndOfFile()
        } else {
            guard let contents = FileManager.default.contents(atPath: path) else {
                throw KDError("\(path): no such file")
            }
            data = contents
        }
        try self.init(data: data, name: path, skipBad: skipBad)
    }

    public init(data: Data, name: String, skipBad: Bool = false) throws {
        path = name
        var records: [Record] = []
        var skipped: [(Int, String)] = []
        var lineNumber = 0
        for line in data.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) {
            lineNumber += 1
            if line.allSatisfy({ $0 == 0x20 || $0 == 0x09 || $0 == 0x0D }) { continue }
            do {
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
    /// An array of integer token ids under `key`, checked element by element.
    public func tokenIDs(_ key: String) throws -> [Int]? {
        guard let value = object[key] else { return nil }
        guard let array = value as? [Any] else { throw KDError("\"\(key)\" must be an array of integers") }
        return try array.enumerated().map { index, element in
            guard let number = element as? NSNumber, !JSONLines.isBoolean(number), let id = Int(exactly: number.doubleValue)
            else {
                throw KDError("\"\(key)\"[\(index)] is not an integer")
            }
            return id
        }
    }
}
