import Foundation
import KDCore

/// The record formats of training data (JSONL, one record per line).
public enum DataFormat: String, CaseIterable, Sendable {
    case auto, chat, prompt_response, gsm8k, humaneval, tokens
}

public enum BadRecordPolicy: String, CaseIterable, Sendable { case error, skip }

public struct DatasetOptions: Sendable {
    public var format = DataFormat.auto
    public var maxSeqLen = 1024
    public var trainOnPrompt = false
    public var onBadRecord = BadRecordPolicy.error

    public init(format: DataFormat = .auto, maxSeqLen: Int = 1024, trainOnPrompt: Bool = false,
                onBadRecord: BadRecordPolicy = .error) {
        self.format = format
        self.maxSeqLen = maxSeqLen
        self.trainOnPrompt = trainOnPrompt
        self.onBadRecord = onBadRecord
    }
}

/// One training example: token ids and labels aligned with them in the Hugging Face convention
/// (-100 = not scored; the loss at position t is scored against labels[t+1]).
public struct Example: Equatable, Sendable {
    public static let ignored = -100
    public let inputIDs: [Int]
    public let labels: [Int]
    /// The JSONL line it came from.
    public let line: Int

    public init(inputIDs: [Int], labels: [Int], line: Int) {
        self.inputIDs = inputIDs
        self.labels = labels
        self.line = line
    }

    /// Positions t ≥ 1 with a label: the tokens the shifted loss scores.
    public var scoredTokens: Int { labels.dropFirst().filter { $0 != Example.ignored }.count }
}

/// A JSONL dataset turned into examples, with the counts a user checks before a long run.
public struct Dataset: Sendable {
    public struct Stats: Sendable {
        public var lines = 0
        public var skipped: [(line: Int, problem: String)] = []
        public var truncated = 0
        public var droppedEmptyTarget = 0
        public var tokens = 0
        public var scoredTokens = 0
        public var longest = 0
        public var shortest = Int.max
    }

    public let path: String
    public let format: DataFormat
    public let examples: [Example]
    public let stats: Stats
    /// The largest token id in the examples (input ids and labels, after truncation), so the
    /// trainer and `kd data` can refuse ids beyond a model's vocabulary before any work.
    public let maxTokenID: Int

    /// Reads and tokenizes `path`. Text formats need `tokenizer` (with its Qwen3 chat template).
    public init(path: String, tokenizer: Tokenizer?, options: DatasetOptions) throws {
        try self.init(path: path, options: options) { _ in tokenizer }
    }

    /// Reads `path`, works out its format, then asks `tokenizer` for the tokenizer that format
    /// needs (it may return nil for `tokens`), so that a bad data file is reported as such
    /// before any tokenizer is looked for.
    public init(path: String, options: DatasetOptions, tokenizer provide: (DataFormat) throws -> Tokenizer?) throws {
        guard let data = try readRegularFile(path) else { throw KDError("\(path): no such file") }
        guard !data.isEmpty else { throw KDError("\(path): empty") }
        let lines = try JSONLines(data: data, name: path, skipBad: options.onBadRecord == .skip)
        self.path = path
        var stats = Stats()
        stats.skipped = lines.skipped
        stats.lines = lines.records.count + lines.skipped.count
        guard let first = lines.records.first else {
            throw KDError(lines.skipped.isEmpty ? "\(path): no records (only blank lines)"
                : "\(path): no records (\(lines.skipped.count) bad lines skipped)")
        }
        var format = options.format
        if format == .auto {
            guard let detected = Dataset.detect(first.object) else {
                let keys = first.object.keys.sorted()
                let shown = keys.prefix(12).map { quoted($0, limit: 40) } + (keys.count > 12 ? ["…"] : [])
                throw KDError("\(path):\(first.line): cannot tell the format from the keys "
                    + "[\(shown.joined(separator: ", "))]; set data.format")
            }
            format = detected
        }
        let tokenizer = try provide(format)
        if format != .tokens {
            guard let tokenizer else { throw KDError("\(path): format \(format.rawValue) needs a tokenizer") }
            try ChatTemplate.check(tokenizer.chatTemplate, file: tokenizer.configFile)
        }
        self.format = format
        var examples: [Example] = []
        for record in lines.records {
            do {
                var example = try Dataset.example(record, format: format, tokenizer: tokenizer, options: options)
                if example.inputIDs.count > options.maxSeqLen {
                    stats.truncated += 1
                    example = Example(inputIDs: Array(example.inputIDs.prefix(options.maxSeqLen)),
                                      labels: Array(example.labels.prefix(options.maxSeqLen)), line: record.line)
                }
                if example.scoredTokens == 0 {
                    stats.droppedEmptyTarget += 1
                    continue
                }
                stats.tokens += example.inputIDs.count
                stats.scoredTokens += example.scoredTokens
                stats.longest = max(stats.longest, example.inputIDs.count)
                stats.shortest = min(stats.shortest, example.inputIDs.count)
                examples.append(example)
            } catch let error as KDError {
                if options.onBadRecord == .error { throw KDError("\(path):\(record.line): \(error.message)") }
                stats.skipped.append((record.line, error.message))
            }
        }
        guard !examples.isEmpty else {
            throw KDError("\(path): no usable examples (\(stats.skipped.count) bad, \(stats.droppedEmptyTarget) with nothing to score)")
        }
        stats.skipped.sort { $0.line < $1.line }
        self.examples = examples
        self.stats = stats
        maxTokenID = examples.map { max($0.inputIDs.max() ?? -1, $0.labels.max() ?? -1) }.max() ?? -1
    }

