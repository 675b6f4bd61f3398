import Foundation
import KDCore
import KDModels
import KDText

/// `kd teacher-cache`: runs the teacher once over `data.train` (and `data.eval`) and writes a
/// `TeacherCache`. Shards are planned from the data alone (whole batches of `train.batch_size`
/// examples, in order, until a shard holds `shardRows` rows), each written whole or not at all, so
/// a second run over the same directory skips the shards already written and finishes the rest.
public enum TeacherCacheWriter {
    public struct Progress: Sendable {
        public let split: String
        public let shard: Int
        public let shards: Int
        public let rowsDone: Int
        public let rows: Int
        /// The shard was already on disk.
        public let skipped: Bool
    }

    /// Rows per shard when not given: about 64 MiB of ids and logits.
    public static func defaultShardRows(k: Int) -> Int { max(1, (64 << 20) / (8 * k + 8)) }

    /// Writes the cache of `config`'s teacher and data into `output`; returns its manifest.
    public static func write(config: RunConfig, k: Int, output: String, shardRows: Int? = nil,
                             onProgress: (Progress) -> Void = { _ in }, onNote: (String) -> Void = { _ in }) throws
        -> TeacherCache.Manifest {
        if config.teacher.path.isEmpty { throw KDError("teacher.path is required (the teacher model directory)") }
        let teacherSpec = try MemoryPlan.spec(at: config.teacher.path)
        var splits: [(name: String, key: String, dataset: Dataset)] = [("train", "data.train", try config.loadDataset(config.data.train, key: "data.train"))]
        if let eval = config.data.eval { splits.append(("eval", "data.eval", try config.loadDataset(eval, key: "data.eval"))) }
        let tokenizer = try config.loadTokenizer(required: false)
        var notes: [String] = []
        let vocab = config.student.path.isEmpty ? teacherSpec.vocabSize
            : try RunModels.sharedVocabulary(teacher: teacherSpec, student: try MemoryPlan.spec(at: config.student.path),
                                             tokenizer: tokenizer, notes: &notes)
        notes.forEach(onNote)
        guard k >= 1 && k <= vocab else { throw KDError("--top-k \(k) must be between 1 and the vocabulary (\(vocab))") }
        let shardRows = shardRows ?? defaultShardRows(k: k)
        guard shardRows >= 1 else { throw KDError("--shard-rows must be at least 1") }
        for split in splits { try split.dataset.checkTokenIDs(below: vocab, of: "models' vocabulary") }

        let configText = String(decoding: try InputFile.read((config.teacher.path as NSString).appendingPathComponent("config.json"),
                                                              limit: 1 << 24), as: UTF8.self)
        var manifest = TeacherCache.Manifest(
            format: TeacherCache.format, version: TeacherCache.version, topK: k, vocab: vocab,
            temperature: config.distill.temperature, teacherPath: config.teacher.path,
            teacherFingerprint: try TeacherCache.fingerprint(ofModel: config.teacher.path, dtype: config.teacher.dtype),
            teacherConfig: configText, splits: [:], complete: false)
        for split in splits {
            manifest.splits[split.name] = plan(split.dataset, name: split.name, batchSize: config.train.batchSize, shardRows: shardRows)
        }
        try prepare(output, manifest: manifest)
        var missing: [(split: (name: String, key: String, dataset: Dataset), shard: TeacherCache.Shard, number: Int)] = []
        for split in splits {
            let planned = manifest.splits[split.name]!
            var done = 0
            for (number, shard) in planned.shards.enumerated() {
                done += shard.rows
                if written(shard, in: output, k: k, dataset: split.dataset) {
                    onProgress(Progress(split: split.name, shard: number + 1, shards: planned.shards.count, rowsDone: done,
                                        rows: planned.rows, skipped: true))
                } else {
                    missing.append((split, shard, number))
                }
            }
        }
        if !missing.isEmpty {
            let budget = ComputeBudget(threads: config.run.threads, concurrency: .off)
            BLAS.threads = budget.threads
            let devices = try DeviceGroup.make(count: config.deviceCount, capacity: config.devices.memoryPerDevice?.bytes)
            let teacher = try CausalLM.load(try Checkpoint(directory: config.teacher.path),
                                            on: try DeviceGroup(config.teacher.devices.map { devices.devices[$0] }),
                                            dtype: config.teacher.dtype)
            let padID = tokenizer?.padID ?? 0
            for (split, shard, number) in missing {
                let planned = manifest.splits[split.name]!
                let before = planned.shards[..<number].reduce(0) { $0 + $1.rows }
                try writeShard(shard, of: split.dataset, teacher: teacher, k: k, vocab: vocab, temperature: Float(config.distill.temperature),
                               batchSize: config.train.batchSize,
                               chunkTokens: config.distill.chunkTokens, padID: padID, threads: budget.threads, output: output) { rows in
                    onProgress(Progress(split: split.name, shard: number + 1, shards: planned.shards.count, rowsDone: before + rows,
                                        rows: planned.rows, skipped: false))
                }
            }
        }
        manifest.complete = true
        try writeManifest(manifest, to: output)
        return manifest
    }

