import Foundation
import KDCore

/// The knowledge-distillation loss of a chunk of scored positions, fused: one pass for the
/// maxima, one for the sums, one for the gradient (and, for `jsd`, one for the mixture between
/// the last two), all per row so a row stays in cache. Nothing of [rows × vocab] is allocated:
/// the per-element values a later pass needs are kept in the row's own teacher and student
/// buffers.
///
/// For student logits s and teacher logits t of one position, temperature T and label y, with
/// p = softmax(t/T), q = softmax(s/T), N the scored tokens of the optimizer step:
///   CE = −log softmax(s)_y
///   loss = α·T²·D/N + (1−α)·CE/N   (the CE term only off-policy: `Settings.crossEntropy`)
///   ∂loss/∂s_v = [α·T²·∂D/∂s_v + (1−α)·(softmax(s)_v − [v = y])] / N
/// where D is the divergence chosen (`Divergence`), using ∂q_u/∂s_v = q_u·([u = v] − q_v)/T:
///
/// forward_kl: D = KL(p‖q) = Σ_v p_v (log p_v − log q_v),  ∂D/∂s_v = (q_v − p_v)/T.
///   With a = (t − max t)/T and b = (s − max s)/T, KL = Σ e^a·(a − b)/Σ e^a − log Σ e^a + log Σ e^b,
///   so the sums pass yields KL without a separate log pass.
///
/// reverse_kl: D = KL(q‖p) = Σ_v q_v (log q_v − log p_v) = Σ e^b·(b − a)/Σ e^b − log Σ e^b + log Σ e^a,
///   ∂D/∂s_v = q_v·(d_v − D)/T with d_v = log q_v − log p_v = (b_v − a_v) + log Σ e^a − log Σ e^b.
///   The sums pass leaves b − a in the teacher buffer for the gradient pass.
///
/// jsd(β), 0 < β < 1: m = β·p + (1−β)·q,  D = β·KL(p‖m) + (1−β)·KL(q‖m).
///   Since β·p + (1−β)·q = m, D = β Σ p log p + (1−β) Σ q log q − Σ m log m, and m depends on s
///   only through q (∂m_u/∂q_u = 1−β), so ∂D/∂q_u = (1−β)(log q_u + 1) − (1−β)(log m_u + 1) =
///   (1−β)·log(q_u/m_u), and through the softmax
///     ∂D/∂s_v = (1−β)·q_v·(L_v − KL(q‖m))/T,  L_v = log(q_v/m_v),  KL(q‖m) = Σ_u q_u L_u.
///   L is formed without overflow or log 0 from d = log q − log p: for d ≥ 0,
///   L = −log(β·e^(−d) + (1−β)); for d < 0, L = d − log(β + (1−β)·e^d); the argument of the log
///   lies in [min(β, 1−β), 1]. Then log(p/m) = L − d and D = Σ [β·p·(L − d) + (1−β)·q·L].
///   This needs p and q normalised, so after the sums pass a mixture pass forms D and KL(q‖m)
///   and leaves L in the teacher buffer for the gradient pass.
///   TRL's `GKDTrainer.generalized_jsd_loss` (trl 0.x–1.x) builds its mixture as
///   logsumexp(log q + log(1−β), log p + log β), i.e. the same m = β·p + (1−β)·q, and weights
///   β·KL(p‖m) + (1−β)·KL(q‖m) (its `kl_teacher`, `kl_student`): the same D for the same β, per
///   token at its temperature, without the T² factor and CE term added here. (Its first release
///   mixed log-probabilities instead, log m = β·log q + (1−β)·log p, with β on the student's
///   side: not this D. Its special cases β = 0 → KL(p‖q) and β = 1 → KL(q‖p) are not limits of
///   this D, which tends to 0 at both ends; use forward_kl or reverse_kl for those.)
///
/// `Totals.kl` is always the forward KL(p‖q) (held-out reports use it whatever the training
/// divergence); `Totals.divergence` is D.
public enum DistillationLoss {
    /// The divergence between the teacher's and the student's distributions at temperature T.
    public enum Divergence: Sendable, Equatable {
        case forwardKL
        case reverseKL
        /// The generalized Jensen-Shannon divergence with mixture β·p + (1−β)·q, 0 < β < 1.
        case jsd(beta: Float)
    }

    public struct Totals: Sendable {
        /// Σ KL(p‖q), Σ D (the chosen divergence) and Σ CE over the rows (divide by N for the means).
        public var kl: Double = 0
        public var divergence: Double = 0
        public var ce: Double = 0
        /// Rows where the student's top-1 token equals the teacher's.
        public var agreements = 0
        public var rows = 0
        /// Rows whose CE is in the loss (and in `ce`): all but on-policy ones.
        public var ceRows = 0

