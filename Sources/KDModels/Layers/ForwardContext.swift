import Foundation
import KDCore

/// A batch of token rows, right-padded to one length, with its attention mask.
public struct TokenBatch: Sendable {
    public let batchSize: Int
    public let sequenceLength: Int
    /// Row-major [batchSize, sequenceLength].
    public let inputIDs: [Int32]
    /// 1 for a real token, 0 for padding; row-major [batchSize, sequenceLength].
    public let attentionMask: [UInt8]

    public init(batchSize: Int, sequenceLength: Int, inputIDs: [Int32], attentionMask: [UInt8]) {
        precondition(inputIDs.count == batchSize * sequenceLength && attentionMask.count == inputIDs.count)
        self.batchSize = batchSize
        self.sequenceLength = sequenceLength
        self.inputIDs = inputIDs
        self.attentionMask = attentionMask
    }

    /// Right-pads `rows` to `length` (default: the longest row) with `padID` and a zero mask. Ids
    /// beyond Int32 are clamped (and then refused by the model as outside its vocabulary).
    public init(rows: [[Int]], padID: Int = 0, length: Int? = nil) {
        let length = length ?? rows.map(\.count).max() ?? 0
        var ids = [Int32](repeating: Int32(clamping: padID), count: rows.count * length)
        var mask = [UInt8](repeating: 0, count: rows.count * length)
        for (r, row) in rows.enumerated() {
            for (t, id) in row.enumerated() {
                ids[r * length + t] = Int32(clamping: id)
                mask[r * length + t] = 1
            }
        }
        self.init(batchSize: rows.count, sequenceLength: length, inputIDs: ids, attentionMask: mask)
    }

    public var tokenCount: Int { batchSize * sequenceLength }
}

/// What every layer of one forward pass shares: the batch layout, the key mask and the rotary
/// angles of each token row. Activations are [batch·sequence, features], row-major.
public struct ForwardContext: Sendable {
    public let batchSize: Int
    public let sequenceLength: Int
    public let keyMask: [UInt8]
    /// cos and sin of each row's rotary angles, [rows, headDim/2].
    public let cos: [Float]
    public let sin: [Float]

    public var rows: Int { batchSize * sequenceLength }

    public init(batch: TokenBatch, headDim: Int, ropeTheta: Double) {
        batchSize = batch.batchSize
        sequenceLength = batch.sequenceLength
        keyMask = batch.attentionMask
        // Positions count from 0 in every row, as transformers does without explicit position_ids.
        let positions = (0..<batch.tokenCount).map { $0 % max(1, batch.sequenceLength) }
        (cos, sin) = ForwardContext.rotaryTables(positions: positions, headDim: headDim, theta: ropeTheta)
    }

    /// The default rotary embedding in f32, computed as transformers does:
    /// inv_freq[i] = 1 / θ^(2i/d), angle = position · inv_freq[i].
    static func rotaryTables(positions: [Int], headDim: Int, theta: Double) -> (cos: [Float], sin: [Float]) {
        let half = headDim / 2
        let inverseFrequency = (0..<half).map { i in 1 / powf(Float(theta), Float(2 * i) / Float(headDim)) }
        var cos = [Float](repeating: 0, count: positions.count * half)
        var sin = cos
        for (row, position) in positions.enumerated() {
            for i in 0..<half {
                let angle = Float(position) * inverseFrequency[i]
                cos[row * half + i] = Foundation.cos(angle)
                sin[row * half + i] = Foundation.sin(angle)
            }
        }
        return (cos, sin)
    }
}
