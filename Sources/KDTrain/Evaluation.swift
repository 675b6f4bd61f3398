import Foundation
import KDCore
import KDModels
import KDText

/// Held-out agreement of a student with its teacher: mean KL(teacher‖student) at the run's
/// temperature, top-1 agreement, and the student's cross-entropy and perplexity on the targets,
/// over the scored positions of a dataset.
public struct HeldOutReport: Sendable, Equatable {
    public var kl = 0.0
    public var agreement = 0.0
    public var ce = 0.0
    public var tokens = 0

    public var perplexity: Double { exp(ce) }

    public var json: [String: Any] {
        ["kl": kl, "top1_agreement": agreement, "ce": ce, "perplexity": perplexity, "tokens": tokens]
    }
}

public enum Evaluation {
    /// Runs teacher and student over `dataset` in batches (no gradients).
    public static func run(_ pass: DistillationPass, dataset: Dataset, batchSize: Int, padID: Int) throws -> HeldOutReport {
        var totals = DistillationLoss.Totals()
        for start in stride(from: 0, to: dataset.examples.count, by: batchSize) {
            let examples = Array(dataset.examples[start..<min(dataset.examples.count, start + batchSize)])
            totals.add(try pass.run(PaddedBatch(examples, padID: padID), gradientScale: nil).totals)
        }
        let n = Double(max(1, totals.rows))
        return HeldOutReport(kl: totals.kl / n, agreement: Double(totals.agreements) / n, ce: totals.ce / n, tokens: totals.rows)
    }

    /// The report of the student without its adapters (the base model), then with them.
    public static func baseAndAdapted(_ pass: DistillationPass, dataset: Dataset, batchSize: Int, padID: Int) throws
        -> (base: HeldOutReport, adapted: HeldOutReport) {
        let base = try pass.student.withAdaptersDetached { try run(pass, dataset: dataset, batchSize: batchSize, padID: padID) }
        return (base, try run(pass, dataset: dataset, batchSize: batchSize, padID: padID))
    }

    /// A small table comparing two reports, for people.
    public static func table(base: HeldOutReport, adapted: HeldOutReport, title: String) -> String {
        func pad(_ text: String, _ width: Int, left: Bool = false) -> String {
            let fill = String(repeating: " ", count: max(0, width - text.count))
            return left ? text + fill : fill + text
        }
        func row(_ name: String, _ values: [String]) -> String {
            "  " + pad(name, 22, left: true) + values.map { pad($0, 12) }.joined()
        }
        return [
            title,
            row("", ["base", "distilled", "change"]),
            row("KL(teacher‖student)", [String(format: "%.4f", base.kl), String(format: "%.4f", adapted.kl),
                                         String(format: "%+.4f", adapted.kl - base.kl)]),
            row("top-1 agreement", [String(format: "%.1f%%", base.agreement * 100), String(format: "%.1f%%", adapted.agreement * 100),
                                    String(format: "%+.1f pts", (adapted.agreement - base.agreement) * 100)]),
            row("student CE", [String(format: "%.4f", base.ce), String(format: "%.4f", adapted.ce),
                               String(format: "%+.4f", adapted.ce - base.ce)]),
            row("student perplexity", [String(format: "%.1f", base.perplexity), String(format: "%.1f", adapted.perplexity),
                                       String(format: "%+.1f", adapted.perplexity - base.perplexity)]),
        ].joined(separator: "\n")
    }
}
