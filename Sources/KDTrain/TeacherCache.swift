import Foundation
import KDCore
import KDModels
import KDText

/// An offline cache of a teacher's top-K logits (`kd teacher-cache`), read by a run with
/// `data.teacher_cache` in place of the live teacher.
///
/// Layout of the directory:
/// - `manifest.json`: what produced it (the teacher's config.json and fingerprint, K, the loss
///   vocabulary) and, per split (`train`, `eval`), the data file, the fingerprint of its tokenized
///   examples and the index of its shards; `complete` once every shard is written.
/// - `<split>-<n>.safetensors`, one per shard, each a run of whole examples in dataset order:
///   `ids` I32 [rows, K] (descending logit, ties to the smaller id), `logits` F32 [rows, K] (raw,
///   before temperature), `log_sum_exp` F32 [rows] (of the whole row over the loss vocabulary),
///   `tail_log_mass` F32 [rows] (log of the probability outside the K ids at T = 1, summed over
///   those ids directly; −∞ when K is the vocabulary), the same two at the cache's temperature
///   T_c (`temperature` in the manifest: the run's distill.temperature) as `log_sum_exp_t` and
///   `tail_log_mass_t` (of t/T_c), and per example its JSONL `line` I64 and its number of scored
///   rows `scored` I64.
/// A row is a scored position, in the order `DistillationPass.scoredPositions` visits them.
public final class TeacherCache: @unchecked Sendable {
    public static let manifestName = "manifest.json"
    public static let format = "kd-teacher-cache"
    public static let version = 1

    public struct Shard: Codable, Equatable, Sendable {
        public var file: String
        public var firstExample: Int
        public var examples: Int
        public var rows: Int

        enum CodingKeys: String, CodingKey {
            case file, examples, rows
            case firstExample = "first_example"
        }
    }

    public struct Split: Codable, Equatable, Sendable {
        public var data: String
        public var fingerprint: String
        public var examples: Int
        public var rows: Int
        public var shards: [Shard]
    }

    public struct Manifest: Codable, Equatable, Sendable {
        public var format: String
        public var version: Int
        public var topK: Int
        public var vocab: Int
        /// T_c, the temperature of each row's second log-sum-exp and tail mass.
        public var temperature: Double
        public var teacherPath: String
        public var teacherFingerprint: String
        /// The teacher's config.json, so a run without the teacher knows its shape.
        public var teacherConfig: String
        public var splits: [String: Split]
        public var complete: Bool

        enum CodingKeys: String, CodingKey {
            case format, version, vocab, splits, complete, temperature
            case topK = "top_k"
            case teacherPath = "teacher_path"
            case teacherFingerprint = "teacher_fingerprint"
            case teacherConfig = "teacher_config"
        }
    }

    public let directory: String
    public let manifest: Manifest
    /// The teacher's shape, from the manifest.
    public let teacherSpec: ModelSpec
    /// Per split: JSONL line → (shard, first row in it, rows).
    private let index: [String: [Int: (shard: Int, row: Int, rows: Int)]]
    private let files: [String: [SafetensorsFile]]

    public var k: Int { manifest.topK }

    /// Opens and checks a complete cache: the manifest, and every shard's tensors against it.
    public init(directory: String) throws {
        self.directory = directory
        let (manifest, spec) = try Self.manifestAndSpec(directory: directory)
        guard manifest.complete else {
            throw KDError("data.teacher_cache \(directory): the cache is incomplete (kd teacher-cache was interrupted); run it again to finish it")
        }
        self.manifest = manifest
        teacherSpec = spec
        var index: [String: [Int: (shard: Int, row: Int, rows: Int)]] = [:]
        var files: [String: [SafetensorsFile]] = [:]
        for (name, split) in manifest.splits {
            var lines: [Int: (shard: Int, row: Int, rows: Int)] = [:]
            var opened: [SafetensorsFile] = []
            for (number, shard) in split.shards.enumerated() {
                let file = try Self.openShard(directory: directory, shard, k: manifest.topK)
                let lineValues = try Self.integers(file, "line"), scored = try Self.integers(file, "scored")
                var row = 0
                for (line, count) in zip(lineValues, scored) {
                    guard count >= 0, row <= shard.rows - count, lines[line] == nil else {
                        throw KDError("\(file.path): its example index (line, scored) does not add up to its \(shard.rows) rows")
                    }
                    lines[line] = (number, row, count)
                    row += count
                }
                guard row == shard.rows else { throw KDError("\(file.path): its examples hold \(row) rows, not \(shard.rows)") }
                opened.append(file)
            }
            index[name] = lines
            files[name] = opened
        }
        self.index = index
        self.files = files
    }