        public init() {}

        /// The totals of every rank, summed in rank order.
        public mutating func sum(over communicator: Communicator) throws {
            let sums = try communicator.sum([kl, divergence, ce])
            (kl, divergence, ce) = (sums[0], sums[1], sums[2])
            let counts = try communicator.sum([agreements, rows, ceRows])
            (agreements, rows, ceRows) = (counts[0], counts[1], counts[2])
        }

        public mutating func add(_ other: Totals) {
            kl += other.kl
            divergence += other.divergence
            ce += other.ce
            agreements += other.agreements
            rows += other.rows
            ceRows += other.ceRows
        }
    }

    public struct Settings: Sendable {
        public let alpha: Float
        public let temperature: Float
        /// 1/N: the gradient of the mean over the optimizer step's scored tokens.
        public let gradientScale: Float
        /// Logits per row in the buffers, and how many of them the loss uses (the shared vocabulary).
        public let stride: Int
        public let vocab: Int
        public let divergence: Divergence
        /// Whether the (1−α)·CE term is in the loss; off for tokens the student sampled itself
        /// (on-policy), whose loss is α·T²·D/N alone.
        public let crossEntropy: Bool

        public init(alpha: Float, temperature: Float, gradientScale: Float, stride: Int, vocab: Int,
                    divergence: Divergence = .forwardKL, crossEntropy: Bool = true) {
            self.alpha = alpha
            self.temperature = temperature
            self.gradientScale = gradientScale
            self.stride = stride
            self.vocab = vocab
            self.divergence = divergence
            self.crossEntropy = crossEntropy
        }

        /// The weight of CE in the loss: 1 − α, or 0 without the term.
        var ceShare: Float { crossEntropy ? 1 - alpha : 0 }
    }

    /// Loss totals of `rows` positions; when `gradient`, the student logits are overwritten with
    /// ∂loss/∂s (and the teacher logits, a scratch copy, with per-element values of the gradient
    /// pass). Rows are spread over `threads` workers.
    public static func chunk(
        teacher: UnsafeMutablePointer<Float>, teacherStride: Int, student: UnsafeMutablePointer<Float>, labels: [Int32],
        settings: Settings, gradient: Bool, threads: Int
    ) -> Totals {
        sumRows(labels.count, threads: threads) { row in
            DistillationLoss.row(teacher: teacher + row * teacherStride, student: student + row * settings.stride,
                                 label: Int(labels[row]), settings: settings, gradient: gradient)
        }
    }

    /// The totals of rows 0..<rows, each computed by `row` (on `threads` workers), summed in row
    /// order so they do not depend on the thread count.
    static func sumRows(_ rows: Int, threads: Int, _ row: (Int) -> Totals) -> Totals {
        var partial = [Totals](repeating: Totals(), count: rows)
        partial.withUnsafeMutableBufferPointer { buffer in
            let out = buffer.baseAddress!
            if threads > 1 && rows > 1 {
                DispatchQueue.concurrentPerform(iterations: rows) { out[$0] = row($0) }
            } else {
                for index in 0..<rows { out[index] = row(index) }
            }
        }
        var totals = Totals()
        for part in partial { totals.add(part) }
        return totals
    }


