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