    /// The manifest of the cache in `directory` and the teacher's shape it records (complete or not).
    public static func manifestAndSpec(directory: String) throws -> (manifest: Manifest, spec: ModelSpec) {
        let path = (directory as NSString).appendingPathComponent(manifestName)
        guard InputFile.exists(path) else {
            throw KDError("data.teacher_cache \(directory): not a teacher cache (no \(manifestName); make one with kd teacher-cache)")
        }
        let manifest = try readManifest(path)
        return (manifest, try ModelConfigurations.decode(Data(manifest.teacherConfig.utf8), file: path + " (teacher_config)"))
    }

    static func readManifest(_ path: String) throws -> Manifest {
        let manifest: Manifest
        do {
            manifest = try JSONDecoder().decode(Manifest.self, from: try InputFile.read(path, limit: 1 << 26))
        } catch let error as KDError {
            throw error
        } catch let error as DecodingError {
            throw KDError("\(path): not a kd teacher-cache manifest (\(ModelConfigurations.describe(error)))")
        } catch {
            throw KDError("\(path): not a kd teacher-cache manifest (not valid JSON)")
        }
        guard manifest.format == format else { throw KDError("\(path): format is \(quoted(manifest.format)), not \(quoted(format))") }
        guard manifest.version == version else {
            throw KDError("\(path): cache version \(manifest.version); this kd reads version \(version)")
        }
        guard manifest.vocab >= 1 && manifest.vocab <= 1 << 24 else { throw KDError("\(path): vocab \(manifest.vocab) is out of range") }
        guard manifest.temperature >= 1e-3 && manifest.temperature <= 1e3 else {
            throw KDError("\(path): temperature \(manifest.temperature) is out of range")
        }
        guard manifest.topK >= 1 && manifest.topK <= manifest.vocab else {
            throw KDError("\(path): top_k \(manifest.topK) must be between 1 and the vocabulary (\(manifest.vocab))")
        }
        for (name, split) in manifest.splits {
            var next = 0, rows = 0
            for shard in split.shards {
                guard shard.firstExample == next, shard.examples >= 1, shard.rows >= 0, shard.rows <= 1 << 40,
                      !shard.file.contains("/"), !shard.file.hasPrefix(".") else {
                    throw KDError("\(path): split '\(name)': shard \(quoted(shard.file, limit: 60)) does not follow the one before it")
                }
                next += shard.examples
                rows += shard.rows
            }
            guard next == split.examples, rows == split.rows else {
                throw KDError("\(path): split '\(name)': its shards hold \(next) examples and \(rows) rows, not \(split.examples) and \(split.rows)")
            }
        }
        return manifest
    }

    /// A shard's file with its tensors checked against the manifest's shard entry.
    static func openShard(directory: String, _ shard: Shard, k: Int) throws -> SafetensorsFile {
        let path = (directory as NSString).appendingPathComponent(shard.file)
        let file = try SafetensorsFile(path: path)
        let expected: [(String, DType, [Int])] = [
            ("ids", .i32, [shard.rows, k]), ("logits", .f32, [shard.rows, k]), ("log_sum_exp", .f32, [shard.rows]),
            ("tail_log_mass", .f32, [shard.rows]), ("log_sum_exp_t", .f32, [shard.rows]), ("tail_log_mass_t", .f32, [shard.rows]),
            ("line", .i64, [shard.examples]), ("scored", .i64, [shard.examples]),
        ]
        for (name, dtype, shape) in expected {
            guard let info = file.tensors[name], info.dtype == dtype, info.shape == shape else {
                throw KDError("\(path): tensor '\(name)' must be \(dtype.rawValue) \(shape)")
            }
        }
        guard file.tensors.count == expected.count else { throw KDError("\(path): holds tensors other than a cache shard's") }
        return file
    }

