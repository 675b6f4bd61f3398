import Foundation
import Testing
@testable import KDCore

@Suite struct KernelTests {
    @Test func vectorExpMatchesLibm() {
        var worst: Float = 0
        var x: Float = -87
        while x < 88 {
            let got = Kernels.exp(Vec(repeating: x))[3]
            let want = Foundation.exp(x)
            worst = max(worst, abs(got - want) / want)
            x += 0.0137
        }
        #expect(worst < 3e-7)
        #expect(Kernels.exp(Vec(repeating: -200))[0] == 0)
        #expect(Kernels.exp(Vec(repeating: 200))[0] == .infinity)
    }

    @Test func softmaxReturnsLogSumExp() {
        var row: [Float] = [1, 2, 3, 4, 5, 6, 7, 8, 9, -3, 0.5]
        let expected = Foundation.log(row.map { Foundation.exp($0) }.reduce(0, +))
        let lse = row.withUnsafeMutableBufferPointer { Kernels.softmax($0.baseAddress!, count: $0.count) }
        #expect(abs(lse - expected) < 1e-5)
        #expect(abs(row.reduce(0, +) - 1) < 1e-6)
        #expect(abs(row[8] - Foundation.exp(9 - expected)) < 1e-6)
    }

    @Test func rmsNormMatchesDefinition() {
        let cols = 13
        let x = (0..<(2 * cols)).map { Float($0) * 0.37 - 3 }
        let w = (0..<cols).map { 1 + Float($0) * 0.1 }
        var y = [Float](repeating: 0, count: x.count)
        var inv = [Float](repeating: 0, count: 2)
        Kernels.rmsNorm(x, weight: w, rows: 2, cols: cols, eps: 1e-6, into: &y, inverseRMS: &inv)
        for row in 0..<2 {
            let xs = x[(row * cols)..<((row + 1) * cols)]
            let r = 1 / (xs.map { $0 * $0 }.reduce(0, +) / Float(cols) + 1e-6).squareRoot()
            #expect(abs(inv[row] - r) < 1e-6)
            for i in 0..<cols { #expect(abs(y[row * cols + i] - w[i] * xs[row * cols + i] * r) < 1e-5) }
        }
    }

    @Test func ropeInverseUndoesRotation() {
        let headDim = 20, heads = 3, rows = 2
        var x = (0..<(rows * heads * headDim)).map { Float($0 % 17) - 8 }
        let original = x
        let cos = (0..<(rows * headDim / 2)).map { Foundation.cos(Float($0) * 0.3) }
        let sin = (0..<(rows * headDim / 2)).map { Foundation.sin(Float($0) * 0.3) }
        Kernels.rope(&x, rows: rows, heads: heads, headDim: headDim, stride: heads * headDim, cos: cos, sin: sin)
        // rotate_half convention: first element of head 0 is x1·c − x2·s.
        #expect(abs(x[0] - (original[0] * cos[0] - original[10] * sin[0])) < 1e-6)
        Kernels.rope(
            &x, rows: rows, heads: heads, headDim: headDim, stride: heads * headDim, cos: cos, sin: sin, inverse: true)
        for i in 0..<x.count { #expect(abs(x[i] - original[i]) < 1e-5) }
    }

    @Test func swigluMatchesDefinition() {
        let g: [Float] = (0..<19).map { Float($0) - 9 }
        let u: [Float] = (0..<19).map { Float($0) * 0.5 }
        var out = [Float](repeating: 0, count: 19)
        Kernels.swiglu(gate: g, up: u, into: &out, count: 19)
        for i in 0..<19 { #expect(abs(out[i] - g[i] / (1 + Foundation.exp(-g[i])) * u[i]) < 1e-5) }
    }
}
