import Foundation
import KDCore

/// Keys and values of past positions, per layer, for incremental decoding: [rows, capacity,
/// kv heads · head_dim] on each layer's device.
public final class KVCache {
    public let rows: Int
    public let capacity: Int
    let keys: [Tensor]
    let values: [Tensor]
    /// Positions cached per row.
    public private(set) var lengths: [Int]

    public init(model: CausalLM, rows: Int, capacity: Int) throws {
        self.rows = rows
        self.capacity = capacity
        let width = model.spec.numKVHeads * model.spec.headDim
        keys = try model.layers.map { try Tensor(uninitializedShape: [rows, capacity, width], on: $0.device) }
        values = try model.layers.map { try Tensor(uninitializedShape: [rows, capacity, width], on: $0.device) }
        lengths = [Int](repeating: 0, count: rows)
    }

    func advance(row: Int, by count: Int) { lengths[row] += count }
}

/// New tokens for one cached row: they extend its sequence at the next positions.
public struct Extension: Sendable {
    public let row: Int
    public let tokens: [Int]

    public init(row: Int, tokens: [Int]) {
        self.row = row
        self.tokens = tokens
    }
}

extension CausalLM {
    /// Appends `extensions` to their rows of `cache` and returns the logits after the last new
    /// token of each, [extensions.count, vocab] on the last device. Prefill is one extension of a
    /// whole prompt; a decoding step is one token for every active row, run as one batch through
    /// the projections (a single row goes through sgemv).
    public func extend(_ extensions: [Extension], cache: KVCache) throws -> Tensor {
        guard upstream == nil else { throw KDError("incremental decoding needs every stage of the model in this process") }
        let hidden = spec.hiddenSize
        var tokens: [Int] = [], positions: [Int] = [], spans: [(row: Int, start: Int, count: Int, past: Int)] = []
        for e in extensions {
            guard !e.tokens.isEmpty else { throw KDError("an extension needs at least one token") }
            let past = cache.lengths[e.row]
            guard past + e.tokens.count <= cache.capacity else {
                throw KDError("row \(e.row): \(past + e.tokens.count) positions exceed the cache's \(cache.capacity)")
            }
            if let bad = e.tokens.first(where: { $0 < 0 || $0 >= spec.vocabSize }) {
                throw KDError("token id \(bad) is outside the vocabulary (vocab_size \(spec.vocabSize))")
            }
            spans.append((e.row, tokens.count, e.tokens.count, past))
            tokens += e.tokens
            positions += (0..<e.tokens.count).map { past + $0 }
        }
        let (cos, sin) = ForwardContext.rotaryTables(positions: positions, headDim: spec.headDim, theta: spec.ropeTheta)
        let step = DecodeStep(spans: spans, cos: cos, sin: sin)
        let final = try throughLayers(embed(tokens)) { layer, x in
            try layer.extend(x, step: step, keys: cache.keys[layer.index], values: cache.values[layer.index])
        }
        for span in spans { cache.advance(row: span.row, by: span.count) }
        return try lastDevice.run { [self] in
            let last = try Tensor(uninitializedShape: [spans.count, hidden], on: lastDevice)
            for (i, span) in spans.enumerated() {
                Kernels.rmsNorm(final.data + (span.start + span.count - 1) * hidden, weight: finalNorm.data, rows: 1,
                                cols: hidden, eps: spec.rmsNormEps, into: last.data + i * hidden)
            }
            let logits = try Tensor(uninitializedShape: [spans.count, spec.vocabSize], on: lastDevice)
            // Not `project`: decoding is not a training phase (`timing`); the on-policy step times it as a whole.
            try WeightProducts.linear(last.data, rows: spans.count, weight: lmHead, into: logits.data)
            return logits
        }
    }
}

/// The layout of one `extend` call: each row's new tokens, where they start in the batch, how
/// many positions the row had cached, and the rotary angles of every new token.
struct DecodeStep {
    let spans: [(row: Int, start: Int, count: Int, past: Int)]
    let cos: [Float]
    let sin: [Float]
    var tokens: Int { spans.reduce(0) { $0 + $1.count } }
}

