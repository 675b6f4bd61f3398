import Foundation
import Testing
@testable import KDCore
import CKernels

/// Products with a weight held as bf16 are the products with the same weight held as f32: bit for
/// bit in the panelled sgemm paths (several rows); in the single-row paths (sgemv and the bf16
/// kernel) each is the float64 product to within f32 summation error.
@Suite struct WeightProductsTests {
    /// W [out, in] with values exact in bf16 (so the f32 and bf16 tensors hold the same numbers),
    /// as f32 and as bf16, and x [rows, in].
    static func operands(out: Int, in inFeatures: Int, rows: Int, seed: UInt64) throws -> (f32: Tensor, bf16: Tensor, x: [Float]) {
        var rng = RandomGenerator(seed: seed)
        let device = Device(id: 0)
        let values = (0..<(out * inFeatures)).map { _ in Float(bitPattern: (rng.nextNormal() * 0.3).bitPattern & 0xFFFF_0000) }
        let f32 = try Tensor(values, shape: [out, inFeatures], on: device)
        let x = (0..<(rows * inFeatures)).map { _ in rng.nextNormal() }
        return (f32, try f32.converted(to: .bf16), x)
    }

    /// Panels: out 1,300 is two full panels of 512 rows and a part; `in` 67 is not a multiple of 8.
    @Test(arguments: [(1300, 67, 5), (513, 200, 2), (40, 33, 17)])
    func panelledProductsAreBitIdentical(shape: (out: Int, in: Int, rows: Int)) throws {
        let (out, inFeatures, rows) = shape
        let (w32, w16, x) = try Self.operands(out: out, in: inFeatures, rows: rows, seed: UInt64(out))
        #expect(w16.dtype == .bf16 && w16.byteCount == out * inFeatures * 2)
        for accumulate in [false, true] {
            var y32 = [Float](repeating: 0.5, count: rows * out), y16 = y32
            try WeightProducts.linear(x, rows: rows, weight: w32, into: &y32, accumulate: accumulate, scale: 0.75)
            try WeightProducts.linear(x, rows: rows, weight: w16, into: &y16, accumulate: accumulate, scale: 0.75)
            #expect(y32.map(\.bitPattern) == y16.map(\.bitPattern))
            // And they are the product: each element within f32 summation error of float64.
            let w = w32.toArray()
            for r in [0, rows - 1] {
                for o in [0, out / 2, out - 1] {
                    var exact = 0.0, magnitude = 0.0
                    for i in 0..<inFeatures {
                        exact += Double(x[r * inFeatures + i]) * Double(w[o * inFeatures + i])
                        magnitude += abs(Double(x[r * inFeatures + i]) * Double(w[o * inFeatures + i]))
                    }
                    let want = 0.75 * exact + (accumulate ? 0.5 : 0)
                    #expect(abs(Double(y32[r * out + o]) - want) <= Double(inFeatures + 3) * 0x1p-24 * (magnitude + 1))
                }
            }

            let dy = (0..<(rows * out)).map { Float($0 % 7) - 3 }
            var dx32 = [Float](repeating: 0.25, count: rows * inFeatures), dx16 = dx32
            try WeightProducts.backward(dy, rows: rows, weight: w32, into: &dx32, accumulate: accumulate)
            try WeightProducts.backward(dy, rows: rows, weight: w16, into: &dx16, accumulate: accumulate)
            #expect(dx32.map(\.bitPattern) == dx16.map(\.bitPattern))
            var exact = accumulate ? 0.25 : 0.0, magnitude = 0.0
            for o in 0..<out {
                exact += Double(dy[o]) * Double(w[o * inFeatures])
                magnitude += abs(Double(dy[o]) * Double(w[o * inFeatures]))
            }
            #expect(abs(Double(dx32[0]) - exact) <= Double(out + 3) * 0x1p-24 * (magnitude + 1))
        }
    }

