import Foundation
import KDCore
import KDText

/// A record of a data file seen as a prompt to answer: the turns before the answer, the
/// reference answer, and what its task needs to be scored.
public struct EvalRecord: Sendable {
    public let line: Int
    public let prompt: [ChatMessage]
    /// The reference response (the record's last assistant turn, GSM8K answer, canonical solution).
    public let referenceResponse: String?
    /// A short answer a response should contain (GSM8K: the number after ####).
    public let referenceAnswer: String?
    /// HumanEval fields, for pass@1.
    public let humanEval: (prompt: String, test: String, entryPoint: String)?

    /// The prompt as people read it: its last user turn.
    public var promptText: String { prompt.last { $0.role == "user" }?.content ?? prompt.last?.content ?? "" }
}

public enum EvalRecords {
    /// Reads every record of a JSONL file in a text format (detected, or `format`).
    public static func read(_ path: String, format: DataFormat = .auto) throws -> (format: DataFormat, records: [EvalRecord]) {
        let lines = try JSONLines(path: path)
        guard let first = lines.records.first else { throw KDError("\(path): no records") }
        let resolved = format == .auto ? Dataset.detect(first.object) : format
        guard let resolved, resolved != .tokens else {
            throw KDError("\(path): prompts need a text format (chat, prompt_response, gsm8k or humaneval)")
        }
        let records = try lines.records.map { record -> EvalRecord in
            do {
                var turns = try Dataset.turns(record.object, format: resolved)
                var response: String?
                if turns.last?.role == "assistant" { response = turns.removeLast().content }
                guard !turns.isEmpty else { throw KDError("no prompt turns before the answer") }
                var human: (String, String, String)?
                if resolved == .humaneval {
                    guard let test = record.object["test"] as? String, let entry = record.object["entry_point"] as? String,
                          let prompt = record.object["prompt"] as? String else {
                        throw KDError("a HumanEval record needs \"prompt\", \"test\" and \"entry_point\"")
                    }
                    human = (prompt, test, entry)
                }
                let answer = resolved == .gsm8k ? response.flatMap(GSM8K.reference) : (record.object["answer"] as? String)
                return EvalRecord(line: record.line, prompt: turns, referenceResponse: response, referenceAnswer: answer,
                                  humanEval: human)
            } catch let error as KDError {
                throw KDError("\(path):\(record.line): \(error.message)")
            }
        }
        return (resolved, records)
    }

    /// Whether `text` contains `answer` as a whole number or word (not inside a longer one).
    public static func contains(_ text: String, answer: String) -> Bool {
        var searchRange = text.startIndex..<text.endIndex
        while let found = text.range(of: answer, range: searchRange) {
            let before = found.lowerBound > text.startIndex ? text[text.index(before: found.lowerBound)] : " "
            let after = found.upperBound < text.endIndex ? text[found.upperBound] : " "
            if !(before.isLetter || before.isNumber) && !(after.isLetter || after.isNumber) { return true }
            searchRange = found.upperBound..<text.endIndex
        }
        return false
    }
}