    static func integers(_ file: SafetensorsFile, _ name: String) throws -> [Int] {
        try file.bytes(name).withUnsafeBytes { raw in
            (0..<(raw.count / 8)).map { Int(Int64(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 8, as: Int64.self))) }
        }
    }

    // MARK: Checks against a run

    /// Refuses a cache made for another vocabulary or (when the teacher is at hand and its
    /// `fingerprint` given) from another teacher than the run's.
    public func checkTeacher(vocab: Int, fingerprint: String?) throws {
        if manifest.vocab != vocab {
            throw KDError("data.teacher_cache \(directory): made for a vocabulary of \(manifest.vocab) logits, this run's is \(vocab)")
        }
        if let fingerprint, fingerprint != manifest.teacherFingerprint {
            throw KDError("data.teacher_cache \(directory): made from another teacher (\(manifest.teacherPath)) than teacher.path "
                + "(its config, weights or teacher.dtype differ)")
        }
    }

    /// Refuses a cache without `split`, or whose `split` was made from other examples than
    /// `dataset` (another file, or the same file tokenized with other data settings).
    public func checkData(split: String, dataset: Dataset, key: String) throws {
        try manifest.checkData(split: split, dataset: dataset, key: key, directory: directory)
    }

    // MARK: Reading rows

    /// The JSONL lines of a split's examples, in cache order.
    public func lines(of split: String) -> [Int] {
        (index[split] ?? [:]).sorted { ($0.value.shard, $0.value.row) < ($1.value.shard, $1.value.row) }.map(\.key)
    }

    /// The cached rows of a batch's examples (by JSONL line), in the batch's order. Each row's ids
    /// are checked (below the vocabulary, distinct) and its values (finite, tail not +∞ or NaN).
    public func rows(split: String, lines: [Int]) throws -> TopKRows {
        let k = manifest.topK, vocab = manifest.vocab
        var out = TopKRows(k: k, temperature: Float(manifest.temperature))
        guard let index = index[split], let files = files[split] else { throw KDError("\(directory): no '\(split)' split") }
        for line in lines {
            guard let (shard, first, count) = index[line] else {
                throw KDError("\(directory): no cached rows for line \(line) of the \(split) data")
            }
            let file = files[shard]
            let range = first..<(first + count)
            let ids = Self.slice(file, "ids", Int32.self, range.lowerBound * k..<range.upperBound * k)
            let logits = Self.slice(file, "logits", Float.self, range.lowerBound * k..<range.upperBound * k)
            let lse = Self.slice(file, "log_sum_exp", Float.self, range)
            let tail = Self.slice(file, "tail_log_mass", Float.self, range)
            let lseT = Self.slice(file, "log_sum_exp_t", Float.self, range)
            let tailT = Self.slice(file, "tail_log_mass_t", Float.self, range)
            var sorted = [Int32](repeating: 0, count: k)
            for r in 0..<count {
                let rowIDs = ids[(r * k)..<((r + 1) * k)]
                for (j, id) in rowIDs.enumerated() { sorted[j] = id }
                sorted.sort()
                guard sorted[0] >= 0, Int(sorted[k - 1]) < vocab, zip(sorted, sorted.dropFirst()).allSatisfy({ $0 < $1 }) else {
                    throw KDError("\(file.path): row \(first + r): ids must be distinct token ids below \(vocab)")
                }
                guard logits[(r * k)..<((r + 1) * k)].allSatisfy(\.isFinite), lse[r].isFinite, lseT[r].isFinite,
                      !tail[r].isNaN, tail[r] <= 0, !tailT[r].isNaN, tailT[r] <= 0 else {
                    throw KDError("\(file.path): row \(first + r): logits and log-sum-exps must be finite and tail masses ≤ 0")
                }
            }
            out.ids += ids
            out.logits += logits
            out.logSumExp += lse
            out.tailLogMass += tail
            out.logSumExpT += lseT
            out.tailLogMassT += tailT
        }
        return out
    }

    static func slice<T>(_ file: SafetensorsFile, _ name: String, _: T.Type, _ range: Range<Int>) -> [T] {
        let info = file.tensors[name]!
        let size = MemoryLayout<T>.stride
        return file.withBytes(of: info) { raw in
            Array(UnsafeBufferPointer(start: (raw.baseAddress! + range.lowerBound * size).assumingMemoryBound(to: T.self),
                                      count: range.count))
        }
    }

    // MARK: Fingerprints

    /// FNV-1a (64-bit) of the examples as tokenized: each one's line, input ids and labels.
    public static func fingerprint(of dataset: Dataset) -> String {
        var hash = Fingerprint()
        hash.add(dataset.examples.count)
        for example in dataset.examples {
            hash.add(example.line)
            hash.add(example.inputIDs.count)
            for id in example.inputIDs { hash.add(id) }
            for label in example.labels { hash.add(label) }
        }
        return hash.hex
    }

    /// FNV-1a (64-bit) of a model directory as it decides the logits: config.json, every tensor's
    /// name, dtype, shape and file, 4 KiB of data at the start, middle and end of each file, and
    /// whether the weights are rounded to bf16 when held (`dtype` bf16).
    public static func fingerprint(ofModel directory: String, dtype: WeightDType) throws -> String {
        let checkpoint = try Checkpoint(directory: directory)
        var hash = Fingerprint()
        hash.add(try InputFile.read((directory as NSString).appendingPathComponent("config.json"), limit: 1 << 24))
        for name in checkpoint.tensors.keys.sorted() {
            let (file, info) = checkpoint.tensors[name]!
            hash.add(Data("\(name) \(info.dtype.rawValue) \(info.shape) \((file.path as NSString).lastPathComponent)".utf8))
        }
        for file in checkpoint.files {
            hash.add(file.sample(bytes: 4096))
        }
        if dtype == .bf16 { hash.add(Data("held as bf16".utf8)) }
        return hash.hex
    }
}