    /// One row (decoding): sgemv and the bf16 kernel sum the same exact products in f32, in their
    /// own orders, each within γₙ·Σ|wᵢxᵢ| of the float64 sum. Widths cover the kernel's 32-column
    /// steps, a last 16-column block and a scalar tail.
    @Test(arguments: [(1, 5), (70, 1031), (700, 64), (3, 4096), (517, 48), (9, 16)])
    func singleRowIsTheProductToSummationOrder(shape: (out: Int, in: Int)) throws {
        let (out, inFeatures) = shape
        let (w32, w16, x) = try Self.operands(out: out, in: inFeatures, rows: 1, seed: 7)
        var y32 = [Float](repeating: 1, count: out), y16 = y32
        try WeightProducts.linear(x, rows: 1, weight: w32, into: &y32, accumulate: true, scale: 2)
        try WeightProducts.linear(x, rows: 1, weight: w16, into: &y16, accumulate: true, scale: 2)
        let w = w32.toArray()
        let gamma = Double(inFeatures + 2) * 0x1p-24 / (1 - Double(inFeatures + 2) * 0x1p-24)
        for o in 0..<out {
            var exact = 0.0, magnitude = 0.0
            for i in 0..<inFeatures {
                exact += Double(x[i]) * Double(w[o * inFeatures + i])
                magnitude += abs(Double(x[i]) * Double(w[o * inFeatures + i]))
            }
            let bound = gamma * (2 * magnitude + 1) + 0x1p-24 * abs(2 * exact + 1)
            #expect(abs(Double(y16[o]) - (2 * exact + 1)) <= bound, "row \(o)")
            #expect(abs(Double(y32[o]) - (2 * exact + 1)) <= bound, "row \(o)")
        }
    }

    /// The bf16 kernel's paths (scalar code, AVX2, AVX-512: those this CPU has) sum in one order,
    /// so they give the same bits; row counts cover the four-row groups and the rows left over,
    /// widths a scalar tail and none, accumulate and not.
    @Test(arguments: [(1, 5), (7, 1031), (1027, 64), (13, 4096), (517, 48), (9, 16), (2048, 24)])
    func bf16PathsAreBitIdentical(shape: (out: Int, in: Int)) throws {
        let (out, inFeatures) = shape
        let (_, w16, x) = try Self.operands(out: out, in: inFeatures, rows: 1, seed: UInt64(out + inFeatures))
        let widths = [Int32(0), 256, 512].filter { $0 <= WeightProducts.gemvBF16Widest }
        for accumulate in [false, true] {
            let start = (0..<out).map { Float($0 % 5) - 2 }
            let results = widths.map { width in
                var y = start
                WeightProducts.gemvBF16(w16, x: x, into: &y, accumulate: accumulate, scale: 0.75, width: width)
                return y.map(\.bitPattern)
            }
            for (width, result) in zip(widths, results) { #expect(result == results[0], "width \(width)") }
        }
    }

    @Test func gatheredRowsAreWidenedExactly() throws {
        let (w32, w16, _) = try Self.operands(out: 50, in: 19, rows: 1, seed: 3)
        let ids = [49, 0, 7, 7]
        var from32 = [Float](repeating: .nan, count: ids.count * 19), from16 = from32
        WeightProducts.gatherRows(w32, ids: ids, into: &from32)
        WeightProducts.gatherRows(w16, ids: ids, into: &from16)
        let w = w32.toArray()
        let want = ids.flatMap { w[($0 * 19)..<($0 * 19 + 19)] }
        #expect(from32 == want && from16 == want)
    }
}

/// CKernels' helper-thread pool (`kd_run_parts`): every part of every job runs exactly once and
/// has returned when the call returns, with two callers at once (one of them finds the pool busy
/// and runs its parts itself) and part counts above and below the helpers started so far.
@Suite struct HelperPoolTests {
    @Test func everyPartRunsOnceBeforeTheCallReturns() async {
        await withTaskGroup(of: Bool.self) { group in
            for caller in 0..<2 {
                group.addTask {
                    let counts = UnsafeMutablePointer<Int>.allocate(capacity: 8)
                    defer { counts.deallocate() }
                    for job in 0..<3000 {
                        let parts = 1 + (job + caller) % 8
                        counts.initialize(repeating: 0, count: 8)
                        kd_run_parts(Int32(parts), { context, part in
                            context!.assumingMemoryBound(to: Int.self)[Int(part)] += 1
                        }, counts)
                        for part in 0..<8 where counts[part] != (part < parts ? 1 : 0) { return false }
                    }
                    return true
                }
            }
            for await ok in group { #expect(ok) }
        }
    }
}