    /// Fails, naming the file, line and position, when an example holds an id (input or label)
    /// at or beyond `vocabularySize`, e.g. `checkTokenIDs(below: spec.vocabSize, of: "student vocabulary")`.
    public func checkTokenIDs(below vocabularySize: Int, of vocabulary: String) throws {
        guard maxTokenID >= vocabularySize else { return }
        for example in examples {
            for (key, ids) in [("input_ids", example.inputIDs), ("labels", example.labels)] {
                if let bad = ids.firstIndex(where: { $0 >= vocabularySize }) {
                    throw KDError("\(path):\(example.line): \"\(key)\"[\(bad)] = \(ids[bad]) is outside the "
                        + "\(vocabulary) (\(vocabularySize) tokens)")
                }
            }
        }
    }

    /// The format a record's keys imply.
    public static func detect(_ object: [String: Any]) -> DataFormat? {
        let keys = Set(object.keys)
        if keys.contains("messages") { return .chat }
        if keys.contains("input_ids") { return .tokens }
        if keys.isSuperset(of: ["question", "answer"]) { return .gsm8k }
        if keys.isSuperset(of: ["prompt", "canonical_solution"]) { return .humaneval }
        if keys.isSuperset(of: ["prompt", "response"]) || keys.isSuperset(of: ["instruction", "output"]) {
            return .prompt_response
        }
        return nil
    }

    static func string(_ object: [String: Any], _ key: String) throws -> String {
        guard let value = object[key] else { throw KDError("missing \"\(key)\"") }
        guard let text = value as? String else { throw KDError("\"\(key)\" must be a string") }
        return text
    }

    /// The user and assistant turns of a text record.
    public static func turns(_ object: [String: Any], format: DataFormat) throws -> [ChatMessage] {
        switch format {
        case .chat:
            guard let list = object["messages"] as? [Any] else { throw KDError("\"messages\" must be a list") }
            guard !list.isEmpty else { throw KDError("\"messages\" is empty") }
            return try list.enumerated().map { index, item in
                do { return try ChatMessage(json: item) } catch let error as KDError {
                    throw KDError("messages[\(index)]: \(error.message)")
                }
            }
        case .prompt_response:
            let prompt: String, response: String
            if object["instruction"] != nil && object["prompt"] == nil {
                // Alpaca layout: the input, when present, follows the instruction after a blank line.
                let instruction = try string(object, "instruction")
                let input = object["input"] == nil || object["input"] is NSNull ? "" : try string(object, "input")
                prompt = input.isEmpty ? instruction : instruction + "\n\n" + input
                response = try string(object, "output")
            } else {
                prompt = try string(object, "prompt")
                response = try string(object, "response")
            }
            return [ChatMessage(role: "user", content: prompt), ChatMessage(role: "assistant", content: response)]
        case .gsm8k:
            return [ChatMessage(role: "user", content: try string(object, "question")),
                    ChatMessage(role: "assistant", content: try string(object, "answer"))]
        case .humaneval:
            return [ChatMessage(role: "user", content: try string(object, "prompt")),
                    ChatMessage(role: "assistant", content: try string(object, "canonical_solution"))]
        case .tokens, .auto:
            throw KDError("not a text format")
        }
    }

