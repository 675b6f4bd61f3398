import Foundation
import KDText

enum TextFixtures {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Fixtures").path

    static func path(_ parts: String...) -> String {
        parts.reduce(root) { ($0 as NSString).appendingPathComponent($1) }
    }

    /// The Qwen3 tokenizer kept in Configs/tokenizer/qwen3 (the demo's models use it too).
    static let qwen3Directory = URL(fileURLWithPath: root).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Configs/tokenizer/qwen3").path

    /// Loaded once for all tests.
    static let qwen3: Tokenizer = try! Tokenizer.load(directory: qwen3Directory)

    static func jsonLines(_ name: String) throws -> [[String: Any]] {
        let text = try String(contentsOfFile: path("tokenizer", name), encoding: .utf8)
        return try text.split(separator: "\n").map {
            try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any]
        }
    }

    static func temporaryDirectory() -> String {
        let path = (NSTemporaryDirectory() as NSString).appendingPathComponent("kd-text-\(UUID().uuidString)")
        try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }
}