/// FNV-1a, 64-bit, fed integers (as 8 little-endian bytes) and data.
struct Fingerprint {
    private var state: UInt64 = 0xcbf2_9ce4_8422_2325

    mutating func add(_ value: Int) {
        var v = UInt64(bitPattern: Int64(value))
        for _ in 0..<8 {
            state = (state ^ (v & 0xFF)) &* 0x100_0000_01b3
            v >>= 8
        }
    }

    mutating func add(_ data: Data) {
        add(data.count)
        for byte in data { state = (state ^ UInt64(byte)) &* 0x100_0000_01b3 }
    }

    var hex: String { String(format: "%016llx", state) }
}

extension TeacherCache.Manifest {
    /// Refuses a cache without `split`, or whose `split` was made from other examples than
    /// `dataset` (another file, or the same file tokenized with other data settings).
    public func checkData(split: String, dataset: Dataset, key: String, directory: String) throws {
        guard let entry = splits[split] else {
            throw KDError("data.teacher_cache \(directory): holds no '\(split)' split (it was made without \(key)); run kd teacher-cache with \(key) set")
        }
        if dataset.examples.count != entry.examples || TeacherCache.fingerprint(of: dataset) != entry.fingerprint {
            throw KDError("data.teacher_cache \(directory): made from other \(split) data (\(entry.data), \(entry.examples) examples) "
                + "than \(key) (\(dataset.path), \(dataset.examples.count) examples, as this run's data settings tokenize it)")
        }
    }
}