    static func example(_ record: JSONLines.Record, format: DataFormat, tokenizer: Tokenizer?,
                        options: DatasetOptions) throws -> Example {
        if format == .tokens {
            // tokenIDs refuses ids beyond 0...Int32.max (and, for labels, other than -100).
            guard let ids = try record.tokenIDs("input_ids", bounded: true) else { throw KDError("missing \"input_ids\"") }
            guard !ids.isEmpty else { throw KDError("\"input_ids\" is empty") }
            if let tokenizer, let bad = ids.firstIndex(where: { $0 >= tokenizer.count }) {
                throw KDError("\"input_ids\"[\(bad)] = \(ids[bad]) is not a token id (tokenizer has \(tokenizer.count))")
            }
            guard let labels = try record.tokenIDs("labels", bounded: true, allowIgnored: true) else {
                return Example(inputIDs: ids, labels: ids, line: record.line)
            }
            guard labels.count == ids.count else {
                throw KDError("\"labels\" has \(labels.count) entries, \"input_ids\" \(ids.count)")
            }
            if let tokenizer, let bad = labels.firstIndex(where: { $0 >= tokenizer.count }) {
                throw KDError("\"labels\"[\(bad)] = \(labels[bad]) is not a token id (tokenizer has \(tokenizer.count))")
            }
            return Example(inputIDs: ids, labels: labels, line: record.line)
        }
        let segments = ChatTemplate.segments(try turns(record.object, format: format))
        var ids: [Int] = []
        var labels: [Int] = []
        // Each segment is tokenized on its own, so the prompt's ids are exactly what a generation
        // prompt would give and the completion starts on a token boundary.
        for segment in segments {
            guard let tokenizer else { throw KDError("format \(format.rawValue) needs a tokenizer") }
            let pieceIDs = tokenizer.encode(segment.text)
            ids += pieceIDs
            labels += segment.isCompletion || options.trainOnPrompt
                ? pieceIDs : [Int](repeating: Example.ignored, count: pieceIDs.count)
        }
        return Example(inputIDs: ids, labels: labels, line: record.line)
    }
}

/// A batch of examples right-padded to its longest row.
public struct PaddedBatch: Sendable {
    public let batchSize: Int
    public let length: Int
    /// Row-major [batchSize, length].
    public let inputIDs: [Int]
    public let labels: [Int]
    public let attentionMask: [UInt8]
    /// The JSONL line of each example.
    public let lines: [Int]

    public init(_ examples: [Example], padID: Int) {
        batchSize = examples.count
        lines = examples.map(\.line)
        length = examples.map(\.inputIDs.count).max() ?? 0
        var ids = [Int](repeating: padID, count: batchSize * length)
        var labels = [Int](repeating: Example.ignored, count: batchSize * length)
        var mask = [UInt8](repeating: 0, count: batchSize * length)
        for (row, example) in examples.enumerated() {
            for t in 0..<example.inputIDs.count {
                ids[row * length + t] = example.inputIDs[t]
                labels[row * length + t] = example.labels[t]
                mask[row * length + t] = 1
            }
        }
        self.inputIDs = ids
        self.labels = labels
        self.attentionMask = mask
    }

    /// Positions the shifted loss scores: t where labels[t+1] is not -100 (within a row).
    public var scoredTokens: Int {
        var count = 0
        for row in 0..<batchSize {
            for t in 0..<(length - 1) where labels[row * length + t + 1] != Example.ignored { count += 1 }
        }
        return count
    }
}

/// Where an epoch-ordered pass over a dataset has got to: a checkpoint saves it, a resume restores it.
public struct DataCursor: Codable, Equatable, Sendable {
    public var epoch = 0
    public var index = 0

    public init(epoch: Int = 0, index: Int = 0) {
        self.epoch = epoch
        self.index = index
    }
}

/// Deals batches of example indices: each epoch a permutation of the dataset (seeded by the run
/// seed and the epoch when shuffling), cut into consecutive batches; the last batch of an epoch
/// may be smaller.
public struct BatchSampler: Sendable {
    public let count: Int
    public let batchSize: Int
    public let shuffle: Bool
    public let seed: UInt64
    public var cursor: DataCursor
    private var order: [Int]

    public init(count: Int, batchSize: Int, shuffle: Bool, seed: UInt64, cursor: DataCursor = DataCursor()) {
        self.count = count
        self.batchSize = batchSize
        self.shuffle = shuffle
        self.seed = seed
        self.cursor = cursor
        order = BatchSampler.order(count: count, shuffle: shuffle, seed: seed, epoch: cursor.epoch)
    }

    /// The order of `epoch`: identity, or a Fisher–Yates shuffle from (seed, epoch).
    public static func order(count: Int, shuffle: Bool, seed: UInt64, epoch: Int) -> [Int] {
        var order = Array(0..<count)
        guard shuffle else { return order }
        var rng = RandomGenerator(seed: seed, stream: RandomGenerator.hash("shuffle"), UInt64(epoch))
        for i in stride(from: count - 1, to: 0, by: -1) {
            order.swapAt(i, Int(rng.next() % UInt64(i + 1)))
        }
        return order
    }

    public mutating func next() -> [Int] {
        if cursor.index >= count {
            cursor = DataCursor(epoch: cursor.epoch + 1, index: 0)
            order = BatchSampler.order(count: count, shuffle: shuffle, seed: seed, epoch: cursor.epoch)
        }
        let end = min(count, cursor.index + batchSize)
        let batch = Array(order[cursor.index..<end])
        cursor.index = end
        return batch
    }
}
