import Foundation
import KDCore
import KDText
import Synchronization

/// Tokenizers read in this process, by directory (see `RunConfig.loadTokenizer`).
private let loadedTokenizers = Mutex<[String: Tokenizer]>([:])

extension RunConfig {
    /// The dataset options of the `data` section.
    public var datasetOptions: DatasetOptions {
        DatasetOptions(format: data.format, maxSeqLen: data.maxSeqLen, trainOnPrompt: data.trainOnPrompt,
                       onBadRecord: data.onBadRecord)
    }

    /// The directory the tokenizer is read from: `data.tokenizer`, else the student's.
    public var tokenizerDirectory: String { data.tokenizer ?? student.path }

    /// The tokenizer, or nil when the data is pre-tokenized and no tokenizer.json is at hand. It is
    /// read once per process: a run's setup asks for it in several places (each data file, the
    /// vocabulary check) and reading the Qwen3 tokenizer takes about half a second.
    public func loadTokenizer(required: Bool) throws -> Tokenizer? {
        let directory = tokenizerDirectory
        let file = (directory as NSString).appendingPathComponent("tokenizer.json")
        if !required && !FileManager.default.fileExists(atPath: file) { return nil }
        guard !directory.isEmpty else { throw KDError("data.tokenizer (or student.path) is required for text data") }
        if let loaded = loadedTokenizers.withLock({ $0[directory] }) { return loaded }
        let tokenizer = try Tokenizer.load(directory: directory)
        loadedTokenizers.withLock { $0[directory] = tokenizer }
        return tokenizer
    }

    /// Loads one of the data files with the run's options. The file is read and its format worked
    /// out first, so a missing, empty or malformed data file is reported as such; the tokenizer is
    /// then required only for text formats.
    public func loadDataset(_ path: String?, key: String) throws -> Dataset {
        guard let path else { throw KDError("\(key) is required") }
        return try Dataset(path: path, options: datasetOptions) { format in
            try loadTokenizer(required: format != .tokens)
        }
    }
}

extension RunConfig {
    /// The ids every token must be below: the smaller of the two models' vocab_size, read from
    /// their config.json (no weights are read), or nil when the models are not configured.
    public func vocabularyBound() throws -> Int? {
        guard !teacher.path.isEmpty, !student.path.isEmpty else { return nil }
        return min(try MemoryPlan.spec(at: teacher.path).vocabSize, try MemoryPlan.spec(at: student.path).vocabSize)
    }

    /// Refuses a dataset with a token id or label the models cannot embed or score, naming the
    /// file and line of the first, before any weight is read or any step is run.
    public func checkVocabulary(_ dataset: Dataset) throws {
        guard let bound = try vocabularyBound() else { return }
        try dataset.checkTokenIDs(below: bound, of: "models' vocabulary")
    }
}
