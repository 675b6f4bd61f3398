import Foundation

/// A byte count written for people: `80GiB`, `512MiB`, `1.5GB`, `4096`.
public struct ByteSize: Equatable, Sendable, CustomStringConvertible {
    public let bytes: Int

    /// The largest size kd reads from a config: 1 EiB.
    public static let maximum = 1 << 60

    public init(bytes: Int) { self.bytes = bytes }

    public init?(parsing text: String) {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        let units: [(String, Double)] = [
            ("TiB", 0x1p40), ("GiB", 0x1p30), ("MiB", 0x1p20), ("KiB", 0x1p10),
            ("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3), ("kB", 1e3), ("B", 1),
        ]
        var number = trimmed
        var factor = 1.0
        for (suffix, value) in units where trimmed.hasSuffix(suffix) {
            number = String(trimmed.dropLast(suffix.count)).trimmingCharacters(in: .whitespaces)
            factor = value
            break
        }
        guard let value = Double(number), value >= 0, value * factor <= Double(ByteSize.maximum) else { return nil }
        bytes = Int((value * factor).rounded())
    }

    public var description: String { formatBytes(bytes) }
}

/// Formats a byte count for people: "1.50 GiB", "512.0 MiB", "17 B".
public func formatBytes(_ bytes: Int) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"]
    var value = Double(bytes)
    var unit = 0
    while abs(value) >= 1024, unit < units.count - 1 {
        value /= 1024
        unit += 1
    }
    return unit == 0 ? "\(bytes) B" : String(format: "%.2f %@", value, units[unit])
}

extension Duration {
    /// The duration in seconds, as a Double.
    public var seconds: Double { Double(components.seconds) + Double(components.attoseconds) * 1e-18 }
}
