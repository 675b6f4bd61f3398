import Foundation
import Testing
import KDCore
@testable import KDTrain

/// `kd plan --hostfile`: Open MPI's hostfile, and where mpirun's default by-slot mapping puts ranks.
@Suite struct HostfileTests {
    static func write(_ text: String) -> String {
        let path = (NSTemporaryDirectory() as NSString).appendingPathComponent("kd-hostfile-\(UUID().uuidString)")
        FileManager.default.createFile(atPath: path, contents: Data(text.utf8))
        return path
    }

    @Test func slotsFillHostsInOrderAndWrapWhenOversubscribed() throws {
        let path = Self.write("# two big hosts and a small one\nnode01 slots=3\n\n  node02\tslots=2 max_slots=4 # comment\nnode03\nnode02 slots=1\n")
        defer { try? FileManager.default.removeItem(atPath: path) }
        let hosts = try Hostfile(path: path)
        #expect(hosts.hosts.map(\.name) == ["node01", "node02", "node03"])
        #expect(hosts.hosts.map(\.slots) == [3, 3, 1])
        #expect(hosts.slots == 7)
        #expect(hosts.placement(ranks: 9) == [0, 0, 0, 1, 1, 1, 2, 0, 1])
    }

    /// Placing ranks costs the ranks, not the slots, and naming a host again costs no search: two
    /// thousand hosts of 2^20 slots each, and 100,000 lines naming 10 hosts.
    @Test func largeHostfilesArePlacedByTheRanks() throws {
        let big = Self.write((0..<2000).map { "node\($0) slots=\(Hostfile.maximumSlots)\n" }.joined())
        let repeated = Self.write((0..<100_000).map { "node\($0 % 10)\n" }.joined())
        defer { for path in [big, repeated] { try? FileManager.default.removeItem(atPath: path) } }
        let hosts = try Hostfile(path: big)
        #expect(hosts.slots == 2000 * Hostfile.maximumSlots)
        #expect(hosts.placement(ranks: 3) == [0, 0, 0])
        let named = try Hostfile(path: repeated)
        #expect(named.hosts.count == 10 && named.hosts.allSatisfy { $0.slots == 10_000 })
    }

    @Test(arguments: ["node01 slots=0\n", "node01 slots=x\n", "# nothing\n\n", "node01 slots=99999999999999999999\n"])
    func badHostfilesAreOneLineErrors(text: String) throws {
        let path = Self.write(text)
        defer { try? FileManager.default.removeItem(atPath: path) }
        #expect(throws: KDError.self) { try Hostfile(path: path) }
        do { _ = try Hostfile(path: path) } catch let error as KDError {
            #expect(error.message.hasPrefix(path + ": ") && !error.message.contains("\n"), "\(error.message)")
        }
    }
}
