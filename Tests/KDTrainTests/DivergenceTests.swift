import Foundation
import Testing
import KDCore
import KDTrain

/// reverse_kl and jsd(β) in the fused loss kernel against their definitions evaluated in Double:
/// the totals (D, the forward KL kept alongside, CE) and every gradient element, for whole and
/// fractional temperatures (the kernel's two paths), a vocabulary that leaves a SIMD tail, a
/// buffer stride wider than the shared vocabulary, and logits spread wide enough that p and q
/// underflow f32 at some tokens. The Double gradient itself is checked against central finite
/// differences of the Double loss, so the analytic formulas of the doc comment are checked too.
///
/// Tolerances. Each kernel element is a short chain of f32 operations (exponentials of 2 ulp, a
/// log, the row's sums over 77 terms), so it is off by a small multiple of the unit roundoff
/// 2⁻²⁴ ≈ 6·10⁻⁸ of the sum of the absolute values of its terms, `magnitude` below (for
/// reverse_kl q·(|log q − log p| + D)·αT/N plus the CE terms; the element itself can be far
/// smaller through cancellation). 10⁻⁵·magnitude allows ~170 roundings, 10⁻⁸ absolute covers
/// the elements whose terms all underflow. The totals are sums of non-negative row values; their
/// f32 error is relative, 10⁻⁵ as in DistillationLossTests (the rows' D can be small against
/// the entropies they are formed from: the bound is taken relative to those, `scaleOfD`). The
/// finite differences use h = 10⁻⁴ on logits of O(1): the truncation error h²/6·|∂³L| is below
/// 10⁻⁸·|∂³L| with |∂³L| ≲ αT²/N·(1/T³)·6, and the Double rounding 10⁻¹⁶·|L|/h ≈ 10⁻¹¹; 10⁻⁷
/// covers both with room and is 10⁻⁴ of a typical element (~10⁻³).
@Suite struct DivergenceTests {
    struct Reference {
        var divergence = 0.0, kl = 0.0, ce = 0.0, loss = 0.0
        /// Σ|terms| of D, against which its rounding is bounded.
        var scaleOfD = 0.0
        var gradient: [Double] = []
        var magnitude: [Double] = []
    }

    static func softmax(_ x: [Double], _ t: Double) -> [Double] {
        let m = x.map { $0 / t }.max() ?? 0
        let e = x.map { Foundation.exp($0 / t - m) }
        let sum = e.reduce(0, +)
        return e.map { $0 / sum }
    }

    static func xlogy(_ x: Double, _ ratio: Double) -> Double { x > 0 ? x * Foundation.log(ratio) : 0 }

    /// One row's loss α·T²·D·scale + (1−α)·CE·scale and its gradient, from the definitions.
    static func reference(teacher: [Double], student: [Double], label: Int, divergence: DistillationLoss.Divergence,
                          alpha: Double, temperature t: Double, scale: Double) -> Reference {
        let p = softmax(teacher, t), q = softmax(student, t), s1 = softmax(student, 1)
        var r = Reference()
        r.kl = zip(p, q).reduce(0) { $0 + xlogy($1.0, $1.0 / $1.1) }
        r.ce = -Foundation.log(s1[label])
        // ∂D/∂s_v·T, and the Σ|terms| of it.
        var dD: [Double] = [], dDMagnitude: [Double] = []
        switch divergence {
        case .forwardKL:
            r.divergence = r.kl
            r.scaleOfD = zip(p, q).reduce(0) { $0 + abs(xlogy($1.0, $1.0)) + abs(xlogy($1.0, $1.1)) }
            dD = zip(q, p).map { $0 - $1 }
            dDMagnitude = zip(q, p).map { $0 + $1 }
        case .reverseKL:
            r.divergence = zip(p, q).reduce(0) { $0 + xlogy($1.1, $1.1 / $1.0) }
            r.scaleOfD = zip(p, q).reduce(0) { $0 + abs(xlogy($1.1, $1.1)) + abs(xlogy($1.1, $1.0)) }
            let d = zip(q, p).map { Foundation.log($0 / $1) }
            dD = zip(q, d).map { $0 * ($1 - r.divergence) }
            dDMagnitude = zip(q, d).map { $0 * (abs($1) + abs(r.divergence)) }
        case .jsd(let betaF):
            let beta = Double(betaF)
            let m = zip(p, q).map { beta * $0 + (1 - beta) * $1 }
            var klPM = 0.0, klQM = 0.0
            for v in p.indices {
                klPM += xlogy(p[v], p[v] / m[v])
                klQM += xlogy(q[v], q[v] / m[v])
            }
            r.divergence = beta * klPM + (1 - beta) * klQM
            r.scaleOfD = p.indices.reduce(0) { $0 + abs(xlogy(p[$1], p[$1])) + abs(xlogy(q[$1], q[$1])) + abs(xlogy(m[$1], m[$1])) }
            let l = q.indices.map { q[$0] > 0 ? Foundation.log(q[$0] / m[$0]) : 0 }
            dD = q.indices.map { (1 - beta) * q[$0] * (l[$0] - klQM) }
            dDMagnitude = q.indices.map { (1 - beta) * q[$0] * (abs(l[$0]) + abs(klQM)) }
        }
        r.loss = scale * (alpha * t * t * r.divergence + (1 - alpha) * r.ce)
        r.gradient = student.indices.map { v in
            scale * (alpha * t * dD[v] + (1 - alpha) * (s1[v] - (v == label ? 1 : 0)))
        }
        r.magnitude = student.indices.map { v in
            scale * (alpha * t * dDMagnitude[v] + (1 - alpha) * (s1[v] + (v == label ? 1 : 0)))
        }
        return r
    }