    /// The shards of a split: whole batches, in order, a shard closing once it holds `shardRows` rows.
    static func plan(_ dataset: Dataset, name: String, batchSize: Int, shardRows: Int) -> TeacherCache.Split {
        var shards: [TeacherCache.Shard] = []
        var first = 0, rows = 0, total = 0
        for start in stride(from: 0, to: dataset.examples.count, by: batchSize) {
            let end = min(dataset.examples.count, start + batchSize)
            rows += dataset.examples[start..<end].reduce(0) { $0 + $1.scoredTokens }
            if rows >= shardRows || end == dataset.examples.count {
                shards.append(.init(file: String(format: "%@-%05d.safetensors", name, shards.count + 1), firstExample: first,
                                    examples: end - first, rows: rows))
                total += rows
                (first, rows) = (end, 0)
            }
        }
        return TeacherCache.Split(data: dataset.path, fingerprint: TeacherCache.fingerprint(of: dataset),
                                  examples: dataset.examples.count, rows: total, shards: shards)
    }

    /// Creates `output` with an incomplete manifest, or checks that it holds this very cache
    /// (interrupted or complete). Anything else there is refused, naming what differs.
    static func prepare(_ output: String, manifest: TeacherCache.Manifest) throws {
        let path = (output as NSString).appendingPathComponent(TeacherCache.manifestName)
        if InputFile.exists(path) {
            var existing = try TeacherCache.readManifest(path)
            existing.complete = false
            if existing == manifest { return }
            let differs = existing.topK != manifest.topK ? "top_k \(existing.topK)"
                : existing.vocab != manifest.vocab ? "vocab \(existing.vocab)"
                : existing.temperature != manifest.temperature ? "temperature \(existing.temperature)"
                : existing.teacherFingerprint != manifest.teacherFingerprint ? "another teacher (\(existing.teacherPath))"
                : Set(existing.splits.keys) != Set(manifest.splits.keys) ? "splits \(existing.splits.keys.sorted())"
                : "other data or shard sizes"
            throw KDError("\(output) holds a teacher cache of \(differs); choose another --output or remove it")
        }
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: output, isDirectory: &isDirectory) {
            guard isDirectory.boolValue else { throw KDError("\(output): is not a directory") }
            let entries = (try? FileManager.default.contentsOfDirectory(atPath: output)) ?? []
            guard entries.isEmpty else { throw KDError("\(output): not empty and not a teacher cache; choose another --output") }
        }
        do {
            try FileManager.default.createDirectory(atPath: output, withIntermediateDirectories: true)
        } catch {
            throw writeError(output, error)
        }
        try writeManifest(manifest, to: output)
    }

    static func writeManifest(_ manifest: TeacherCache.Manifest, to output: String) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        try writeDurably(try encoder.encode(manifest), to: (output as NSString).appendingPathComponent(TeacherCache.manifestName))
    }

    /// Whether a shard is on disk, whole, for these examples.
    static func written(_ shard: TeacherCache.Shard, in output: String, k: Int, dataset: Dataset) -> Bool {
        guard let file = try? TeacherCache.openShard(directory: output, shard, k: k),
              let lines = try? TeacherCache.integers(file, "line"), let scored = try? TeacherCache.integers(file, "scored") else {
            return false
        }
        let examples = dataset.examples[shard.firstExample..<(shard.firstExample + shard.examples)]
        return lines == examples.map(\.line) && scored == examples.map(\.scoredTokens)
    }

    static func writeShard(_ shard: TeacherCache.Shard, of dataset: Dataset, teacher: CausalLM, k: Int, vocab: Int, temperature: Float,
                           batchSize: Int,
                           chunkTokens: Int, padID: Int, threads: Int, output: String, onRows: (Int) -> Void) throws {
        let examples = Array(dataset.examples[shard.firstExample..<(shard.firstExample + shard.examples)])
        var rows = TopKRows(k: k, temperature: temperature)
        for start in stride(from: 0, to: examples.count, by: batchSize) {
            let batch = PaddedBatch(Array(examples[start..<min(examples.count, start + batchSize)]), padID: padID)
            let positions = DistillationPass.scoredPositions(batch).rows
            let hidden = try teacher.hiddenStates(DistillationPass.tokens(batch))
            for chunkStart in stride(from: 0, to: positions.count, by: chunkTokens) {
                let range = chunkStart..<min(positions.count, chunkStart + chunkTokens)
                rows.append(try teacher.lastDevice.run {
                    let logits = try Tensor(uninitializedShape: [range.count, teacher.spec.vocabSize], on: teacher.lastDevice)
                    try teacher.project(try gather(hidden, rows: positions[range]).data, rows: range.count, into: logits.data)
                    return try summarise(logits.data, stride: teacher.spec.vocabSize, rows: range.count, vocab: vocab, k: k,
                                         temperature: temperature, threads: threads)
                })
            }
            onRows(rows.count)
        }
        guard rows.count == shard.rows else {
            throw KDError("\(output)/\(shard.file): the teacher gave \(rows.count) scored rows where the plan has \(shard.rows)")
        }
        let path = (output as NSString).appendingPathComponent(shard.file)
        let writer = try SafetensorsWriter(path: path, entries: [
            .init(name: "ids", dtype: .i32, shape: [shard.rows, k]), .init(name: "logits", dtype: .f32, shape: [shard.rows, k]),
            .init(name: "log_sum_exp", dtype: .f32, shape: [shard.rows]), .init(name: "tail_log_mass", dtype: .f32, shape: [shard.rows]),
            .init(name: "log_sum_exp_t", dtype: .f32, shape: [shard.rows]), .init(name: "tail_log_mass_t", dtype: .f32, shape: [shard.rows]),
            .init(name: "line", dtype: .i64, shape: [shard.examples]), .init(name: "scored", dtype: .i64, shape: [shard.examples]),
        ], metadata: ["format": TeacherCache.format])
        do {
            try writer.write(raw: rows.ids.withUnsafeBytes { Data($0) })
            try writer.write(raw: rows.logits.withUnsafeBytes { Data($0) })
            try writer.write(raw: rows.logSumExp.withUnsafeBytes { Data($0) })
            try writer.write(raw: rows.tailLogMass.withUnsafeBytes { Data($0) })
            try writer.write(raw: rows.logSumExpT.withUnsafeBytes { Data($0) })
            try writer.write(raw: rows.tailLogMassT.withUnsafeBytes { Data($0) })
            try writer.write(raw: examples.map { Int64($0.line) }.withUnsafeBytes { Data($0) })
            try writer.write(raw: examples.map { Int64($0.scoredTokens) }.withUnsafeBytes { Data($0) })
            try writer.finish()
        } catch {
            writer.discard()
            throw error
        }
    }

    /// The cache's rows of teacher logits [rows, stride] (overwritten: scratch), over the first
    /// `vocab` of each row.
    static func summarise(_ logits: UnsafeMutablePointer<Float>, stride: Int, rows: Int, vocab: Int, k: Int, temperature: Float,
                          threads: Int) throws -> TopKRows {
        let ids = UnsafeMutablePointer<Int32>.allocate(capacity: rows * k), top = UnsafeMutablePointer<Float>.allocate(capacity: rows * k)
        let sums = UnsafeMutablePointer<Float>.allocate(capacity: 4 * rows), finite = UnsafeMutablePointer<Bool>.allocate(capacity: rows)
        defer { ids.deallocate(); top.deallocate(); sums.deallocate(); finite.deallocate() }
        let work = { (row: Int) in
            let summary = summariseRow(logits + row * stride, vocab: vocab, k: k, temperature: temperature, ids: ids + row * k,
                                       logits: top + row * k)
            finite[row] = summary != nil
            let values = summary ?? (0, 0, 0, 0)
            (sums[row], sums[rows + row], sums[2 * rows + row], sums[3 * rows + row]) = values
        }
        if threads > 1 && rows > 1 {
            DispatchQueue.concurrentPerform(iterations: rows, execute: work)
        } else {
            for row in 0..<rows { work(row) }
        }
        if (0..<rows).contains(where: { !finite[$0] }) {
            throw KDError("the teacher's logits are not finite (NaN or infinite); no cache was written for them")
        }
        var out = TopKRows(k: k, temperature: temperature)
        out.ids = Array(UnsafeBufferPointer(start: ids, count: rows * k))
        out.logits = Array(UnsafeBufferPointer(start: top, count: rows * k))
        out.logSumExp = Array(UnsafeBufferPointer(start: sums, count: rows))
        out.tailLogMass = Array(UnsafeBufferPointer(start: sums + rows, count: rows))
        out.logSumExpT = Array(UnsafeBufferPointer(start: sums + 2 * rows, count: rows))
        out.tailLogMassT = Array(UnsafeBufferPointer(start: sums + 3 * rows, count: rows))
        return out
    }

    /// One row: the top-K ids and logits (descending, ties to the smaller id), then the log-sum-exp
    /// and log tail mass at T = 1 and at `temperature`; nil when a logit is not finite. The row is
    /// scratch; nothing is allocated.
    static func summariseRow(_ t: UnsafeMutablePointer<Float>, vocab n: Int, k: Int, temperature: Float,
                             ids: UnsafeMutablePointer<Int32>, logits top: UnsafeMutablePointer<Float>)
        -> (Float, Float, Float, Float)? {
        // A min-heap of the best K so far, worst at the root; ids arrive ascending, so an equal
        // logit never displaces an earlier (smaller) id.
        var count = 0
        func worse(_ a: Int, _ b: Int) -> Bool { top[a] < top[b] || (top[a] == top[b] && ids[a] > ids[b]) }
        func swap(_ a: Int, _ b: Int) {
            (top[a], top[b]) = (top[b], top[a])
            (ids[a], ids[b]) = (ids[b], ids[a])
        }
        func siftDown(_ start: Int) {
            var i = start
            while true {
                let left = 2 * i + 1, right = left + 1
                var smallest = i
                if left < count && worse(left, smallest) { smallest = left }
                if right < count && worse(right, smallest) { smallest = right }
                if smallest == i { return }
                swap(i, smallest)
                i = smallest
            }
        }
        var maximum = -Float.infinity
        for v in 0..<n {
            let value = t[v]
            guard value.isFinite else { return nil }
            maximum = max(maximum, value)
            if count < k {
                var i = count
                (top[i], ids[i]) = (value, Int32(v))
                count += 1
                while i > 0 && worse(i, (i - 1) / 2) {
                    swap(i, (i - 1) / 2)
                    i = (i - 1) / 2
                }
            } else if value > top[0] {
                (top[0], ids[0]) = (value, Int32(v))
                siftDown(0)
            }
        }
        // Heapsort in place: the worst moves to the end each time, leaving the best first
        // (descending logit, ties to the smaller id).
        while count > 1 {
            count -= 1
            swap(0, count)
            siftDown(0)
        }
        // At each temperature: the K ids' sum, then the tail's with the K ids masked out.
        func sums(_ scale: Float, mask: Bool) -> (logSumExp: Float, tail: Float) {
            var support = 0.0
            for j in 0..<k {
                support += Foundation.exp(Double(top[j] - maximum) * Double(scale))
                if mask { t[Int(ids[j])] = -.greatestFiniteMagnitude }
            }
            let rest = k == n ? 0 : tailSum(t, count: n, maximum: maximum, scale: scale)
            let total = support + rest
            return (Float(Double(maximum) * Double(scale) + Foundation.log(total)),
                    k < n ? Float(Foundation.log(rest) - Foundation.log(total)) : -.infinity)
        }
        let one = sums(1, mask: true), tempered = sums(1 / temperature, mask: false)
        return (one.logSumExp, one.tail, tempered.logSumExp, tempered.tail)
    }

    /// Σ e^((t_v − max)·scale) over a row whose cached ids are masked: f32 lanes over blocks of
    /// 512, the blocks summed in float64.
    static func tailSum(_ t: UnsafePointer<Float>, count n: Int, maximum: Float, scale: Float) -> Double {
        var rest = 0.0
        let m = Vec(repeating: maximum), c = Vec(repeating: scale)
        var v = 0
        while v < n {
            let end = min(n, v + 512)
            var lanes = Vec.zero
            while v + 8 <= end {
                lanes += Kernels.exp((Kernels.load(t + v) - m) * c)
                v += 8
            }
            var block = lanes.sum()
            while v < end {
                block += Kernels.exp((t[v] - maximum) * scale)
                v += 1
            }
            rest += Double(block)
        }
        return rest
    }
}
