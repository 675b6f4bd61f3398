import COpenBLAS
import Foundation

/// Thin, typed entry points to OpenBLAS. All matrices are row-major.
public enum BLAS {
    /// Threads OpenBLAS uses for one call.
    public static var threads: Int {
        get { Int(openblas_get_num_threads()) }
        set { openblas_set_num_threads(Int32(newValue)) }
    }

    /// C[M,N] = alpha·op(A)·op(B) + beta·C, with op(X) = Xᵀ when the flag says so.
    @inlinable
    public static func gemm(
        transA: Bool = false, transB: Bool = false, m: Int, n: Int, k: Int,
        alpha: Float = 1, a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
        beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int
    ) {
        if m == 0 || n == 0 { return }
        cblas_sgemm(
            CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
            Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }

    /// y[M] = alpha·op(A)·x + beta·y for A [M, N] (or y[N] = alpha·Aᵀ·x + beta·y when `trans`).
    @inlinable
    public static func gemv(
        trans: Bool = false, m: Int, n: Int, alpha: Float = 1, a: UnsafePointer<Float>, lda: Int,
        x: UnsafePointer<Float>, beta: Float = 0, y: UnsafeMutablePointer<Float>
    ) {
        cblas_sgemv(
            CblasRowMajor, trans ? CblasTrans : CblasNoTrans, Int32(m), Int32(n), alpha, a, Int32(lda),
            x, 1, beta, y, 1)
    }

    /// The thin SVD of a row-major [m, n] matrix (overwritten): A = U·diag(S)·Vt with U [m, k],
    /// S [k] descending, Vt [k, n], k = min(m, n), through LAPACK's divide-and-conquer sgesdd.
    public static func svd(_ a: UnsafeMutablePointer<Float>, m: Int, n: Int) throws -> (u: [Float], s: [Float], vt: [Float]) {
        let k = min(m, n)
        var u = [Float](repeating: 0, count: m * k), s = [Float](repeating: 0, count: k), vt = [Float](repeating: 0, count: k * n)
        let info = LAPACKE_sgesdd(LAPACK_ROW_MAJOR, Int8(UInt8(ascii: "S")), Int32(m), Int32(n), a, Int32(n), &s, &u, Int32(k),
                                  &vt, Int32(n))
        guard info == 0 else { throw KDError("SVD of a \(m)×\(n) matrix failed (LAPACK info \(info))") }
        return (u, s, vt)
    }

    /// `x · Wᵀ` for activations x [rows, in] and a linear layer's weight W [out, in], into y [rows, out].
    /// A single row goes through gemv: gemm with one row is several times slower here.
    @inlinable
    public static func linear(
        _ x: UnsafePointer<Float>, rows: Int, inFeatures: Int, weight: UnsafePointer<Float>, outFeatures: Int,
        into y: UnsafeMutablePointer<Float>, accumulate: Bool = false, scale: Float = 1
    ) {
        if rows == 1 {
            gemv(m: outFeatures, n: inFeatures, alpha: scale, a: weight, lda: inFeatures, x: x,
                 beta: accumulate ? 1 : 0, y: y)
        } else {
            gemm(transB: true, m: rows, n: outFeatures, k: inFeatures, alpha: scale, a: x, lda: inFeatures,
                 b: weight, ldb: inFeatures, beta: accumulate ? 1 : 0, c: y, ldc: outFeatures)
        }
    }
}
