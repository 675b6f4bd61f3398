/// An ordered set of devices that one model is placed on.
public final class DeviceGroup: @unchecked Sendable {
    public let devices: [Device]

    public init(_ devices: [Device]) throws {
        guard !devices.isEmpty else { throw KDError("a device group needs at least one device") }
        guard Set(devices.map(ObjectIdentifier.init)).count == devices.count else {
            throw KDError("a device group lists \(devices.map(\.description)) with a repeat")
        }
        self.devices = devices
    }

    /// `count` fresh devices with ids 0..<count, each with the same budget.
    public static func make(count: Int, capacity: Int? = nil) throws -> DeviceGroup {
        guard count >= 1 else { throw KDError("device count must be at least 1, got \(count)") }
        return try DeviceGroup((0..<count).map { Device(id: $0, capacity: capacity) })
    }

    public var first: Device { devices[0] }
    public var last: Device { devices[devices.count - 1] }
    public var count: Int { devices.count }
}

/// Splits `weights` (in order) into `parts` contiguous ranges, minimising the heaviest range.
/// The first range always holds the first item and the last range the last item; ranges in
/// between may be empty when there are more parts than items to spread. Ties go to the split
/// that fills earlier parts first, so the result is deterministic.
public func balancedContiguousPartition(_ weights: [Int], parts: Int) -> [Range<Int>] {
    let n = weights.count
    precondition(parts >= 1 && n >= 1)
    if parts == 1 { return [0..<n] }
    var prefix = [0]
    for w in weights { prefix.append(prefix.last! + w) }
    func load(_ range: Range<Int>) -> Int { prefix[range.upperBound] - prefix[range.lowerBound] }

    // cost[k][i]: the best heaviest-part weight for items 0..<i in parts 0...k; part 0 is non-empty.
    let unset = Int.max
    var cost = [[Int]](repeating: [Int](repeating: unset, count: n + 1), count: parts)
    var split = [[Int]](repeating: [Int](repeating: 0, count: n + 1), count: parts)
    for i in 1...n { cost[0][i] = load(0..<i) }
    for k in 1..<parts {
        let lastPart = k == parts - 1
        for i in 1...n {
            // Part k holds j..<i; the final part must reach the end and hold the last item.
            if lastPart && i != n { continue }
            for j in stride(from: i, through: 1, by: -1) {
                if lastPart && j == n { continue }
                guard cost[k - 1][j] != unset else { continue }
                let candidate = max(cost[k - 1][j], load(j..<i))
                if candidate < cost[k][i] {
                    cost[k][i] = candidate
                    split[k][i] = j
                }
            }
        }
    }
    var ranges = [Range<Int>](repeating: 0..<0, count: parts)
    var end = n
    for k in stride(from: parts - 1, through: 1, by: -1) {
        let start = split[k][end]
        ranges[k] = start..<end
        end = start
    }
    ranges[0] = 0..<end
    return ranges
}
