import CKernels

/// Work split into parts that run at once on CKernels' helper-thread pool (`kd_run_parts`):
/// part 0 on the calling thread, the others on helpers that spin briefly between jobs, so a
/// job of a few hundred microseconds still gains from a second core. When another caller's job
/// holds the pool, every part runs on the caller, in order.
public enum Parallel {
    /// Runs `body(part)` for part 0..<parts and returns when all have returned.
    public static func parts(_ parts: Int, _ body: (Int) -> Void) {
        if parts <= 1 { return parts == 1 ? body(0) : () }
        withoutActuallyEscaping(body) { body in
            var call = body
            withUnsafeMutablePointer(to: &call) { pointer in
                kd_run_parts(Int32(parts), { context, part in
                    context!.assumingMemoryBound(to: ((Int) -> Void).self).pointee(Int(part))
                }, pointer)
            }
        }
    }

    /// The `part`-th of `parts` consecutive, near-equal ranges of 0..<count.
    public static func range(_ part: Int, of parts: Int, count: Int) -> Range<Int> {
        (count * part / parts)..<(count * (part + 1) / parts)
    }

    /// At most `parts` consecutive ranges of items 0..<n, where item i weighs
    /// `offsets[i + 1] − offsets[i]` (`offsets` ascending, n + 1 values), each cut at the item
    /// boundary nearest to an equal share of the total weight; empty ranges are left out.
    public static func balancedRanges(_ offsets: [Int], parts: Int) -> [Range<Int>] {
        let n = offsets.count - 1, total = offsets[n]
        var ranges: [Range<Int>] = []
        var start = 0
        for part in 1...max(1, parts) {
            var end = start
            if part == parts { end = n } else {
                let share = total * part / parts
                while end < n && offsets[end + 1] <= share { end += 1 }
                if end < n && offsets[end + 1] - share < share - offsets[end] { end += 1 }  // the nearer cut
            }
            if end > start { ranges.append(start..<end) }
            start = end
        }
        return ranges
    }
}
