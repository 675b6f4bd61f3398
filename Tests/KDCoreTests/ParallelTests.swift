import Testing

@testable import KDCore

/// `Parallel`: how work is cut into parts, and that every part runs once.
@Suite struct ParallelTests {
    @Test func rangesCoverTheCountInOrder() {
        for count in [0, 1, 5, 7, 100] {
            for parts in 1...4 {
                let ranges = (0..<parts).map { Parallel.range($0, of: parts, count: count) }
                #expect(ranges.first?.lowerBound == 0 && ranges.last?.upperBound == count)
                for (a, b) in zip(ranges, ranges.dropFirst()) { #expect(a.upperBound == b.lowerBound) }
                #expect(ranges.allSatisfy { $0.count <= (count + parts - 1) / parts })
            }
        }
    }

    @Test func balancedRangesCutAtTheNearestBoundary() {
        // Weights 3, 0, 1, 4, 0 (offsets are their running sums).
        let offsets = [0, 3, 3, 4, 8, 8]
        #expect(Parallel.balancedRanges(offsets, parts: 1) == [0..<5])
        #expect(Parallel.balancedRanges(offsets, parts: 2) == [0..<3, 3..<5])  // 4 | 4
        // One heavy item: the cut still falls next to it rather than leaving one part everything.
        #expect(Parallel.balancedRanges([0, 100, 101, 102], parts: 2) == [0..<1, 1..<3])
        // More parts than items: empty ranges are dropped; every item is in exactly one range.
        let ranges = Parallel.balancedRanges([0, 1, 2], parts: 4)
        #expect(ranges.flatMap { Array($0) } == [0, 1])
        #expect(Parallel.balancedRanges([0], parts: 3).isEmpty)
    }

    @Test func everyPartRunsOnce() {
        for parts in [0, 1, 2, 3, 9] {
            var counts = [Int](repeating: 0, count: 9)
            counts.withUnsafeMutableBufferPointer { buffer in
                let base = buffer.baseAddress!
                Parallel.parts(parts) { base[$0] += 1 }
            }
            #expect(counts == (0..<9).map { $0 < parts ? 1 : 0 })
        }
    }
}
