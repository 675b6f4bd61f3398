import Foundation

// Element types and the conversions between them: kernels over raw buffers whose extents the
// caller checked (a safetensors header, a tensor's shape), so they are compiled with KDCore's
// other kernels, without Swift's per-element checks.

/// The element types kd reads from and writes to safetensors files (and, widened, compute with).
public enum DType: String, Sendable, CaseIterable {
    case f32 = "F32", bf16 = "BF16", f16 = "F16", f64 = "F64", i64 = "I64", i32 = "I32", u8 = "U8", bool = "BOOL"

    public var size: Int {
        switch self {
        case .f32, .i32: 4
        case .bf16, .f16: 2
        case .f64, .i64: 8
        case .u8, .bool: 1
        }
    }

    /// Whether kd can compute with tensors of this type (widening to f32).
    public var isFloatingPoint: Bool { self == .f32 || self == .bf16 || self == .f16 }
}

/// Conversions between f32 and the 16-bit float formats of checkpoints.
public enum Conversion {
    public static func widenBF16(_ source: UnsafeRawPointer, into out: UnsafeMutablePointer<Float>, count: Int) {
        let halves = source.assumingMemoryBound(to: UInt16.self)
        inParallelChunks(count) { range in
            out.withMemoryRebound(to: UInt32.self, capacity: count) { bits in
                for i in range { bits[i] = UInt32(UInt16(littleEndian: halves[i])) << 16 }
            }
        }
    }

    public static func widenF16(_ source: UnsafeRawPointer, into out: UnsafeMutablePointer<Float>, count: Int) {
        let halves = source.assumingMemoryBound(to: UInt16.self)
        inParallelChunks(count) { range in
            for i in range { out[i] = Float(Float16(bitPattern: UInt16(littleEndian: halves[i]))) }
        }
    }

    /// `count` F32 (possibly unaligned), BF16 or F16 values at `source` as f32 into `out`.
    public static func widen(_ source: UnsafeRawPointer, dtype: DType, into out: UnsafeMutablePointer<Float>, count: Int) {
        switch dtype {
        case .bf16: widenBF16(source, into: out, count: count)
        case .f16: widenF16(source, into: out, count: count)
        default: UnsafeMutableRawPointer(out).copyMemory(from: source, byteCount: count * 4)
        }
    }

    /// `count` F32 (possibly unaligned), BF16 or F16 values at `source` as bf16 into `out`
    /// (round-to-nearest-even), through a small f32 buffer, on all cores.
    public static func narrowBF16(_ source: UnsafeRawPointer, dtype: DType, into out: UnsafeMutablePointer<UInt16>, count: Int) {
        if dtype == .bf16 { return UnsafeMutableRawPointer(out).copyMemory(from: source, byteCount: count * 2) }
        inParallelChunks(count) { range in
            let buffer = UnsafeMutablePointer<Float>.allocate(capacity: 4096)
            defer { buffer.deallocate() }
            for start in stride(from: range.lowerBound, to: range.upperBound, by: 4096) {
                let n = min(4096, range.upperBound - start)
                widen(source + start * dtype.size, dtype: dtype, into: buffer, count: n)
                narrowBF16(buffer, into: out + start, count: n)
            }
        }
    }

    /// Splits 0..<count into chunks of 1 Mi elements run on all cores (the page faults of a
    /// fresh buffer cost as much as the conversion, and both parallelise).
    public static func inParallelChunks(_ count: Int, _ body: (Range<Int>) -> Void) {
        let chunk = 1 << 20
        let chunks = (count + chunk - 1) / chunk
        if chunks <= 1 { return body(0..<count) }
        DispatchQueue.concurrentPerform(iterations: chunks) { c in body((c * chunk)..<min(count, (c + 1) * chunk)) }
    }

    /// f32 → bf16 with round-to-nearest-even, as torch's `.to(torch.bfloat16)`.
    public static func narrowBF16(_ source: UnsafePointer<Float>, into out: UnsafeMutablePointer<UInt16>, count: Int) {
        source.withMemoryRebound(to: UInt32.self, capacity: count) { bits in
            for i in 0..<count {
                let b = bits[i]
                if b & 0x7FFF_FFFF > 0x7F80_0000 {
                    out[i] = UInt16(truncatingIfNeeded: b >> 16) | 0x40  // quiet NaN
                } else {
                    out[i] = UInt16(truncatingIfNeeded: (b &+ 0x7FFF &+ ((b >> 16) & 1)) >> 16)
                }
            }
        }
    }

    public static func narrowF16(_ source: UnsafePointer<Float>, into out: UnsafeMutablePointer<UInt16>, count: Int) {
        for i in 0..<count { out[i] = Float16(source[i]).bitPattern }
    }
}

