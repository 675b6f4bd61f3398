import Foundation
import KDCore

/// The knowledge-distillation loss of a chunk of scored positions, fused: one pass for the
/// maxima, one for the sums, one for the gradient, all per row so a row stays in cache.
///
/// For student logits s and teacher logits t of one position, temperature T and label y:
///   KL = Σ_v p_v (log p_v − log q_v), p = softmax(t/T), q = softmax(s/T)
///   CE = −log softmax(s)_y
///   loss = α·T²·KL/N + (1−α)·CE/N
///   ∂loss/∂s_v = [α·T·(q_v − p_v) + (1−α)·(softmax(s)_v − [v = y])] / N
/// With a = (t − max t)/T and b = (s − max s)/T, KL = Σ e^a·(a − b)/Σ e^a − log Σ e^a + log Σ e^b,
/// so the sums pass yields KL without a separate log pass.
public enum DistillationLoss {
    public struct Totals: Sendable {
        /// Σ KL and Σ CE over the rows (divide by N for the means).
        public var kl: Double = 0
        public var ce: Double = 0
        /// Rows where the student's top-1 token equals the teacher's.
        public var agreements = 0
        public var rows = 0

        public init() {}

        public mutating func add(_ other: Totals) {
            kl += other.kl
            ce += other.ce
            agreements += other.agreements
            rows += other.rows
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

        public init(alpha: Float, temperature: Float, gradientScale: Float, stride: Int, vocab: Int) {
            self.alpha = alpha
            self.temperature = temperature
            self.gradientScale = gradientScale
            self.stride = stride
            self.vocab = vocab
        }
    }

    /// Loss totals of `rows` positions; when `gradient`, the student logits are overwritten with
    /// ∂loss/∂s (and the teacher logits, a scratch copy, with e^((t − max t)/T)). Rows are spread
    /// over `threads` workers.
    public static func chunk(
        teacher: UnsafeMutablePointer<Float>, teacherStride: Int, student: UnsafeMutablePointer<Float>, labels: [Int32],
        settings: Settings, gradient: Bool, threads: Int
    ) -> Totals {
        let rows = labels.count
        var partial = [Totals](repeating: Totals(), count: rows)
        partial.withUnsafeMutableBufferPointer { buffer in
            let out = buffer.baseAddress!
            let work = { (row: Int) in
                out[row] = DistillationLoss.row(
                    teacher: teacher + row * teacherStride, student: student + row * settings.stride,
                    label: Int(labels[row]), settings: settings, gradient: gradient)
            }
            if threads > 1 && rows > 1 {
                DispatchQueue.concurrentPerform(iterations: rows, execute: work)
            } else {
                for row in 0..<rows { work(row) }
            }
        }
        // Summed in row order, so the totals do not depend on the thread count.
        var totals = Totals()
        for part in partial { totals.add(part) }
        return totals
    }

    static func row(teacher t: UnsafeMutablePointer<Float>, student s: UnsafeMutablePointer<Float>, label: Int,
                    settings: Settings, gradient: Bool) -> Totals {
        let n = settings.vocab
        let inverseT = 1 / settings.temperature
        // wholeT: T when it is a whole number from 1 to 4 (the usual values), else 0. Then
        // e^c = (e^b)^T: the sums pass keeps e^b in the student buffer and the gradient pass
        // needs no exponential.
        let wholeT = settings.temperature == settings.temperature.rounded() && (1...4).contains(settings.temperature)
            ? Int(settings.temperature) : 0
        let keepStudentExp = gradient && wholeT > 0
        // Pass 1: maxima and top-1 of both.
        let (teacherMax, teacherTop) = Kernels.maxAndFirstIndex(t, count: n)
        let (studentMax, studentTop) = Kernels.maxAndFirstIndex(s, count: n)
        let labelLogit = s[label]
        // Pass 2: Σe^a, Σe^b, Σe^c (c = s − max s, for CE at T = 1) and Σe^a·(a − b).
        let tm = Vec(repeating: teacherMax), sm = Vec(repeating: studentMax), invT = Vec(repeating: inverseT)
        var sumA = Vec.zero, sumB = Vec.zero, sumC = Vec.zero, weighted = Vec.zero
        var v = 0
        while v + 8 <= n {
            let a = (Kernels.load(t + v) - tm) * invT
            let c = Kernels.load(s + v) - sm
            let b = c * invT
            let ea = Kernels.exp(a), eb = Kernels.exp(b)
            if gradient { Kernels.store(ea, t + v) }  // kept for the gradient pass
            if keepStudentExp { Kernels.store(eb, s + v) }
            sumA += ea
            sumB += eb
            sumC += wholeT > 0 ? Kernels.power(eb, wholeT) : Kernels.exp(c)
            weighted.addProduct(ea, a - b)
            v += 8
        }
        var sA = sumA.sum(), sB = sumB.sum(), sC = sumC.sum(), w = weighted.sum()
        while v < n {
            let a = (t[v] - teacherMax) * inverseT
            let c = s[v] - studentMax
            let b = c * inverseT
            let ea = Kernels.exp(a), eb = Kernels.exp(b)
            if gradient { t[v] = ea }
            if keepStudentExp { s[v] = eb }
            sA += ea
            sB += eb
            sC += wholeT > 0 ? Kernels.power(Vec(repeating: eb), wholeT)[0] : Kernels.exp(c)
            w += ea * (a - b)
            v += 1
        }
        let logSA = Foundation.log(sA), logSB = Foundation.log(sB), logSC = Foundation.log(sC)
        let kl = w / sA - logSA + logSB
        let ce = logSC - (labelLogit - studentMax)
        if gradient {
            // Pass 3: the gradient, in place over the student buffer.
            let g = settings.gradientScale
            let klWeight = Vec(repeating: settings.alpha * settings.temperature * g)
            let ceWeight = Vec(repeating: (1 - settings.alpha) * g)
            let invA = Vec(repeating: 1 / sA), invB = Vec(repeating: 1 / sB), invC = Vec(repeating: 1 / sC)
            // Gradient lanes from the student buffer's lanes (e^b, or the logits) and e^a.
            func gradientLanes(_ student: Vec, _ teacherExp: Vec) -> Vec {
                let eb: Vec, ec: Vec
                if wholeT > 0 {
                    (eb, ec) = (student, Kernels.power(student, wholeT))
                } else {
                    let c = student - sm
                    (eb, ec) = (Kernels.exp(c * invT), Kernels.exp(c))
                }
                return klWeight * (eb * invB - teacherExp * invA) + ceWeight * (ec * invC)
            }
            v = 0
            while v + 8 <= n {
                Kernels.store(gradientLanes(Kernels.load(s + v), Kernels.load(t + v)), s + v)
                v += 8
            }
            if v < n {
                var student = Vec.zero, teacherExp = Vec.zero
                for i in v..<n { (student[i - v], teacherExp[i - v]) = (s[i], t[i]) }
                let lanes = gradientLanes(student, teacherExp)
                for i in v..<n { s[i] = lanes[i - v] }
            }
            s[label] -= (1 - settings.alpha) * g
            // Logits beyond the shared vocabulary (embedding padding rows) get no gradient.
            if settings.stride > n { (s + n).update(repeating: 0, count: settings.stride - n) }
        }
        var totals = Totals()
        totals.kl = Double(kl)
        totals.ce = Double(ce)
        totals.agreements = teacherTop == studentTop ? 1 : 0
        totals.rows = 1
        return totals
    }
}
