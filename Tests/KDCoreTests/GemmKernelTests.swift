import Foundation
import Testing
@testable import KDCore
import CKernels

/// CKernels' small-m product for MoE experts, `kd_gemm_nt`: y = scale · x · Wᵀ (+ y) with W [n, k]
/// held as f32 or bf16. Every element is one chain of fused multiply-adds over p in increasing
/// order, so it is the float64 product to within the error of k + 2 roundings, and the chain is
/// the same whatever the weight's dtype, the path (scalar code or AVX2) or the split of the work.
@Suite struct GemmKernelTests {
    /// Operands of one product, every matrix with a row stride wider than its rows. The gaps hold
    /// NaN (x, W) or a sentinel (y), so a read or write outside the matrices shows in the results.
    struct Operands {
        let m, n, k, ldx, ldw, ldy: Int
        var x: [Float], w32: [Float], w16: [UInt16], y: [Float]

        static let gap = Float(bitPattern: 0x7FC0_1234)

        init(m: Int, n: Int, k: Int, seed: UInt64) {
            (self.m, self.n, self.k) = (m, n, k)
            (ldx, ldw, ldy) = (k + 3, k + 5, n + 2)
            var rng = RandomGenerator(seed: seed)
            // One more element at the end of each: never empty, so each has an address.
            x = [Float](repeating: .nan, count: m * ldx + 1)
            w32 = [Float](repeating: .nan, count: n * ldw + 1)
            y = [Float](repeating: Self.gap, count: m * ldy + 1)
            for i in 0..<m { for p in 0..<k { x[i * ldx + p] = rng.nextNormal() } }
            // Values exact in bf16, so both weights hold the same numbers.
            for j in 0..<n {
                for p in 0..<k { w32[j * ldw + p] = Float(bitPattern: rng.nextNormal().bitPattern & 0xFFFF_0000) }
            }
            w16 = w32.map { UInt16($0.bitPattern >> 16) }
            for i in 0..<m { for j in 0..<n { y[i * ldy + j] = rng.nextNormal() } }
        }

        /// y after kd_gemm_nt_width over rows `rows` and columns `columns` of y (rows `columns` of
        /// W), all of them by default, starting from this y.
        func product(width: Int32, bf16: Bool, accumulate: Bool, scale: Float, rows: Range<Int>? = nil,
                     columns: Range<Int>? = nil) -> [Float] {
            var out = y
            let rows = rows ?? 0..<m, columns = columns ?? 0..<n
            out.withUnsafeMutableBufferPointer { yp in
                x.withUnsafeBufferPointer { xp in
                    let (xBase, yBase) = (xp.baseAddress! + rows.lowerBound * ldx, yp.baseAddress! + rows.lowerBound * ldy)
                    let call = { (w: UnsafeRawPointer) in
                        kd_gemm_nt_width(width, rows.count, columns.count, k, xBase, ldx, w, bf16 ? 1 : 0, ldw,
                                         yBase + columns.lowerBound, ldy, accumulate ? 1 : 0, scale)
                    }
                    if bf16 {
                        w16.withUnsafeBytes { call($0.baseAddress! + columns.lowerBound * ldw * 2) }
                    } else {
                        w32.withUnsafeBytes { call($0.baseAddress! + columns.lowerBound * ldw * 4) }
                    }
                }
            }
            return out
        }
    }

    /// Shapes that reach every edge of the AVX2 path: m, n or k zero or one; m around and past
    /// the micro-kernels' 6 rows (split as 4 + 3, 5 + 4 + 4, 4 + 4, …, so every row count from 1 to
    /// 6 occurs) and the 144-row blocks; n around the 16-column panels; k around the 8-column
    /// packing steps and the 256-column blocks (one, two and three of them).
    static let shapes: [(m: Int, n: Int, k: Int)] = [
        (0, 5, 3), (3, 0, 4), (4, 17, 0), (1, 1, 1), (7, 16, 1), (6, 33, 9), (13, 15, 8), (5, 40, 257),
        (150, 20, 600), (8, 48, 523), (289, 18, 31), (12, 64, 256), (2, 31, 300),
    ]

    /// The paths of this build: scalar code, and AVX2 wherever the package is built for x86-64.
    static var widths: [Int32] { kd_gemm_nt_widest() == 256 ? [0, 256] : [0] }

    @Test func x86BuildsHaveTheAVX2Path() {
        #if arch(x86_64)
        #expect(kd_gemm_nt_widest() == 256)
        #endif
    }

