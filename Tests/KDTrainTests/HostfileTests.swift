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