    static func row(teacher t: UnsafeMutablePointer<Float>, student s: UnsafeMutablePointer<Float>, label: Int,
                    settings: Settings, gradient: Bool) -> Totals {
        let n = settings.vocab
        let inverseT = 1 / settings.temperature
        // wholeT: T when it is a whole number from 1 to 4 (the usual values), else 0. Then
        // e^c = (e^b)^T: the pass before the gradient keeps e^b in the student buffer and the
        // gradient pass needs no exponential.
        let wholeT = settings.temperature == settings.temperature.rounded() && (1...4).contains(settings.temperature)
            ? Int(settings.temperature) : 0
        var reverse = false, jsd = false, jsdBeta: Float = 0
        switch settings.divergence {
        case .forwardKL: break
        case .reverseKL: reverse = true
        case .jsd(let beta): (jsd, jsdBeta) = (true, beta)
        }
        // With jsd the mixture pass needs the logits, so it (not the sums pass) keeps e^b.
        let keepStudentExp = gradient && wholeT > 0 && !jsd
        // What the sums pass leaves in the teacher buffer: e^a (forward_kl) or b − a (reverse_kl).
        let keepTeacher = gradient && !jsd
        // Pass 1: maxima and top-1 of both.
        let (teacherMax, teacherTop) = Kernels.maxAndFirstIndex(t, count: n)
        let (studentMax, studentTop) = Kernels.maxAndFirstIndex(s, count: n)
        let labelLogit = s[label]
        // Pass 2: Σe^a, Σe^b, Σe^c (c = s − max s, for CE at T = 1), Σe^a·(a − b) and, for
        // reverse_kl, Σe^b·(b − a).
        let tm = Vec(repeating: teacherMax), sm = Vec(repeating: studentMax), invT = Vec(repeating: inverseT)
        var sumA = Vec.zero, sumB = Vec.zero, sumC = Vec.zero, weighted = Vec.zero, weightedReverse = Vec.zero
        var v = 0
        while v + 8 <= n {
            let a = (Kernels.load(t + v) - tm) * invT
            let c = Kernels.load(s + v) - sm
            let b = c * invT
            let ea = Kernels.exp(a), eb = Kernels.exp(b)
            if keepTeacher { Kernels.store(reverse ? b - a : ea, t + v) }  // kept for the gradient pass
            if keepStudentExp { Kernels.store(eb, s + v) }
            sumA += ea
            sumB += eb
            sumC += wholeT > 0 ? Kernels.power(eb, wholeT) : Kernels.exp(c)
            weighted.addProduct(ea, a - b)
            if reverse { weightedReverse.addProduct(eb, b - a) }
            v += 8
        }
        var sA = sumA.sum(), sB = sumB.sum(), sC = sumC.sum(), w = weighted.sum(), wReverse = weightedReverse.sum()
        while v < n {
            let a = (t[v] - teacherMax) * inverseT
            let c = s[v] - studentMax
            let b = c * inverseT
            let ea = Kernels.exp(a), eb = Kernels.exp(b)
            if keepTeacher { t[v] = reverse ? b - a : ea }
            if keepStudentExp { s[v] = eb }
            sA += ea
            sB += eb
            sC += wholeT > 0 ? Kernels.power(Vec(repeating: eb), wholeT)[0] : Kernels.exp(c)
            w += ea * (a - b)
            if reverse { wReverse += eb * (b - a) }
            v += 1
        }
        let logSA = Foundation.log(sA), logSB = Foundation.log(sB), logSC = Foundation.log(sC)
        let kl = w / sA - logSA + logSB
        let ce = logSC - (labelLogit - studentMax)
        var divergence = kl
        // The gradient pass's divergence term is klWeight·(e^b/Σe^b)·(scratch − shift), the
        // scratch being the teacher buffer's lane (unused for forward_kl).
        var klWeight = settings.alpha * settings.temperature * settings.gradientScale
        var shift: Float = 0
        if reverse {
            divergence = wReverse / sB - logSB + logSA
            shift = divergence - (logSA - logSB)
        }
        if jsd {
            // Pass 2b, the mixture: D = Σ β·p·(L − d) + (1−β)·q·L and KL(q‖m) = Σ q·L; L is kept.
            let beta = Vec(repeating: jsdBeta), oneMinusBeta = Vec(repeating: 1 - jsdBeta)
            let invA = Vec(repeating: 1 / sA), invB = Vec(repeating: 1 / sB)
            let logRatio = Vec(repeating: logSA - logSB)
            // Lanes of L, e^b and the two summands from the lanes of the teacher's and student's logits.
            func mixtureLanes(_ teacher: Vec, _ student: Vec) -> (l: Vec, eb: Vec, term: Vec, qL: Vec) {
                let a = (teacher - tm) * invT
                let b = (student - sm) * invT
                let ea = Kernels.exp(a), eb = Kernels.exp(b)
                let p = ea * invA, q = eb * invB
                let d = (b - a) + logRatio
                var magnitude = d
                magnitude.replace(with: -d, where: d .< 0)
                let e = Kernels.exp(-magnitude)
                var argument = beta.addingProduct(oneMinusBeta, e)
                argument.replace(with: oneMinusBeta.addingProduct(beta, e), where: d .>= 0)
                var l = -logarithm(argument)
                l.replace(with: d + l, where: d .< 0)
                let qL = q * l
                return (l, eb, beta * p * (l - d) + oneMinusBeta * qL, qL)
            }
            var sumD = Vec.zero, sumQL = Vec.zero
            v = 0
            while v + 8 <= n {
                let lanes = mixtureLanes(Kernels.load(t + v), Kernels.load(s + v))
                if gradient {
                    Kernels.store(lanes.l, t + v)
                    if wholeT > 0 { Kernels.store(lanes.eb, s + v) }
                }
                sumD += lanes.term
                sumQL += lanes.qL
                v += 8
            }
            if v < n {
                // The tail in one vector; the lanes past the row hold the maxima (a = b = 0,
                // finite) and are masked out of the sums.
                var teacher = tm, student = sm, mask = Vec.zero
                for i in v..<n { (teacher[i - v], student[i - v], mask[i - v]) = (t[i], s[i], 1) }
                let lanes = mixtureLanes(teacher, student)
                if gradient {
                    for i in v..<n {
                        t[i] = lanes.l[i - v]
                        if wholeT > 0 { s[i] = lanes.eb[i - v] }
                    }
                }
                sumD += lanes.term * mask
                sumQL += lanes.qL * mask
            }
            divergence = sumD.sum()
            shift = sumQL.sum()
            klWeight *= 1 - jsdBeta
        }
        if gradient {
            // Pass 3: the gradient, in place over the student buffer.
            let g = settings.gradientScale
            let klWeight = Vec(repeating: klWeight)
            let ceWeight = Vec(repeating: settings.ceShare * g)
            let invA = Vec(repeating: 1 / sA), invB = Vec(repeating: 1 / sB), invC = Vec(repeating: 1 / sC)
            let shift = Vec(repeating: shift)
            let forward = !reverse && !jsd
            // Gradient lanes from the student buffer's lanes (e^b, or the logits) and the teacher
            // buffer's (e^a for forward_kl, else the scratch of the divergence).
            func gradientLanes(_ student: Vec, _ teacherScratch: Vec) -> Vec {
                let eb: Vec, ec: Vec
                if wholeT > 0 {
                    (eb, ec) = (student, Kernels.power(student, wholeT))
                } else {
                    let c = student - sm
                    (eb, ec) = (Kernels.exp(c * invT), Kernels.exp(c))
                }
                if forward {
                    return klWeight * (eb * invB - teacherScratch * invA) + ceWeight * (ec * invC)
                }
                return klWeight * ((eb * invB) * (teacherScratch - shift)) + ceWeight * (ec * invC)
            }
            v = 0
            while v + 8 <= n {
                Kernels.store(gradientLanes(Kernels.load(s + v), Kernels.load(t + v)), s + v)
                v += 8
            }
            if v < n {
                var student = Vec.zero, teacherScratch = Vec.zero
                for i in v..<n { (student[i - v], teacherScratch[i - v]) = (s[i], t[i]) }
                let lanes = gradientLanes(student, teacherScratch)
                for i in v..<n { s[i] = lanes[i - v] }
            }
            s[label] -= settings.ceShare * g
            // Logits beyond the shared vocabulary (embedding padding rows) get no gradient.
            if settings.stride > n { (s + n).update(repeating: 0, count: settings.stride - n) }
        }
        var totals = Totals()
        totals.kl = Double(kl)
        totals.divergence = Double(divergence)
        totals.ce = settings.crossEntropy ? Double(ce) : 0
        totals.ceRows = settings.crossEntropy ? 1 : 0
        totals.agreements = teacherTop == studentTop ? 1 : 0
        totals.rows = 1
        return totals
    }

