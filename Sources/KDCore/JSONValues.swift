import Foundation

/// Strict reading of values from `JSONSerialization`, which hands out every number and boolean as
/// an NSNumber that converts to any of Bool, Int and Double: here `true` is not 1, 2.5 is not an
/// integer, and an integer beyond Int is not silently clamped.
public enum JSONValue {
    public static func isBoolean(_ number: NSNumber) -> Bool { String(cString: number.objCType) == "c" }

    /// A JSON boolean, or nil for anything else.
    public static func bool(_ value: Any?) -> Bool? {
        guard let number = value as? NSNumber, isBoolean(number) else { return nil }
        return number.boolValue
    }

    /// A JSON integer that fits Int, or nil for anything else.
    public static func int(_ value: Any?) -> Int? {
        guard let number = value as? NSNumber, !isBoolean(number) else { return nil }
        return value as? Int
    }

    /// A finite JSON number, or nil for anything else.
    public static func number(_ value: Any?) -> Double? {
        guard let number = value as? NSNumber, !isBoolean(number), number.doubleValue.isFinite else { return nil }
        return number.doubleValue
    }
}

/// Typed access to the keys of a JSON object read from `file`: a key that is absent (or null)
/// gives nil; a key that is present with the wrong type is a one-line error naming file and key.
public struct JSONFields {
    public let object: [String: Any]
    public let file: String

    public init(_ object: [String: Any], file: String) {
        self.object = object
        self.file = file
    }

    private func present(_ key: String) -> Any? {
        guard let value = object[key], !(value is NSNull) else { return nil }
        return value
    }

    private func wrong(_ key: String, _ expected: String) -> KDError {
        KDError("\(file): \(key) must be \(expected)")
    }

    /// The value at `key` converted by `convert`; nil when absent or null, an error naming the key
    /// and `expected` when it is of another type.
    private func typed<T>(_ key: String, _ expected: String, _ convert: (Any) -> T?) throws -> T? {
        guard let value = present(key) else { return nil }
        guard let typed = convert(value) else { throw wrong(key, expected) }
        return typed
    }

    public func int(_ key: String) throws -> Int? { try typed(key, "an integer", JSONValue.int) }
    public func number(_ key: String) throws -> Double? { try typed(key, "a number", JSONValue.number) }
    public func bool(_ key: String) throws -> Bool? { try typed(key, "true or false", JSONValue.bool) }
    public func string(_ key: String) throws -> String? { try typed(key, "a string") { $0 as? String } }

    public func strings(_ key: String) throws -> [String]? {
        guard let value = present(key) else { return nil }
        guard let strings = value as? [String] else { throw wrong(key, "a list of strings") }
        return strings
    }
}