extension DecoderLayer {
    /// The decoder layer over new tokens whose past is in the cache; updates `x` in place.
    func extend(_ x: Tensor, step: DecodeStep, keys: Tensor, values: Tensor) throws {
        let rows = step.tokens, hidden = x.shape[1]
        let normed = try Tensor(uninitializedShape: x.shape, on: device)
        Kernels.rmsNorm(x.data, weight: inputNorm.data, rows: rows, cols: hidden, eps: eps, into: normed.data)
        let attended = try attention.extend(normed, step: step, keys: keys, values: values)
        Kernels.add(attended.data, into: x.data, count: x.count)
        Kernels.rmsNorm(x.data, weight: postAttentionNorm.data, rows: rows, cols: hidden, eps: eps, into: normed.data)
        let fed = try feedForward.forward(normed, rows: rows)
        Kernels.add(fed.data, into: x.data, count: x.count)
    }
}

extension Attention {
    /// Attention of new tokens over their rows' cached keys and values (which it extends).
    func extend(_ x: Tensor, step: DecodeStep, keys: Tensor, values: Tensor) throws -> Tensor {
        let rows = step.tokens, device = x.device
        let q = try qProj.forward(x, rows: rows)
        let k = try kProj.forward(x, rows: rows)
        let v = try vProj.forward(x, rows: rows)
        Kernels.rmsNorm(q.data, weight: qNorm.data, rows: rows * heads, cols: headDim, eps: eps, into: q.data)
        Kernels.rmsNorm(k.data, weight: kNorm.data, rows: rows * kvHeads, cols: headDim, eps: eps, into: k.data)
        step.cos.withUnsafeBufferPointer { cos in
            step.sin.withUnsafeBufferPointer { sin in
                Kernels.rope(q.data, rows: rows, heads: heads, headDim: headDim, stride: heads * headDim,
                             cos: cos.baseAddress!, sin: sin.baseAddress!)
                Kernels.rope(k.data, rows: rows, heads: kvHeads, headDim: headDim, stride: kvHeads * headDim,
                             cos: cos.baseAddress!, sin: sin.baseAddress!)
            }
        }
        let qStride = heads * headDim, kvStride = kvHeads * headDim
        let capacity = keys.shape[1]
        for span in step.spans {
            let base = (span.row * capacity + span.past) * kvStride
            (keys.data + base).update(from: k.data + span.start * kvStride, count: span.count * kvStride)
            (values.data + base).update(from: v.data + span.start * kvStride, count: span.count * kvStride)
        }
        let out = try Tensor(uninitializedShape: [rows, qStride], on: device)
        let longest = step.spans.map { $0.past + $0.count }.max() ?? 0
        let scores = try Tensor(uninitializedShape: [step.spans.map(\.count).max() ?? 0, longest], on: device)
        let scale = 1 / Float(headDim).squareRoot()
        let group = heads / kvHeads
        for span in step.spans {
            let total = span.past + span.count
            let rowKeys = keys.data + span.row * capacity * kvStride, rowValues = values.data + span.row * capacity * kvStride
            for h in 0..<heads {
                let kvOffset = (h / group) * headDim
                let query = q.data + span.start * qStride + h * headDim
                let output = out.data + span.start * qStride + h * headDim
                if span.count == 1 {
                    // One query: a dot product with each cached key, then the values weighted by the
                    // softmax, in SIMD kernels. (As two sgemv calls, OpenBLAS threads them from ~72
                    // positions on: ~900 wake-ups of its threads per token for a few µs of work each.)
                    let weights = scores.data
                    for p in 0..<total {
                        weights[p] = scale * Kernels.dot(rowKeys + p * kvStride + kvOffset, query, count: headDim)
                    }
                    Kernels.softmax(weights, count: total)
                    output.update(repeating: 0, count: headDim)
                    for p in 0..<total {
                        Kernels.axpy(weights[p], rowValues + p * kvStride + kvOffset, into: output, count: headDim)
                    }
                } else {
                    BLAS.gemm(transB: true, m: span.count, n: total, k: headDim, alpha: scale, a: query, lda: qStride,
                              b: rowKeys + kvOffset, ldb: kvStride, c: scores.data, ldc: total)
                    for i in 0..<span.count {
                        let visible = span.past + i + 1  // causal within the new tokens
                        Kernels.softmax(scores.data + i * total, count: visible)
                        (scores.data + i * total + visible).update(repeating: 0, count: total - visible)
                    }
                    BLAS.gemm(m: span.count, n: headDim, k: total, a: scores.data, lda: total, b: rowValues + kvOffset,
                              ldb: kvStride, c: output, ldc: qStride)
                }
            }
        }
        return try oProj.forward(out, rows: rows)
    }
}
