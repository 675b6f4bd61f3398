import Foundation

/// The one error type kd reports to people and scripts: a single line that names the file,
/// tensor, key or device involved and what is wrong with it.
public struct KDError: Error, CustomStringConvertible, Equatable, Sendable {
    public let message: String

    public init(_ message: String) {
        self.message = message
    }

    public var description: String { message }
}


/// `data` as a JSON object, or a KDError naming `file`.
public func jsonObject(_ data: Data, file: String) throws -> [String: Any] {
    guard let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
        throw KDError("\(file): not a JSON object")
    }
    return object
}

/// The JSON object in the file at `path`, or a KDError naming it.
public func readJSONObject(atPath path: String) throws -> [String: Any] {
    try jsonObject(try InputFile.read(path, limit: 1 << 30), file: path)
}
