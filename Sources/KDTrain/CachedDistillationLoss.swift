import Foundation
import KDCore

/// The teacher's side of some scored positions as an offline cache holds it (`TeacherCache`):
/// per row, the K token ids with the largest logits (descending, ties to the smaller id), their
/// raw logits, the log-sum-exp of the whole row and the log of the probability mass outside the
/// K ids (−∞ when K covers the vocabulary), both at temperature 1 and at the cache's temperature
/// T_c (the run's distill.temperature when the cache was made).
public struct TopKRows: Sendable {
    public let k: Int
    /// T_c, the temperature of `logSumExpT` and `tailLogMassT`.
    public let temperature: Float
    public var ids: [Int32] = []
    public var logits: [Float] = []
    public var logSumExp: [Float] = []
    public var tailLogMass: [Float] = []
    /// log Σ_v e^(t_v/T_c) and log Σ_{v ∉ ids} e^(t_v/T_c − that).
    public var logSumExpT: [Float] = []
    public var tailLogMassT: [Float] = []

    public init(k: Int, temperature: Float) {
        self.k = k
        self.temperature = temperature
    }

    public var count: Int { logSumExp.count }

    /// Rows `range` of these.
    public func rows(_ range: Range<Int>) -> TopKRows {
        var out = TopKRows(k: k, temperature: temperature)
        out.ids = Array(ids[(range.lowerBound * k)..<(range.upperBound * k)])
        out.logits = Array(logits[(range.lowerBound * k)..<(range.upperBound * k)])
        out.logSumExp = Array(logSumExp[range])
        out.tailLogMass = Array(tailLogMass[range])
        out.logSumExpT = Array(logSumExpT[range])
        out.tailLogMassT = Array(tailLogMassT[range])
        return out
    }

    public mutating func append(_ other: TopKRows) {
        ids += other.ids
        logits += other.logits
        logSumExp += other.logSumExp
        tailLogMass += other.tailLogMass
        logSumExpT += other.logSumExpT
        tailLogMassT += other.tailLogMassT
    }
}

/// The distillation loss against a cached top-K teacher (`TopKRows`), fused and per row like
/// `DistillationLoss.chunk`: a pass for the student's maximum, a pass for its sums, a pass for
/// the gradient, and O(K) work on the cached ids; nothing of [rows × vocab] is allocated.
///
/// The teacher is known on K + 1 outcomes: the K cached ids and "the rest". With the cached raw
/// logits t_k, the row's log-sum-exp ℓ and log tail mass τ at T = 1, and ℓ_c, τ_c at the cache's
/// temperature T_c:
///   T = 1:    P_k = e^(t_k − ℓ),  P_rest = e^τ   (exact: the teacher's distribution coarse-grained)
///   T = T_c:  P_k = e^(t_k/T − ℓ_c),  P_rest = e^τ_c   (exact at T_c likewise)
///   other T:  P_k = softmax over the K cached logits of t/T,  P_rest = 0   (renormalised over the
///             K ids: that tempered tail is not in the cache)
/// The student's distribution q = softmax(s/T) over the whole vocabulary is coarse-grained the
/// same way: Q_k = q at id k, Q_rest = Σ of q outside the K ids (summed directly, not 1 − Σ Q_k).
/// When K is the vocabulary there is no "rest" and, at T = 1, D is the live teacher's divergence.
/// D is the chosen divergence (`Divergence`) between P and Q over these outcomes, 0·log 0 = 0:
///   forward_kl Σ_j P_j log(P_j/Q_j);  reverse_kl Σ_j Q_j log(Q_j/P_j) (at T = 1 or T_c only: with
///   P_rest = 0 it is infinite, and training refuses it);  jsd(β) β·KL(P‖M) + (1−β)·KL(Q‖M),
///   M = βP + (1−β)Q.
/// At T = 1 and T_c, D ≤ the divergence of the full distributions (coarse-graining loses information).
/// `Totals.kl` is the forward KL(P‖Q) of the same outcomes, whatever D is; agreement compares the
/// student's top-1 with the cached first id; CE is as in the live loss.
///
/// Gradient: D = Σ_j f_j(Q_j), and ∂Q_j/∂s_v = (q_v·[v ∈ j] − Q_j·q_v)/T, so
///   ∂D/∂s_v = (q_v/T)·(g_j(v) − ḡ),  g_j = f_j′(Q_j),  ḡ = Σ_j g_j·Q_j,
/// with g_j = −P_j/Q_j (forward_kl), log(Q_j/P_j) + 1 (reverse_kl), (1−β)·log(Q_j/M_j) (jsd). Every
/// id outside the cache shares g_rest, so the gradient pass is one formula over the row, and the K
/// cached ids are then set from their own g_k. The K + 1 outcomes are summed in float64.
///
/// Q_rest: the cached ids are masked (their logits set to −greatestFiniteMagnitude) for the sums
/// pass and restored after it. A masked id still adds the clamped exponential's floor, e^−87.3 ≈
/// 1.2·10⁻³⁸, which vanishes in the rounding of any tail sum above ~10⁻³⁰ of the largest term.
extension DistillationLoss {
    /// Loss totals of `targets.count` rows against the cached teacher; when `gradient`, the
    /// student logits are overwritten with ∂loss/∂s. `targets` must hold valid rows: ids below
    /// `settings.vocab`, distinct within a row (`TeacherCache` checks both when it reads them).
    public static func cachedChunk(
        targets: TopKRows, student: UnsafeMutablePointer<Float>, labels: [Int32], settings: Settings, gradient: Bool, threads: Int
    ) -> Totals {
        let rows = labels.count
        precondition(targets.count == rows && targets.ids.count == rows * targets.k && targets.k <= settings.vocab)
        return targets.ids.withUnsafeBufferPointer { ids in
            targets.logits.withUnsafeBufferPointer { logits in
                let k = targets.k
                return sumRows(rows, threads: threads) { row in
                    DistillationLoss.cachedRow(
                        ids: ids.baseAddress! + row * k, logits: logits.baseAddress! + row * k, k: k,
                        tail: DistillationLoss.tail(targets, row: row, temperature: settings.temperature),
                        student: student + row * settings.stride, label: Int(labels[row]), settings: settings, gradient: gradient)
                }
            }
        }
    }

