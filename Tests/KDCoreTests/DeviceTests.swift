import Foundation
import Testing
@testable import KDCore

@Suite struct DeviceTests {
    @Test func cachingAllocatorReusesFreedBuffers() throws {
        let device = Device(id: 0)
        var pointer: UnsafeMutablePointer<Float>?
        do {
            let t = try Tensor.zeros([1000, 100], on: device)
            pointer = t.data
            #expect(device.allocatedBytes >= 400_000)
        }
        #expect(device.allocatedBytes == 0)
        #expect(device.cachedBytes >= 400_000)
        let again = try Tensor(uninitializedShape: [100, 1000], on: device)
        #expect(again.data == pointer)
        #expect(device.peakBytes >= 400_000)
    }

    @Test func cacheReusesLargerBuffersAndKeepsAtMostThePeak() throws {
        let device = Device(id: 1)
        var pointer: UnsafeMutablePointer<Float>?
        do { pointer = try Tensor(uninitializedShape: [250_000], on: device).data }  // 1 MB, now cached
        // A smaller request takes the cached buffer when it is at most twice the size.
        let smaller = try Tensor(uninitializedShape: [150_000], on: device)
        #expect(smaller.data == pointer)
        #expect(device.allocatedBytes == Device.sizeClass(1_000_000) && device.cachedBytes == 0)
        // Requests in ever new size classes: without eviction each would stay cached.
        for count in stride(from: 300_000, through: 3_000_000, by: 300_000) {
            _ = try Tensor(uninitializedShape: [count], on: device)
            #expect(device.cachedBytes <= device.peakBytes)
        }
        #expect(device.cachedBytes > 0)
    }

    @Test func budgetIsEnforcedWithNumbers() throws {
        let device = Device(id: 3, capacity: 1 << 20)
        let held = try Tensor.zeros([200_000], on: device)
        #expect(throws: KDError.self) { _ = try Tensor.zeros([200_000], on: device) }
        do {
            _ = try Tensor.zeros([200_000], on: device)
        } catch let error as KDError {
            #expect(error.message.hasPrefix("device 3: out of memory allocating"))
            #expect(error.message.contains("1.00 MiB budget"))
        }
        _ = held
    }

    @Test func crossDeviceOpsFailAndToCopies() throws {
        let a = Device(id: 0), b = Device(id: 1)
        let x = try Tensor([1, 2, 3, 4], shape: [2, 2], on: a)
        let y = try Tensor([1, 2, 3, 4], shape: [2, 2], on: b)
        #expect(throws: KDError("add: tensors on different devices (device 0 and device 1); copy one across with to(device)")) {
            try requireSameDevice(x, y, op: "add")
        }
        let moved = try x.to(b)
        #expect(moved.device === b)
        #expect(moved.toArray() == [1, 2, 3, 4])
        try requireSameDevice(moved, y, op: "add")
    }

    @Test func aDeviceOfAnotherRankHoldsAndRunsNothingHere() throws {
        let here = Device(id: 0)
        let there = Device(id: 6, capacity: 1 << 20, backend: RankBackend(rank: 3, of: .single))
        #expect(here.isLocal && !there.isLocal)
        #expect("\(there)" == "device 6 (on rank 3)")
        let refusal = KDError("device 6 (on rank 3): its memory is that rank's; a tensor reaches it by send(to:tag:)")
        #expect(throws: refusal) { _ = try Tensor.zeros([4], on: there) }
        let x = try Tensor([1, 2], shape: [2], on: here)
        #expect(throws: refusal) { _ = try x.to(there) }
        #expect(there.allocatedBytes == 0)
        #expect(throws: KDError("device on rank 3: its work runs on that rank")) { try there.run { 1 } }
        // Within a process tensors cross by to(), not by messages; across, a message needs a job.
        #expect(throws: KDError("send(to:): a tensor on device 0 goes to device 1 by to(device), not by a message")) {
            try x.send(to: Device(id: 1), tag: 0)
        }
        #expect(throws: KDError("MPI: a send needs an MPI job")) { try x.send(to: there, tag: 0) }
        #expect(throws: KDError("MPI: a receive needs an MPI job")) { try x.receive(from: there, tag: 0) }
    }

    /// Work on a device reaches only that device's memory; another device's tensors come by to().
    @Test func workOnADeviceReachesOnlyItsOwnMemory() async throws {
        let a = Device(id: 0), b = Device(id: 1)
        let x = try Tensor([5, 6], shape: [2], on: b)
        let copied = try a.run { try x.to(a) }
        #expect(copied.device === a && copied.toArray() == [5, 6])
        #expect(try b.run { x.data[1] } == 6)
        await #expect(processExitsWith: .failure) {
            let a = Device(id: 0), b = Device(id: 1)
            let x = try Tensor([5, 6], shape: [2], on: b)
            _ = try a.run { x.data[0] }
        }
    }

    @Test func runExecutesOnTheDeviceThread() throws {
        let device = Device(id: 5)
        let first = try device.run { pthread_self() }
        let second = try device.run { pthread_self() }
        #expect(pthread_equal(first, pthread_self()) == 0)
        #expect(pthread_equal(first, second) != 0)
        #expect(throws: KDError.self) { try device.run { throw KDError("inside") } }
        // Nested runs on the same device do not deadlock.
        let nested = try device.run { try device.run { 7 } }
        #expect(nested == 7)
    }

    @Test func sizeClassesAreTightAndMonotonic() {
        var previous = 0
        for bytes in stride(from: 1, to: 5_000_000, by: 997) {
            let size = Device.sizeClass(bytes)
            #expect(size >= bytes)
            #expect(size >= previous)
            #expect(Double(size) <= Double(max(bytes, 64)) * 1.125 + 64)
            previous = size
        }
    }

    @Test func partitionBalancesAndPinsEnds() {
        // embed, 4 equal layers, head
        let weights = [4, 10, 10, 10, 10, 4]
        #expect(balancedContiguousPartition(weights, parts: 1) == [0..<6])
        let two = balancedContiguousPartition(weights, parts: 2)
        #expect(two == [0..<3, 3..<6])
        let three = balancedContiguousPartition(weights, parts: 3)
        #expect(three.map(\.count).reduce(0, +) == 6)
        #expect(three.first!.contains(0) && three.last!.contains(5))
        // More parts than items: middle parts may be empty, the ends still hold embed and head.
        let many = balancedContiguousPartition([1, 5, 1], parts: 6)
        #expect(many.count == 6)
        #expect(many.first!.contains(0) && many.last!.contains(2))
        #expect(many.map(\.count).reduce(0, +) == 3)
    }
}
