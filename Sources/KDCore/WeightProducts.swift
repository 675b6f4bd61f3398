import CKernels
import Foundation

/// Products with a frozen weight matrix W [out, in] held as f32 or as bf16 (a bf16 checkpoint is
/// never widened as a whole).
///
/// With activations of several rows the work goes to sgemm in panels of `panelRows` rows of W:
/// a bf16 panel is widened into a reused f32 buffer first (exact: a bf16 value is the top half of
/// an f32), an f32 panel is used where it lies. Both dtypes make the same sgemm calls on the same
/// values, so their results are identical bit for bit on any machine:
/// - `linear` splits W's rows, i.e. the output columns; each output element is still one
///   sgemm dot product over all of `in`;
/// - `backward` splits the sum over `out` into panels accumulated one after another (beta 1).
/// A single row (decoding, or a MoE expert given one token) is memory-bound: f32 goes to sgemv,
/// bf16 to `gemvBF16`, which reads half the bytes. Both sum the same exact products in f32, in
/// different orders, so there the dtypes agree to f32 summation error, not bit for bit.
public enum WeightProducts {
    /// Rows of W per panel: 512 rows of a 4,096-wide layer are an 8 MiB f32 buffer, and the
    /// activations are packed again once per panel, a few percent of the panel's product.
    public static let panelRows = 512

    /// y[rows, out] = scale · x[rows, in] · Wᵀ, plus y when `accumulate`.
    public static func linear(_ x: UnsafePointer<Float>, rows: Int, weight: Tensor, into y: UnsafeMutablePointer<Float>,
                              accumulate: Bool = false, scale: Float = 1) throws {
        let (out, inFeatures) = (weight.shape[0], weight.shape[1])
        if rows == 0 || out == 0 { return }
        if rows == 1 {
            if weight.dtype == .bf16 { return gemvBF16(weight, x: x, into: y, accumulate: accumulate, scale: scale) }
            return BLAS.gemv(m: out, n: inFeatures, alpha: scale, a: weight.data, lda: inFeatures, x: x,
                             beta: accumulate ? 1 : 0, y: y)
        }
        try forEachPanel(of: weight) { first, count, panel in
            BLAS.gemm(transB: true, m: rows, n: count, k: inFeatures, alpha: scale, a: x, lda: inFeatures,
                      b: panel, ldb: inFeatures, beta: accumulate ? 1 : 0, c: y + first, ldc: out)
        }
    }

    /// y[rows, out] = x[rows, in] · Wᵀ for a MoE expert's rows, on the calling thread while other
    /// experts' products run beside it (`SparseMoE`). From 2 to `expertRows` rows this is CKernels'
    /// kd_gemm_nt, which reads a bf16 weight directly and sums each element in one fixed order, so
    /// f32- and bf16-held experts give the same bits; one row is `linear`'s memory-bound kernel,
    /// and more rows `linear`'s sgemm panels (both dtypes alike again in each case).
    public static func expertLinear(_ x: UnsafePointer<Float>, rows: Int, weight: Tensor, into y: UnsafeMutablePointer<Float>) throws {
        guard rows >= 2 && rows <= expertRows else { return try linear(x, rows: rows, weight: weight, into: y) }
        let (out, inFeatures) = (weight.shape[0], weight.shape[1])
        kd_gemm_nt(rows, out, inFeatures, x, inFeatures, weight.bytes, weight.dtype == .bf16 ? 1 : 0, inFeatures, y, out, 0, 1)
    }

    /// Rows up to which an expert's product goes to kd_gemm_nt: on Zen 1 it beats widening and
    /// sgemm 1.1–2.7× from 2 to 128 rows and ties at 512 (`Scripts/expert_gemm_bench.c`).
    public static let expertRows = 128

    /// dx[rows, in] = dy[rows, out] · W, plus dx when `accumulate`.
    public static func backward(_ dy: UnsafePointer<Float>, rows: Int, weight: Tensor, into dx: UnsafeMutablePointer<Float>,
                                accumulate: Bool) throws {
        let (out, inFeatures) = (weight.shape[0], weight.shape[1])
        if rows == 0 || inFeatures == 0 { return }
        if out == 0 {
            if !accumulate { dx.update(repeating: 0, count: rows * inFeatures) }
            return
        }
        try forEachPanel(of: weight) { first, count, panel in
            BLAS.gemm(m: rows, n: inFeatures, k: count, a: dy + first, lda: out, b: panel, ldb: inFeatures,
                      beta: accumulate || first > 0 ? 1 : 0, c: dx, ldc: inFeatures)
        }
    }

    /// out[i, :] = W[ids[i], :] as f32 (an embedding lookup); the ids were checked against `out`.
    public static func gatherRows(_ weight: Tensor, ids: [Int], into out: UnsafeMutablePointer<Float>) {
        let width = weight.shape[1]
        for (row, id) in ids.enumerated() {
            Conversion.widen(weight.bytes + id * width * weight.dtype.size, dtype: weight.dtype, into: out + row * width,
                             count: width)
        }
    }

    /// Calls `body(firstRow, rowCount, rows as f32 [rowCount, in])` for consecutive panels of
    /// `panelRows` rows of W, in order.
    static func forEachPanel(of weight: Tensor, _ body: (Int, Int, UnsafePointer<Float>) -> Void) throws {
        let (out, inFeatures) = (weight.shape[0], weight.shape[1])
        if weight.dtype == .f32 {
            for first in stride(from: 0, to: out, by: panelRows) {
                body(first, min(panelRows, out - first), weight.data + first * inFeatures)
            }
            return
        }
        let buffer = try Tensor(uninitializedShape: [min(panelRows, out), inFeatures], on: weight.device)
        for first in stride(from: 0, to: out, by: panelRows) {
            let count = min(panelRows, out - first)
            Conversion.widenBF16(weight.bytes + first * inFeatures * 2, into: buffer.data, count: count * inFeatures)
            body(first, count, buffer.data)
        }
    }

    /// y[o] = scale · Σᵢ W[o, i]·x[i] (+ y[o]) for a bf16 W [rows, cols], its rows split over
    /// `BLAS.threads` cores, by CKernels' kd_gemv_bf16 on its path no wider than `width` bits
    /// (512: AVX-512, 256: AVX2, 0: scalar code; the widest the CPU has by default). Every path
    /// gives the same bits.
    static func gemvBF16(_ weight: Tensor, x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, accumulate: Bool,
                         scale: Float, width: Int32 = 512) {
        let (rows, cols) = (weight.shape[0], weight.shape[1])
        let parts = max(1, min(BLAS.threads, rows / 256))
        let w = weight.bytes.assumingMemoryBound(to: UInt16.self)
        let pairs = UnsafeMutablePointer<Float>.allocate(capacity: max(1, cols))
        defer { pairs.deallocate() }
        kd_pair_order(x, cols, pairs)
        kd_gemv_bf16_parts(Int32(parts), width, w, rows, cols, x, pairs, y, accumulate ? 1 : 0, scale)
    }

    /// The widest path of `gemvBF16` on this CPU, in bits (512, 256 or 0).
    static var gemvBF16Widest: Int32 { kd_gemv_bf16_widest() }
}
