import Foundation

/// The vector type of the SIMD kernels: eight f32 lanes fill one AVX2 register.
public typealias Vec = SIMD8<Float>

/// Elementwise kernels over raw buffers. They allocate nothing; the caller owns every buffer.
public enum Kernels {
    // MARK: exp

    /// e^x for eight lanes: range reduction x = n·ln2 + r, a degree-6 polynomial for e^r on
    /// |r| ≤ ln2/2, and 2^n assembled in the exponent bits. Relative error ≤ 2 ulp; inputs below
    /// -87.3 give 0 and above 88.7 give +inf, as expf does. (Foundation's exp on vectors runs
    /// lane by lane, about 35× slower.)
    @inlinable @inline(always)
    public static func exp(_ x: Vec) -> Vec {
        // Clamped with masks: the generic pointwiseMin/Max are not inlined.
        var clamped = x
        clamped.replace(with: -87.33654, where: x .< -87.33654)
        clamped.replace(with: 88.72284, where: x .> 88.72284)
        // Adding 1.5·2^23 rounds x·log2(e) to the nearest integer n and leaves n in the low
        // mantissa bits: the rounding and the float→int conversion in one add (Swift's generic
        // SIMD conversions run lane by lane).
        let magic = Vec(repeating: 12_582_912)
        let shifted = magic.addingProduct(clamped, Vec(repeating: 1.442695041))
        let n = shifted - magic
        // r = x − n·ln 2 in two parts, then e^r by a degree-7 polynomial; fused multiply-adds throughout.
        var r = clamped.addingProduct(n, Vec(repeating: -0.693145751953125))
        r = r.addingProduct(n, Vec(repeating: -1.428606765330187e-06))
        var p = Vec(repeating: 1.3981999507e-3).addingProduct(Vec(repeating: 1.9875691500e-4), r)
        p = Vec(repeating: 8.3334519073e-3).addingProduct(p, r)
        p = Vec(repeating: 4.1665795894e-2).addingProduct(p, r)
        p = Vec(repeating: 1.6666665459e-1).addingProduct(p, r)
        p = Vec(repeating: 5.0000001201e-1).addingProduct(p, r)
        p = (r + 1).addingProduct(p * r, r)
        let integer = unsafeBitCast(shifted, to: SIMD8<Int32>.self) &- 0x4B40_0000
        let scale = unsafeBitCast((integer &+ 127) &<< 23, to: Vec.self)
        var result = p * scale
        result.replace(with: 0, where: x .< -87.33654)
        result.replace(with: .infinity, where: x .> 88.72284)
        return result
    }

    @inlinable @inline(always)
    public static func exp(_ x: Float) -> Float { exp(Vec(repeating: x))[0] }

    /// x^n for a small whole n ≥ 1, by repeated multiplication.
    @inlinable @inline(always)
    public static func power(_ x: Vec, _ n: Int) -> Vec {
        var result = x
        for _ in 1..<n { result *= x }
        return result
    }

    // MARK: Reductions

    @inlinable
    public static func max(_ x: UnsafePointer<Float>, count: Int) -> Float {
        var best = Vec(repeating: -.infinity)
        var i = 0
        while i + 8 <= count {
            let v = load(x + i)
            best.replace(with: v, where: v .> best)
            i += 8
        }
        var result = best.max()
        while i < count {
            result = Swift.max(result, x[i])
            i += 1
        }
        return result
    }

    /// The largest value and the first index holding it (NaN-free input).
    @inlinable
    public static func maxAndFirstIndex(_ x: UnsafePointer<Float>, count: Int) -> (Float, Int) {
        let best = max(x, count: count)
        var i = 0
        let target = Vec(repeating: best)
        while i + 8 <= count && !any(load(x + i) .== target) { i += 8 }
        while i < count && x[i] != best { i += 1 }
        return (best, i < count ? i : 0)
    }

    @inlinable
    public static func sum(_ x: UnsafePointer<Float>, count: Int) -> Float {
        var acc = Vec.zero
        var i = 0
        while i + 8 <= count {
            acc += Vec(UnsafeBufferPointer(start: x + i, count: 8))
            i += 8
        }
        var result = acc.sum()
        while i < count {
            result += x[i]
            i += 1
        }
        return result
    }