    struct Case: CustomTestStringConvertible, Sendable {
        let divergence: DistillationLoss.Divergence
        let temperature: Float
        /// Standard deviation of the logits: 3 (ordinary), 30 (some p and q underflow f32 at T = 1).
        let spread: Float
        var testDescription: String { "\(divergence) T=\(temperature) spread=\(spread)" }
    }

    static let cases: [Case] = {
        var cases: [Case] = []
        let divergences: [DistillationLoss.Divergence] = [.reverseKL, .jsd(beta: 0.1), .jsd(beta: 0.5), .jsd(beta: 0.9)]
        for divergence in divergences {
            for temperature: Float in [1, 2, 1.5] { cases.append(Case(divergence: divergence, temperature: temperature, spread: 3)) }
            cases.append(Case(divergence: divergence, temperature: 1, spread: 30))
        }
        return cases
    }()

    @Test(arguments: cases)
    func matchesTheDefinitions(_ c: Case) {
        let (rows, vocab, stride) = (3, 77, 80)
        var random = RandomGenerator(seed: 23)
        let teacher = (0..<(rows * stride)).map { _ in random.nextNormal() * c.spread }
        let student = (0..<(rows * stride)).map { _ in random.nextNormal() * c.spread }
        let labels: [Int32] = [5, 76, 0]
        let (alpha, scale): (Float, Float) = (0.8, 1.0 / 7)
        let settings = DistillationLoss.Settings(alpha: alpha, temperature: c.temperature, gradientScale: scale, stride: stride,
                                                 vocab: vocab, divergence: c.divergence)
        func run(gradient: Bool) -> (DistillationLoss.Totals, [Float]) {
            var teacherBuffer = teacher, studentBuffer = student
            let totals = teacherBuffer.withUnsafeMutableBufferPointer { t in
                studentBuffer.withUnsafeMutableBufferPointer { s in
                    DistillationLoss.chunk(teacher: t.baseAddress!, teacherStride: stride, student: s.baseAddress!, labels: labels,
                                           settings: settings, gradient: gradient, threads: 2)
                }
            }
            return (totals, studentBuffer)
        }
        let (totals, gradient) = run(gradient: true)
        var divergence = 0.0, kl = 0.0, ce = 0.0, scaleOfD = 0.0
        for row in 0..<rows {
            let range = (row * stride)..<(row * stride + vocab)
            let expected = Self.reference(
                teacher: teacher[range].map(Double.init), student: student[range].map(Double.init), label: Int(labels[row]),
                divergence: c.divergence, alpha: Double(alpha), temperature: Double(c.temperature), scale: Double(scale))
            divergence += expected.divergence
            kl += expected.kl
            ce += expected.ce
            scaleOfD += expected.scaleOfD
            for v in 0..<vocab {
                let got = Double(gradient[row * stride + v]), want = expected.gradient[v]
                #expect(abs(got - want) <= 1e-8 + 1e-5 * expected.magnitude[v], "row \(row) v \(v): \(got) vs \(want)")
            }
            #expect(gradient[(row * stride + vocab)..<((row + 1) * stride)].allSatisfy { $0 == 0 })
        }
        #expect(totals.divergence >= 0)
        #expect(abs(totals.divergence - divergence) <= 1e-5 * scaleOfD, "D \(totals.divergence) vs \(divergence)")
        #expect(abs(totals.kl - kl) <= 1e-5 * abs(kl) + 1e-6, "kl \(totals.kl) vs \(kl)")
        #expect(abs(totals.ce - ce) <= 1e-5 * abs(ce), "ce \(totals.ce) vs \(ce)")
        // Without the gradient (held-out evaluation) the totals are the same numbers.
        let (evaluated, _) = run(gradient: false)
        #expect(evaluated.divergence == totals.divergence && evaluated.kl == totals.kl && evaluated.ce == totals.ce)
    }

    /// The Double gradients (the formulas of DistillationLoss's doc comment) are the derivatives
    /// of the Double losses: central differences, h = 10⁻⁴.
    @Test(arguments: [DistillationLoss.Divergence.forwardKL, .reverseKL, .jsd(beta: 0.1), .jsd(beta: 0.5), .jsd(beta: 0.9)],
          [1.0, 2.0])
    func gradientIsTheDerivativeOfTheLoss(_ divergence: DistillationLoss.Divergence, temperature: Double) {
        var random = RandomGenerator(seed: 5)
        let vocab = 13, label = 4, h = 1e-4
        let teacher = (0..<vocab).map { _ in Double(random.nextNormal()) * 2 }
        let student = (0..<vocab).map { _ in Double(random.nextNormal()) * 2 }
        func reference(_ s: [Double]) -> Reference {
            Self.reference(teacher: teacher, student: s, label: label, divergence: divergence, alpha: 0.8,
                           temperature: temperature, scale: 1.0 / 3)
        }
        let analytic = reference(student).gradient
        for v in 0..<vocab {
            var plus = student, minus = student
            plus[v] += h
            minus[v] -= h
            let numeric = (reference(plus).loss - reference(minus).loss) / (2 * h)
            #expect(abs(numeric - analytic[v]) <= 1e-7, "v \(v): \(numeric) vs \(analytic[v])")
        }
    }
}
