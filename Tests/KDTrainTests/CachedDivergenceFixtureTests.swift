import Foundation
import Testing
import KDCore
import KDModels
import KDTrain

/// The loss against a cached top-K teacher (`DistillationLoss.cachedChunk`) against torch autograd
/// in float64 (Scripts/make_cached_divergence_fixtures.py), on the same 7 positions (2 of them
/// -100) and vocabulary of 50 as DivergenceFixtureTests: K ∈ {1, 7, 50}; forward_kl at T ∈ {1, 2},
/// reverse_kl at T = 1, jsd with β ∈ {0.1, 0.5, 0.9} at T ∈ {1, 2} (T = 2 renormalised over the K
/// ids), and at T = 2 = the cache's temperature (its tempered log-sum-exp and tail: "T2c") every
/// divergence; α = 0.8. The reference reads the stored cache (f32 logits, log-sum-exps and tail
/// masses, i32 ids), as kd does.
///
/// Tolerance: DivergenceFixtureTests' 10⁻⁶ + 10⁻⁵·|x|, derived there for the same kinds of terms
/// (probabilities from f32 exponentials over a row's f32 sums, times log-ratios of logits of the
/// same sizes). Here the K + 1 outcome sums and the cached ids' gradients are formed in float64
/// from those f32 sums, which can only shrink the error; the tail ids' gradients are the live
/// kernel's kind of term.
@Suite struct CachedDivergenceFixtureTests {
    static let file = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/divergence/cached.safetensors").path

    struct Case: CustomTestStringConvertible, Sendable {
        let k: Int
        let name: String
        let divergence: DistillationLoss.Divergence
        let temperature: Float
        /// The cache holds the log-sum-exp and tail mass at T (T = T_c = 2).
        var tempered = false
        var key: String { "K\(k).\(name).T\(Int(temperature))" + (tempered ? "c" : "") }
        var testDescription: String { key }
    }

    static let betas = [0.1, 0.5, 0.9]

    static func cases(k: Int) -> [Case] {
        var cases = [Case(k: k, name: "forward_kl", divergence: .forwardKL, temperature: 1),
                     Case(k: k, name: "forward_kl", divergence: .forwardKL, temperature: 2),
                     Case(k: k, name: "reverse_kl", divergence: .reverseKL, temperature: 1),
                     Case(k: k, name: "forward_kl", divergence: .forwardKL, temperature: 2, tempered: true),
                     Case(k: k, name: "reverse_kl", divergence: .reverseKL, temperature: 2, tempered: true)]
        for beta in betas {
            let jsd = DistillationLoss.Divergence.jsd(beta: Float(beta))
            cases.append(Case(k: k, name: "jsd_\(beta)", divergence: jsd, temperature: 1))
            cases.append(Case(k: k, name: "jsd_\(beta)", divergence: jsd, temperature: 2))
            cases.append(Case(k: k, name: "jsd_\(beta)", divergence: jsd, temperature: 2, tempered: true))
        }
        return cases
    }

    static let cases: [Case] = [1, 7, 50].flatMap { cases(k: $0) }

    static func values<T>(_ file: SafetensorsFile, _ name: String, as _: T.Type) throws -> [T] {
        try file.bytes(name).withUnsafeBytes { Array($0.bindMemory(to: T.self)) }
    }

    @Test(arguments: cases)
    func matchesTorch(_ c: Case) throws {
        let expected = try SafetensorsFile(path: Self.file)
        let student = try Self.values(expected, "student", as: Float.self)
        let labels = try Self.values(expected, "labels", as: Int64.self)
        let rows = labels.count, vocab = student.count / rows
        let scored = (0..<rows).filter { labels[$0] != -100 }
        let n = scored.count
        let ids = try Self.values(expected, "K\(c.k).ids", as: Int32.self)
        let logits = try Self.values(expected, "K\(c.k).logits", as: Float.self)
        let lse = try Self.values(expected, "K\(c.k).lse", as: Float.self)
        let tail = try Self.values(expected, "K\(c.k).tail", as: Float.self)
        // The cache's temperature: 2 for the tempered cases; else one that is not T (renormalised at T = 2).
        let lseT = c.tempered ? try Self.values(expected, "K\(c.k).lse_t2", as: Float.self) : lse
        let tailT = c.tempered ? try Self.values(expected, "K\(c.k).tail_t2", as: Float.self) : tail
        var targets = TopKRows(k: c.k, temperature: c.tempered ? 2 : 1)
        for row in scored {
            targets.ids += ids[(row * c.k)..<((row + 1) * c.k)]
            targets.logits += logits[(row * c.k)..<((row + 1) * c.k)]
            targets.logSumExp.append(lse[row])
            targets.tailLogMass.append(tail[row])
            targets.logSumExpT.append(lseT[row])
            targets.tailLogMassT.append(tailT[row])
        }
        var studentBuffer = scored.flatMap { student[($0 * vocab)..<(($0 + 1) * vocab)] }
        let alpha: Float = 0.8
        let settings = DistillationLoss.Settings(alpha: alpha, temperature: c.temperature, gradientScale: 1 / Float(n),
                                                 stride: vocab, vocab: vocab, divergence: c.divergence)
        let totals = studentBuffer.withUnsafeMutableBufferPointer { s in
            DistillationLoss.cachedChunk(targets: targets, student: s.baseAddress!, labels: scored.map { Int32(labels[$0]) },
                                         settings: settings, gradient: true, threads: 2)
        }
        let t = Double(c.temperature), a = Double(alpha)
        let means = (divergence: totals.divergence / Double(n), kl: totals.kl / Double(n), ce: totals.ce / Double(n))
        let got = ["loss": a * t * t * means.divergence + (1 - a) * means.ce, "divergence": means.divergence,
                   "kl": means.kl, "ce": means.ce]
        for (name, value) in got.sorted(by: { $0.key < $1.key }) {
            let want = try Self.values(expected, "\(c.key).\(name)", as: Double.self)[0]
            #expect(abs(value - want) <= DivergenceFixtureTests.tolerance(want), "\(c.key) \(name): \(value) vs \(want)")
        }
        let gradient = try Self.values(expected, "\(c.key).gradient", as: Double.self)
        var worst = 0.0
        for (i, row) in scored.enumerated() {
            for v in 0..<vocab {
                let got = Double(studentBuffer[i * vocab + v]), want = gradient[row * vocab + v]
                worst = max(worst, abs(got - want) / DivergenceFixtureTests.tolerance(want))
                #expect(abs(got - want) <= DivergenceFixtureTests.tolerance(want), "\(c.key) row \(row) v \(v): \(got) vs \(want)")
            }
        }
        print("cached divergence \(c.key): worst gradient error / tolerance \(worst)")
    }
}
