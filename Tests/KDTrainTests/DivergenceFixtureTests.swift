import Foundation
import Testing
import KDCore
import KDModels
import KDTrain

/// The fused loss kernel against torch autograd in float64 (Scripts/make_divergence_fixtures.py,
/// whose jsd it checks against TRL's GKDTrainer.generalized_jsd_loss): for forward_kl, reverse_kl
/// and jsd with β ∈ {0.1, 0.5, 0.9}, T ∈ {1, 2}, α = 0.8, on 7 positions of which 2 are -100,
/// vocabulary 50 (a SIMD tail of 2), the step's loss, mean D, mean forward KL, mean CE and
/// d(loss)/d(student logits).
///
/// Tolerance: the reference is exact to float64 and the kernel rounds in f32 (u = 2⁻²⁴ ≈ 6·10⁻⁸).
/// A gradient element is (1/N)·[α·T·(divergence terms) + (1−α)·(CE terms)], each term a
/// probability (e^x times the reciprocal of the row's sum) times at most a difference of logs.
/// A probability carries the exponential's 2 ulp, the product's rounding and the relative error
/// of the row's sum (50 terms in 8 lanes: ≤ 7 + 3 rounding levels): ~13u relative; a log-ratio
/// (b − a) + (log Σe^a − log Σe^b) carries about u of each of its parts, absolute: u·(|a| + |b| +
/// |log Σ|) ≤ 45u with |a|, |b| ≲ 20 here. With N = 5 and α·T ≤ 1.6, an element's error is about
/// (1.6/5)·(13u·Σ|terms| + q_v·45u): at most 0.32·45u ≈ 8.6·10⁻⁷ absolute (q_v ≈ 1 at the extreme
/// logits) plus ~13u relative to terms of the size of the element unless they cancel. Hence
/// 10⁻⁶ + 10⁻⁵·|x| (the relative part ≈ 170u, room for cancellation). The totals are sums of
/// non-negative per-row values formed from the same sums: the same bound. (Measured on x86-64
/// AVX2: the worst element is at 0.11 of its tolerance, reverse_kl at T = 1; the rest below 0.01.)
@Suite struct DivergenceFixtureTests {
    static let file = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/divergence/expected.safetensors").path

    static func tolerance(_ x: Double) -> Double { 1e-6 + 1e-5 * abs(x) }

    static func doubles(_ file: SafetensorsFile, _ name: String) throws -> [Double] {
        try file.bytes(name).withUnsafeBytes { Array($0.bindMemory(to: Double.self)) }
    }

    struct Case: CustomTestStringConvertible, Sendable {
        let key: String
        let divergence: DistillationLoss.Divergence
        let temperature: Float
        var testDescription: String { key }
    }

    static let cases: [Case] = [Float(1), 2].flatMap { t in
        [Case(key: "forward_kl.T\(Int(t))", divergence: .forwardKL, temperature: t),
         Case(key: "reverse_kl.T\(Int(t))", divergence: .reverseKL, temperature: t)]
            + [0.1, 0.5, 0.9].map { Case(key: "jsd_\($0).T\(Int(t))", divergence: .jsd(beta: Float($0)), temperature: t) }
    }

    @Test(arguments: cases)
    func matchesTorch(_ c: Case) throws {
        let expected = try SafetensorsFile(path: Self.file)
        let device = Device(id: 0)
        let teacherTensor = try expected.load("teacher", on: device), studentTensor = try expected.load("student", on: device)
        let (rows, vocab) = (teacherTensor.shape[0], teacherTensor.shape[1])
        let teacher = Array(UnsafeBufferPointer(start: teacherTensor.data, count: teacherTensor.count))
        let student = Array(UnsafeBufferPointer(start: studentTensor.data, count: studentTensor.count))
        let labels = try expected.bytes("labels").withUnsafeBytes { Array($0.bindMemory(to: Int64.self)) }
        #expect(labels.count == rows)
        // The kernel sees the scored positions only, as DistillationPass gives them.
        let scored = (0..<rows).filter { labels[$0] != -100 }
        let n = scored.count
        var teacherBuffer = scored.flatMap { teacher[($0 * vocab)..<(($0 + 1) * vocab)] }
        var studentBuffer = scored.flatMap { student[($0 * vocab)..<(($0 + 1) * vocab)] }
        let alpha: Float = 0.8
        let settings = DistillationLoss.Settings(alpha: alpha, temperature: c.temperature, gradientScale: 1 / Float(n),
                                                 stride: vocab, vocab: vocab, divergence: c.divergence)
        let totals = teacherBuffer.withUnsafeMutableBufferPointer { t in
            studentBuffer.withUnsafeMutableBufferPointer { s in
                DistillationLoss.chunk(teacher: t.baseAddress!, teacherStride: vocab, student: s.baseAddress!,
                                       labels: scored.map { Int32(labels[$0]) }, settings: settings, gradient: true, threads: 2)
            }
        }
        let t = Double(c.temperature), a = Double(alpha)
        let means = (divergence: totals.divergence / Double(n), kl: totals.kl / Double(n), ce: totals.ce / Double(n))
        let got = ["loss": a * t * t * means.divergence + (1 - a) * means.ce, "divergence": means.divergence,
                   "kl": means.kl, "ce": means.ce]
        for (name, value) in got.sorted(by: { $0.key < $1.key }) {
            let want = try Self.doubles(expected, "\(c.key).\(name)")[0]
            #expect(abs(value - want) <= Self.tolerance(want), "\(c.key) \(name): \(value) vs \(want)")
        }
        let gradient = try Self.doubles(expected, "\(c.key).gradient")
        #expect(gradient.count == rows * vocab)
        for row in 0..<rows where labels[row] == -100 {
            #expect(gradient[(row * vocab)..<((row + 1) * vocab)].allSatisfy { $0 == 0 })
        }
        for (i, row) in scored.enumerated() {
            for v in 0..<vocab {
                let got = Double(studentBuffer[i * vocab + v]), want = gradient[row * vocab + v]
                #expect(abs(got - want) <= Self.tolerance(want), "\(c.key) row \(row) v \(v): \(got) vs \(want)")
            }
        }
    }
}
