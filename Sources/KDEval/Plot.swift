import Foundation
import KDCore
import KDText

/// An SVG of a run's metrics.jsonl: loss, kl_loss, ce_loss and grad_norm against step, one
/// panel each, drawn by hand (no plotting library); a run whose `divergence` is not the forward
/// KL (distill.loss reverse_kl or jsd) gets a panel for it after kl_loss.
public enum MetricsPlot {
    public static let series = ["loss", "kl_loss", "divergence", "ce_loss", "grad_norm"]

    /// The series with values: `divergence` only where it differs from kl_loss.
    static func drawn(_ points: [(step: Int, values: [String: Double])]) -> [String] {
        let distinct = points.contains { p in p.values["divergence"].map { $0 != p.values["kl_loss"] } ?? false }
        return series.filter { $0 != "divergence" || distinct }
    }

    /// Reads metrics.jsonl into (step, values by key).
    public static func read(_ path: String) throws -> [(step: Int, values: [String: Double])] {
        let lines = try JSONLines(path: path)
        let points = lines.records.compactMap { record -> (Int, [String: Double])? in
            guard let step = record.object["step"] as? Int else { return nil }
            var values: [String: Double] = [:]
            for key in series { if let v = record.object[key] as? Double, v.isFinite { values[key] = v } }
            return (step, values)
        }
        guard !points.isEmpty else { throw KDError("\(path): no metrics lines with a step") }
        return points
    }

    public static func svg(_ points: [(step: Int, values: [String: Double])], title: String) -> String {
        let width = 900.0, panelHeight = 190.0, left = 70.0, right = 20.0, top = 60.0, gap = 36.0
        let series = drawn(points)
        let height = top + Double(series.count) * (panelHeight + gap)
        let steps = points.map { Double($0.step) }
        let minStep = steps.min()!, maxStep = max(steps.max()!, minStep + 1)
        var svg = """
            <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(width))" height="\(Int(height))" font-family="sans-serif" font-size="12">
            <rect width="100%" height="100%" fill="white"/>
            <text x="\(left)" y="24" font-size="15">\(escape(title))</text>

            """
        let colors = ["#1f77b4", "#d62728", "#ff7f0e", "#2ca02c", "#9467bd"]
        for (index, key) in series.enumerated() {
            let y0 = top + Double(index) * (panelHeight + gap)
            let values = points.compactMap { p in p.values[key].map { (Double(p.step), $0) } }
            svg += "<text x=\"\(left)\" y=\"\(y0 - 6)\" font-weight=\"bold\">\(key)</text>\n"
            svg += "<rect x=\"\(left)\" y=\"\(y0)\" width=\"\(width - left - right)\" height=\"\(panelHeight)\" fill=\"none\" stroke=\"#999\"/>\n"
            guard let low = values.map(\.1).min(), let high = values.map(\.1).max() else { continue }
            let span = high > low ? high - low : max(1e-9, abs(high) * 0.1 + 1e-9)
            let (yLow, yHigh) = (low - 0.05 * span, high + 0.05 * span)
            func x(_ step: Double) -> Double { left + (step - minStep) / (maxStep - minStep) * (width - left - right) }
            func y(_ value: Double) -> Double { y0 + panelHeight - (value - yLow) / (yHigh - yLow) * panelHeight }
            for tick in 0...4 {
                let value = yLow + Double(tick) / 4 * (yHigh - yLow)
                svg += "<line x1=\"\(left - 4)\" x2=\"\(left)\" y1=\"\(y(value))\" y2=\"\(y(value))\" stroke=\"#999\"/>"
                svg += "<text x=\"\(left - 6)\" y=\"\(y(value) + 4)\" text-anchor=\"end\">\(String(format: "%.4g", value))</text>\n"
            }
            for tick in 0...5 {
                let step = minStep + Double(tick) / 5 * (maxStep - minStep)
                svg += "<text x=\"\(x(step))\" y=\"\(y0 + panelHeight + 14)\" text-anchor=\"middle\">\(Int(step.rounded()))</text>\n"
            }
            let path = values.map { String(format: "%.1f,%.1f", x($0.0), y($0.1)) }.joined(separator: " ")
            svg += "<polyline points=\"\(path)\" fill=\"none\" stroke=\"\(colors[Self.series.firstIndex(of: key) ?? 0])\" stroke-width=\"1.6\"/>\n"
        }
        svg += "<text x=\"\(width / 2)\" y=\"\(height - 8)\" text-anchor=\"middle\">step</text>\n</svg>\n"
        return svg
    }

    static func escape(_ text: String) -> String {
        text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
    }
}