    @inlinable
    public static func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, count: Int) -> Float {
        var acc = Vec.zero
        var i = 0
        while i + 8 <= count {
            acc.addProduct(Vec(UnsafeBufferPointer(start: a + i, count: 8)), Vec(UnsafeBufferPointer(start: b + i, count: 8)))
            i += 8
        }
        var result = acc.sum()
        while i < count {
            result += a[i] * b[i]
            i += 1
        }
        return result
    }

    // MARK: Elementwise

    /// y += x
    @inlinable
    public static func add(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, count: Int) {
        var i = 0
        while i + 8 <= count {
            let sum = Vec(UnsafeBufferPointer(start: y + i, count: 8)) + Vec(UnsafeBufferPointer(start: x + i, count: 8))
            store(sum, y + i)
            i += 8
        }
        while i < count {
            y[i] += x[i]
            i += 1
        }
    }

    /// y += a·x
    @inlinable
    public static func axpy(_ a: Float, _ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, count: Int) {
        var i = 0
        while i + 8 <= count {
            var acc = Vec(UnsafeBufferPointer(start: y + i, count: 8))
            acc.addProduct(Vec(repeating: a), Vec(UnsafeBufferPointer(start: x + i, count: 8)))
            store(acc, y + i)
            i += 8
        }
        while i < count {
            y[i] += a * x[i]
            i += 1
        }
    }

    /// x *= a
    @inlinable
    public static func scale(_ x: UnsafeMutablePointer<Float>, by a: Float, count: Int) {
        var i = 0
        while i + 8 <= count {
            store(Vec(UnsafeBufferPointer(start: x + i, count: 8)) * a, x + i)
            i += 8
        }
        while i < count {
            x[i] *= a
            i += 1
        }
    }

    @inlinable @inline(always)
    public static func store(_ v: Vec, _ p: UnsafeMutablePointer<Float>) {
        UnsafeMutableRawPointer(p).storeBytes(of: v, as: Vec.self)
    }

    @inlinable @inline(always)
    public static func load(_ p: UnsafePointer<Float>) -> Vec {
        UnsafeRawPointer(p).loadUnaligned(as: Vec.self)
    }

    /// out = silu(gate) · up, where silu(g) = g / (1 + e^-g).
    @inlinable
    public static func swiglu(
        gate: UnsafePointer<Float>, up: UnsafePointer<Float>, into out: UnsafeMutablePointer<Float>, count: Int
    ) {
        var i = 0
        while i + 8 <= count {
            let g = load(gate + i)
            store(g / (1 + exp(-g)) * load(up + i), out + i)
            i += 8
        }
        while i < count {
            let g = gate[i]
            out[i] = g / (1 + exp(-g)) * up[i]
            i += 1
        }
    }

    // MARK: Normalisation

    /// RMSNorm of each row: y = w · x / sqrt(mean(x²) + eps). Writes 1/sqrt(mean(x²)+eps) per row
    /// into `inverseRMS` when given (the backward pass needs it).
    @inlinable
    public static func rmsNorm(
        _ x: UnsafePointer<Float>, weight: UnsafePointer<Float>, rows: Int, cols: Int, eps: Float,
        into y: UnsafeMutablePointer<Float>, inverseRMS: UnsafeMutablePointer<Float>? = nil,
        inputStride: Int? = nil, outputStride: Int? = nil
    ) {
        let inStride = inputStride ?? cols
        let outStride = outputStride ?? cols
        for row in 0..<rows {
            let xr = x + row * inStride
            let yr = y + row * outStride
            let meanSquare = dot(xr, xr, count: cols) / Float(cols)
            let r = 1 / (meanSquare + eps).squareRoot()
            inverseRMS?[row] = r
            var i = 0
            while i + 8 <= cols {
                store(load(weight + i) * (load(xr + i) * r), yr + i)
                i += 8
            }
            while i < cols {
                yr[i] = weight[i] * (xr[i] * r)
                i += 1
            }
        }
    }

    // MARK: Softmax

    /// In-place softmax of a row; returns log Σ e^x (with the max folded in) for the backward pass.
    @inlinable @discardableResult
    public static func softmax(_ x: UnsafeMutablePointer<Float>, count: Int) -> Float {
        let m = max(x, count: count)
        var acc = Vec.zero
        var i = 0
        while i + 8 <= count {
            let e = exp(load(x + i) - m)
            store(e, x + i)
            acc += e
            i += 8
        }
        var total = acc.sum()
        while i < count {
            let e = exp(x[i] - m)
            x[i] = e
            total += e
            i += 1
        }
        scale(x, by: 1 / total, count: count)
        return m + Foundation.log(total)
    }

    // MARK: Rotary position embedding

    /// Rotates `heads` heads of `headDim` in each of `rows` rows (row stride `stride`) by the
    /// per-row angles in `cos`/`sin` [rows, headDim/2], the half-split rotate_half convention:
    /// x1' = x1·c − x2·s, x2' = x2·c + x1·s, where x1, x2 are a head's first and second halves.
    @inlinable
    public static func rope(
        _ x: UnsafeMutablePointer<Float>, rows: Int, heads: Int, headDim: Int, stride: Int,
        cos: UnsafePointer<Float>, sin: UnsafePointer<Float>, inverse: Bool = false
    ) {
        let half = headDim / 2
        let sign: Float = inverse ? -1 : 1
        for row in 0..<rows {
            let c = cos + row * half
            let s = sin + row * half
            for head in 0..<heads {
                let x1 = x + row * stride + head * headDim
                let x2 = x1 + half
                var i = 0
                while i + 8 <= half {
                    let a = load(x1 + i), b = load(x2 + i), cv = load(c + i), sv = load(s + i) * sign
                    store(a * cv - b * sv, x1 + i)
                    store(b * cv + a * sv, x2 + i)
                    i += 8
                }
                while i < half {
                    let a = x1[i], b = x2[i], sv = s[i] * sign
                    x1[i] = a * c[i] - b * sv
                    x2[i] = b * c[i] + a * sv
                    i += 1
                }
            }
        }
    }
}

