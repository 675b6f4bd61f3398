import Foundation
import KDCore

/// An Open MPI hostfile: one host per line with its slots (`node01 slots=4`; `#` starts a comment;
/// a host without `slots=` has one; a host named twice adds its slots), and where mpirun's default
/// mapping (by slot) puts each rank: the first host's slots in order, then the next host's, and
/// round the hosts again when there are more ranks than slots (mpirun needs --oversubscribe then).
public struct Hostfile: Sendable {
    public let path: String
    public let hosts: [(name: String, slots: Int)]

    public static let maximumSlots = 1 << 20

    public init(path: String) throws {
        self.path = path
        let text = String(decoding: try InputFile.read(path, limit: 1 << 20), as: UTF8.self)
        var hosts: [(name: String, slots: Int)] = []
        var position: [String: Int] = [:]
        for (index, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = rawLine.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
            let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\r" })
            guard let name = words.first else { continue }
            var slots = 1
            for word in words.dropFirst() where word.hasPrefix("slots=") {
                guard let value = Int(word.dropFirst("slots=".count)), value >= 1, value <= Self.maximumSlots else {
                    throw KDError("\(path): line \(index + 1): \(quoted(String(word), limit: 60)) must be slots=N with N from 1 to \(Self.maximumSlots)")
                }
                slots = value
            }
            if let existing = position[String(name)] {
                hosts[existing].slots = min(Self.maximumSlots, hosts[existing].slots + slots)
            } else {
                position[String(name)] = hosts.count
                hosts.append((String(name), slots))
            }
        }
        guard !hosts.isEmpty else { throw KDError("\(path): names no host") }
        self.hosts = hosts
    }

    public var slots: Int { hosts.reduce(0) { $0 + $1.slots } }

    /// The host index of each of `ranks` ranks (work and memory in the ranks, not the slots).
    public func placement(ranks: Int) -> [Int] {
        var out: [Int] = []
        out.reserveCapacity(ranks)
        for (index, host) in hosts.enumerated() where out.count < ranks {
            out.append(contentsOf: repeatElement(index, count: min(host.slots, ranks - out.count)))
        }
        for extra in 0..<(ranks - out.count) { out.append(extra % hosts.count) }
        return out
    }
}
