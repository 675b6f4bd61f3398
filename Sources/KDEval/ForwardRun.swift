import Foundation
import KDCore
import KDModels
import KDText

/// `kd forward`: logits of a model on rows of token ids, written to a safetensors file.
public struct ForwardRun {
    public struct Summary: Sendable {
        public let rows: Int
        public let sequenceLength: Int
        public let tokens: Int
        public let loadSeconds: Double
        public let forwardSeconds: Double
        /// The forward's seconds through the decoder layers (embedding and final norm included)
        /// and through the output projection.
        public let layersSeconds: Double
        public let headSeconds: Double
        public var tokensPerSecond: Double { Double(tokens) / max(forwardSeconds, 1e-9) }
    }

    /// Reads `{"input_ids": [...]}` per line; every problem names the file and line.
    public static func readRows(_ path: String, vocabSize: Int) throws -> [[Int]] {
        let lines = try JSONLines(path: path)
        guard !lines.records.isEmpty else { throw KDError("\(path): no records") }
        return try lines.records.map { record in
            do {
                guard let ids = try record.tokenIDs("input_ids") else { throw KDError("missing \"input_ids\"") }
                guard !ids.isEmpty else { throw KDError("\"input_ids\" is empty") }
                if let bad = ids.firstIndex(where: { $0 < 0 || $0 >= vocabSize }) {
                    throw KDError("\"input_ids\"[\(bad)] = \(ids[bad]) is outside the vocabulary (vocab_size \(vocabSize))")
                }
                return ids
            } catch let error as KDError {
                throw KDError("\(path):\(record.line): \(error.message)")
            }
        }
    }

    /// Runs the model over `tokensPath` in batches of `batchRows`, each right-padded to the
    /// longest row of the file, and writes `logits` [B, S, V] (f32) and `attention_mask` [B, S] (i64).
    public static func run(model: CausalLM, tokensPath: String, outputPath: String, batchRows: Int = 8) throws -> Summary {
        let rows = try readRows(tokensPath, vocabSize: model.spec.vocabSize)
        let length = rows.map(\.count).max()!
        let vocab = model.spec.vocabSize
        let writer = try SafetensorsWriter(path: outputPath, entries: [
            .init(name: "logits", dtype: .f32, shape: [rows.count, length, vocab]),
            .init(name: "attention_mask", dtype: .i64, shape: [rows.count, length]),
        ])
        var seconds = 0.0
        let phases = PhaseTimes()
        model.timing = PhaseTimes.Scope(phases, prefix: "model")
        defer { model.timing = nil }
        do {
            for start in stride(from: 0, to: rows.count, by: max(1, batchRows)) {
                let slice = Array(rows[start..<min(rows.count, start + max(1, batchRows))])
                // Pad to the file's longest row so every batch fills [rows, length, vocab] directly.
                let padded = TokenBatch(rows: slice, padID: 0, length: length)
                let clock = ContinuousClock.now
                let logits = try model.logits(padded)
                seconds += (ContinuousClock.now - clock).seconds
                try writer.write(logits)
            }
            var mask = [Int64](repeating: 0, count: rows.count * length)
            for (r, row) in rows.enumerated() { for t in 0..<row.count { mask[r * length + t] = 1 } }
            try writer.write(raw: mask.withUnsafeBytes { Data($0) })
            try writer.finish()
        } catch {
            writer.discard()
            throw error
        }
        let times = phases.take()
        return Summary(rows: rows.count, sequenceLength: length, tokens: rows.reduce(0) { $0 + $1.count },
                       loadSeconds: 0, forwardSeconds: seconds, layersSeconds: times["model_forward"] ?? 0,
                       headSeconds: times["model_head"] ?? 0)
    }
}