    /// The log-sum-exp and log tail mass a row of `targets` holds for temperature T: at 1, at the
    /// cache's temperature, or nil (renormalise over the K ids).
    static func tail(_ targets: TopKRows, row: Int, temperature: Float) -> (logSumExp: Float, logMass: Float)? {
        if temperature == 1 { return (targets.logSumExp[row], targets.tailLogMass[row]) }
        if temperature == targets.temperature { return (targets.logSumExpT[row], targets.tailLogMassT[row]) }
        return nil
    }

    static func cachedRow(ids: UnsafePointer<Int32>, logits t: UnsafePointer<Float>, k: Int, tail: (logSumExp: Float, logMass: Float)?,
                          student s: UnsafeMutablePointer<Float>, label: Int, settings: Settings, gradient: Bool) -> Totals {
        let n = settings.vocab
        let temperature = Double(settings.temperature)
        let inverseT = 1 / settings.temperature
        let hasRest = k < n
        let (studentMax, studentTop) = Kernels.maxAndFirstIndex(s, count: n)
        let labelLogit = s[label]
        return withUnsafeTemporaryAllocation(of: Double.self, capacity: 4 * (k + 1)) { scratch in
            // Per outcome j (the K ids, then the rest at index k): P_j, Q_j and g_j; and the
            // student's logits at the cached ids, kept while they are masked.
            let p = scratch.baseAddress!, q = p + (k + 1), g = q + (k + 1), logit = g + (k + 1)
            for j in 0..<k {
                let id = Int(ids[j])
                logit[j] = Double(s[id])
                s[id] = -.greatestFiniteMagnitude
            }
            // Sums over the rest: Σe^b (b = (s − max)/T) and Σe^c (c = s − max, for CE).
            let sm = Vec(repeating: studentMax), invT = Vec(repeating: inverseT)
            var sumB = Vec.zero, sumC = Vec.zero
            var v = 0
            while v + 8 <= n {
                let c = Kernels.load(s + v) - sm
                sumB += Kernels.exp(c * invT)
                sumC += Kernels.exp(c)
                v += 8
            }
            var restB = Double(sumB.sum()), restC = Double(sumC.sum())
            while v < n {
                let c = s[v] - studentMax
                restB += Double(Kernels.exp(c * inverseT))
                restC += Double(Kernels.exp(c))
                v += 1
            }
            if !hasRest { (restB, restC) = (0, 0) }
            var totalB = restB, totalC = restC
            for j in 0..<k {
                let c = logit[j] - Double(studentMax)
                s[Int(ids[j])] = Float(logit[j])
                q[j] = Foundation.exp(c / temperature)
                totalB += q[j]
                totalC += Foundation.exp(c)
            }
            for j in 0..<k { q[j] /= totalB }
            q[k] = restB / totalB
            // The teacher's outcomes.
            if let tail {
                for j in 0..<k { p[j] = Foundation.exp(Double(t[j]) / temperature - Double(tail.logSumExp)) }
                p[k] = hasRest ? Foundation.exp(Double(tail.logMass)) : 0
            } else {
                var top = -Double.infinity
                for j in 0..<k { top = Swift.max(top, Double(t[j])) }
                var sum = 0.0
                for j in 0..<k {
                    p[j] = Foundation.exp((Double(t[j]) - top) / temperature)
                    sum += p[j]
                }
                for j in 0..<k { p[j] /= sum }
                p[k] = 0
            }
            // D, the forward KL, g and ḡ over the outcomes (the rest only when there is one).
            let outcomes = hasRest ? k + 1 : k
            func xLogRatio(_ x: Double, _ y: Double) -> Double { x > 0 ? x * Foundation.log(x / y) : 0 }
            var divergence = 0.0, forward = 0.0, mean = 0.0
            for j in 0..<outcomes {
                forward += xLogRatio(p[j], q[j])
                switch settings.divergence {
                case .forwardKL:
                    divergence += xLogRatio(p[j], q[j])
                    g[j] = -p[j] / q[j]
                case .reverseKL:
                    divergence += xLogRatio(q[j], p[j])
                    g[j] = Foundation.log(q[j] / p[j]) + 1
                case .jsd(let beta):
                    let b = Double(beta)
                    let m = b * p[j] + (1 - b) * q[j]
                    divergence += b * xLogRatio(p[j], m) + (1 - b) * xLogRatio(q[j], m)
                    g[j] = (1 - b) * Foundation.log(q[j] / m)
                }
                mean += g[j] * q[j]
            }
            if gradient {
                let scale = settings.gradientScale
                let klWeight = Double(settings.alpha * settings.temperature * scale)
                let ceWeight = settings.ceShare * scale
                // Every id as if it were in the rest; then the cached ids from their own g.
                let restFactor = Float(klWeight * ((hasRest ? g[k] : 0) - mean) / totalB)
                let restWeight = Vec(repeating: restFactor), ceScale = Vec(repeating: Float(Double(ceWeight) / totalC))
                v = 0
                while v + 8 <= n {
                    let c = Kernels.load(s + v) - sm
                    Kernels.store(restWeight * Kernels.exp(c * invT) + ceScale * Kernels.exp(c), s + v)
                    v += 8
                }
                while v < n {
                    let c = s[v] - studentMax
                    s[v] = restFactor * Kernels.exp(c * inverseT) + ceScale[0] * Kernels.exp(c)
                    v += 1
                }
                for j in 0..<k {
                    let c = logit[j] - Double(studentMax)
                    let value = klWeight * q[j] * (g[j] - mean) + Double(ceWeight) * Foundation.exp(c) / totalC
                    s[Int(ids[j])] = Float(value)
                }
                s[label] -= ceWeight
                // Logits beyond the shared vocabulary (embedding padding rows) get no gradient.
                if settings.stride > n { (s + n).update(repeating: 0, count: settings.stride - n) }
            }
            var totals = Totals()
            totals.kl = forward
            totals.divergence = divergence
            totals.ce = settings.crossEntropy ? Foundation.log(totalC) - Double(labelLogit - studentMax) : 0
            totals.ceRows = settings.crossEntropy ? 1 : 0
            totals.agreements = k > 0 && Int(ids[0]) == studentTop ? 1 : 0
            totals.rows = 1
            return totals
        }
    }
}