// MARK: - Backward kernels

extension Kernels {
    /// RMSNorm backward for rows of y = w·x·r, r = 1/sqrt(mean(x²)+eps), with w frozen:
    /// dx = r·(w·dy) − x·r³·mean((w·dy)·x). Accumulates into `dx` when `accumulate`.
    @inlinable
    public static func rmsNormBackward(
        _ dy: UnsafePointer<Float>, x: UnsafePointer<Float>, weight: UnsafePointer<Float>,
        inverseRMS: UnsafePointer<Float>, rows: Int, cols: Int, into dx: UnsafeMutablePointer<Float>,
        accumulate: Bool
    ) {
        for row in 0..<rows {
            let dyr = dy + row * cols, xr = x + row * cols, dxr = dx + row * cols
            let r = inverseRMS[row]
            var acc = Vec.zero
            var i = 0
            while i + 8 <= cols {
                acc.addProduct(load(weight + i) * load(dyr + i), load(xr + i))
                i += 8
            }
            var dot = acc.sum()
            while i < cols {
                dot += weight[i] * dyr[i] * xr[i]
                i += 1
            }
            let c = r * r * r * dot / Float(cols)
            i = 0
            while i + 8 <= cols {
                var g = load(weight + i) * load(dyr + i) * r - load(xr + i) * c
                if accumulate { g += load(dxr + i) }
                store(g, dxr + i)
                i += 8
            }
            while i < cols {
                let g = weight[i] * dyr[i] * r - xr[i] * c
                dxr[i] = accumulate ? dxr[i] + g : g
                i += 1
            }
        }
    }

    /// SwiGLU backward for out = silu(g)·u: du = dout·silu(g), dg = dout·u·σ(g)·(1 + g·(1 − σ(g))).
    /// Writes dg over `gate` and du over `up` (their forward values are consumed).
    @inlinable
    public static func swigluBackward(
        _ dout: UnsafePointer<Float>, gate: UnsafeMutablePointer<Float>, up: UnsafeMutablePointer<Float>, count: Int
    ) {
        var i = 0
        while i + 8 <= count {
            let g = load(gate + i), u = load(up + i), d = load(dout + i)
            let sigmoid = 1 / (1 + exp(-g))
            let silu = g * sigmoid
            store(d * u * sigmoid * (1 + g * (1 - sigmoid)), gate + i)
            store(d * silu, up + i)
            i += 8
        }
        while i < count {
            let g = gate[i], u = up[i], d = dout[i]
            let sigmoid = 1 / (1 + exp(-g))
            gate[i] = d * u * sigmoid * (1 + g * (1 - sigmoid))
            up[i] = d * g * sigmoid
            i += 1
        }
    }
}
