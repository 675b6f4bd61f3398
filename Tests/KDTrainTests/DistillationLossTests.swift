import Foundation
import Testing
import KDCore
import KDTrain

/// The fused loss kernel against the definitions evaluated in Double, for whole and fractional
/// temperatures (the kernel has a faster path for whole T), a vocabulary that leaves a SIMD tail,
/// and a buffer stride wider than the shared vocabulary.
@Suite struct DistillationLossTests {
    struct Reference {
        var kl = 0.0, ce = 0.0
        var gradient: [Double] = []
    }

    static func reference(teacher: [Float], student: [Float], label: Int, alpha: Double, temperature: Double,
                          scale: Double) -> Reference {
        func softmax(_ x: [Float], _ t: Double) -> [Double] {
            let m = x.map { Double($0) / t }.max()!
            let e = x.map { Foundation.exp(Double($0) / t - m) }
            let sum = e.reduce(0, +)
            return e.map { $0 / sum }
        }
        let p = softmax(teacher, temperature), q = softmax(student, temperature), s1 = softmax(student, 1)
        var result = Reference()
        result.kl = zip(p, q).reduce(0) { $0 + ($1.0 > 0 ? $1.0 * Foundation.log($1.0 / $1.1) : 0) }
        result.ce = -Foundation.log(s1[label])
        result.gradient = (0..<student.count).map { v in
            scale * (alpha * temperature * (q[v] - p[v]) + (1 - alpha) * (s1[v] - (v == label ? 1 : 0)))
        }
        return result
    }

    @Test(arguments: [Float(1), 2, 1.5, 3])
    func matchesTheDefinitions(temperature: Float) {
        let (rows, vocab, stride) = (3, 77, 80)
        var random = RandomGenerator(seed: 11)
        let teacher = (0..<(rows * stride)).map { _ in random.nextNormal() * 3 }
        let student = (0..<(rows * stride)).map { _ in random.nextNormal() * 3 }
        let labels: [Int32] = [5, 76, 0]
        let (alpha, scale): (Float, Float) = (0.8, 1.0 / 7)
        var teacherBuffer = teacher, studentBuffer = student
        let settings = DistillationLoss.Settings(alpha: alpha, temperature: temperature, gradientScale: scale, stride: stride,
                                                 vocab: vocab)
        let totals = teacherBuffer.withUnsafeMutableBufferPointer { t in
            studentBuffer.withUnsafeMutableBufferPointer { s in
                DistillationLoss.chunk(teacher: t.baseAddress!, teacherStride: stride, student: s.baseAddress!, labels: labels,
                                       settings: settings, gradient: true, threads: 2)
            }
        }
        var kl = 0.0, ce = 0.0
        for row in 0..<rows {
            let range = (row * stride)..<(row * stride + vocab)
            let expected = Self.reference(teacher: Array(teacher[range]), student: Array(student[range]), label: Int(labels[row]),
                                          alpha: Double(alpha), temperature: Double(temperature), scale: Double(scale))
            kl += expected.kl
            ce += expected.ce
            for v in 0..<vocab {
                let got = Double(studentBuffer[row * stride + v]), want = expected.gradient[v]
                #expect(abs(got - want) <= 1e-8 + 1e-5 * abs(want), "row \(row) v \(v): \(got) vs \(want)")
            }
            // Padding logits beyond the shared vocabulary get no gradient.
            #expect(studentBuffer[(row * stride + vocab)..<((row + 1) * stride)].allSatisfy { $0 == 0 })
        }
        #expect(abs(totals.kl - kl) <= 1e-5 * abs(kl), "kl \(totals.kl) vs \(kl)")
        #expect(abs(totals.ce - ce) <= 1e-5 * abs(ce), "ce \(totals.ce) vs \(ce)")
        #expect(totals.rows == rows)
    }
}