    /// Every element within γ_{k+2}·(|scale|·Σₚ|x·w| + |y|) of the float64 value: the sum of k
    /// products through k fused roundings, then one rounding for the scale and one for adding y
    /// (plus one tiny absolute error per rounding that underflows, and the float64 reference's
    /// own rounding). The gaps between rows are left alone.
    @Test(arguments: shapes)
    func isTheProductToRoundingError(shape: (m: Int, n: Int, k: Int)) {
        let a = Operands(m: shape.m, n: shape.n, k: shape.k, seed: UInt64(shape.m * 1000 + shape.n * 10 + shape.k))
        let u = 0x1p-24
        let gamma = Double(a.k + 2) * u / (1 - Double(a.k + 2) * u)
        for width in Self.widths {
            for (accumulate, scale) in [(false, Float(0.75)), (true, Float(-2))] {
                let y = a.product(width: width, bf16: false, accumulate: accumulate, scale: scale)
                for i in 0..<a.m {
                    for j in 0..<a.n {
                        var exact = 0.0, magnitude = 0.0
                        for p in 0..<a.k {
                            let term = Double(a.x[i * a.ldx + p]) * Double(a.w32[j * a.ldw + p])
                            exact += term
                            magnitude += abs(term)
                        }
                        let start = accumulate ? Double(a.y[i * a.ldy + j]) : 0
                        let want = Double(scale) * exact + start
                        let bound = gamma * (abs(Double(scale)) * magnitude + abs(start)) + Double(a.k + 2) * 0x1p-150
                            + Double(a.k) * 0x1p-53 * abs(Double(scale)) * magnitude
                        #expect(abs(Double(y[i * a.ldy + j]) - want) <= bound,
                                "width \(width), m \(a.m) n \(a.n) k \(a.k), element (\(i), \(j))")
                    }
                    for j in a.n..<a.ldy { #expect(y[i * a.ldy + j].bitPattern == Operands.gap.bitPattern) }
                }
                #expect(y.last!.bitPattern == Operands.gap.bitPattern)
            }
        }
    }

    /// A bf16 weight is widened exactly and summed in the same order as the f32 one.
    @Test(arguments: shapes)
    func bf16WeightGivesTheBitsOfTheSameValuesInF32(shape: (m: Int, n: Int, k: Int)) {
        let a = Operands(m: shape.m, n: shape.n, k: shape.k, seed: UInt64(shape.k * 7 + shape.n))
        for width in Self.widths {
            for accumulate in [false, true] {
                let f32 = a.product(width: width, bf16: false, accumulate: accumulate, scale: 1.5)
                let bf16 = a.product(width: width, bf16: true, accumulate: accumulate, scale: 1.5)
                #expect(f32.map(\.bitPattern) == bf16.map(\.bitPattern), "width \(width)")
            }
        }
    }

    /// The AVX2 path gives the bits of the scalar code (three loops of fmaf), on both dtypes.
    @Test(arguments: shapes)
    func pathsGiveTheSameBits(shape: (m: Int, n: Int, k: Int)) {
        let a = Operands(m: shape.m, n: shape.n, k: shape.k, seed: UInt64(shape.m + shape.k * 3))
        for bf16 in [false, true] {
            for accumulate in [false, true] {
                let results = Self.widths.map {
                    a.product(width: $0, bf16: bf16, accumulate: accumulate, scale: -0.5).map(\.bitPattern)
                }
                for (width, result) in zip(Self.widths, results) { #expect(result == results[0], "width \(width)") }
            }
        }
    }

    /// Rows [0, 7) and [7, 11), the second cut into columns [0, 21) and [21, 40), in three calls
    /// run on three threads at once, give the bits of one call: the cuts fall inside a six-row
    /// micro-tile and a 16-column panel, and the calls share no state.
    @Test func splitsOverThreadsGiveTheSameBits() {
        let a = Operands(m: 11, n: 40, k: 300, seed: 5)
        let parts = [(0..<7, 0..<40), (7..<11, 0..<21), (7..<11, 21..<40)]
        for bf16 in [false, true] {
            let whole = a.product(width: 256, bf16: bf16, accumulate: true, scale: 0.25)
            let results = UnsafeMutablePointer<[Float]>.allocate(capacity: parts.count)
            defer { results.deallocate() }
            DispatchQueue.concurrentPerform(iterations: parts.count) { part in
                let (rows, columns) = parts[part]
                (results + part).initialize(
                    to: a.product(width: 256, bf16: bf16, accumulate: true, scale: 0.25, rows: rows, columns: columns))
            }
            var joined = a.y
            for (part, (rows, columns)) in parts.enumerated() {
                for i in rows { for j in columns { joined[i * a.ldy + j] = results[part][i * a.ldy + j] } }
            }
            results.deinitialize(count: parts.count)
            #expect(joined.map(\.bitPattern) == whole.map(\.bitPattern))
        }
    }

    /// With k = 0 every element is scale · (+0), added to y when accumulating: -0 for a negative
    /// scale, and y itself.
    @Test func emptySumIsScaledZero() {
        let a = Operands(m: 7, n: 19, k: 0, seed: 9)
        for width in Self.widths {
            for accumulate in [false, true] {
                let y = a.product(width: width, bf16: false, accumulate: accumulate, scale: -3)
                let want = (0..<(a.m * a.ldy + 1)).map { index -> Float in
                    index / a.ldy >= a.m || index % a.ldy >= a.n ? Operands.gap : accumulate ? a.y[index] + -3 * 0 : -3 * 0
                }
                #expect(y.map(\.bitPattern) == want.map(\.bitPattern))
            }
        }
    }
}
