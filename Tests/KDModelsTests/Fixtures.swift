import Foundation
import KDCore
import KDModels

/// Paths into Tests/Fixtures (the tests read the committed fixtures in place).
enum Fixtures {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Fixtures").path

    static func path(_ parts: String...) -> String {
        parts.reduce(root) { ($0 as NSString).appendingPathComponent($1) }
    }

    static let forwardModels = ["dense-tied-gqa", "dense-mqa-headdim-sharded", "dense-bf16", "moe-8x2"]

    /// The rows of a fixture's tokens.jsonl.
    static func tokenRows(_ model: String) throws -> [[Int]] {
        let text = try String(contentsOfFile: path("forward", model, "tokens.jsonl"), encoding: .utf8)
        return try text.split(separator: "\n").map { line in
            let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as! [String: Any]
            return object["input_ids"] as! [Int]
        }
    }

    /// A fresh temporary directory, removed by the caller with `cleanUp`.
    static func temporaryDirectory() -> String {
        let path = (NSTemporaryDirectory() as NSString).appendingPathComponent("kd-test-\(UUID().uuidString)")
        try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }
}

/// The largest |a − b| over the positions where `mask` is 1 ([rows] mask, [rows, width] values).
func maxError(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, width: Int, mask: [Bool]) -> Float {
    var worst: Float = 0
    for (row, keep) in mask.enumerated() where keep {
        for i in 0..<width { worst = max(worst, abs(a[row * width + i] - b[row * width + i])) }
    }
    return worst
}