    /// log x for eight lanes of positive normal x: x = 2^e·m with m in [√½, √2), and
    /// log m = 2·atanh(z) = 2(z + z³/3 + z⁵/5 + z⁷/7 + z⁹/9), z = (m − 1)/(m + 1), |z| ≤ 0.1716,
    /// whose first omitted term is below 2·z¹¹/11 < 7·10⁻¹⁰ (under f32 rounding). z is formed from
    /// m − 1 exactly, so log x near 1 keeps its relative precision.
    @inline(__always)
    static func logarithm(_ x: Vec) -> Vec {
        let bits = unsafeBitCast(x, to: SIMD8<Int32>.self)
        var exponent = (bits &>> 23) &- 127
        var m = unsafeBitCast((bits & 0x007F_FFFF) | 0x3F80_0000, to: Vec.self)
        let high = m .> 1.41421356
        m.replace(with: m * 0.5, where: high)
        exponent.replace(with: exponent &+ 1, where: high)
        // The integer exponent as a float through the mantissa bits of 1.5·2²³ (no lane-by-lane conversion).
        let magic = Vec(repeating: 12_582_912)
        let e = unsafeBitCast(unsafeBitCast(magic, to: SIMD8<Int32>.self) &+ exponent, to: Vec.self) - magic
        let z = (m - 1) / (m + 1)
        let z2 = z * z
        var series = Vec(repeating: 1.0 / 7).addingProduct(Vec(repeating: 1.0 / 9), z2)
        series = Vec(repeating: 1.0 / 5).addingProduct(series, z2)
        series = Vec(repeating: 1.0 / 3).addingProduct(series, z2)
        series = Vec(repeating: 1).addingProduct(series, z2)
        return (2 * z * series).addingProduct(e, Vec(repeating: 0.693147181))
    }
}
