import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Testing
import KDCore
@testable import KDText

/// Data files as the trainer meets them: each fault is one line naming the file (and line),
/// never mislabelled as a tokenizer problem, never a trap or a hang.
@Suite struct DataFileTests {
    static func file(_ contents: String, name: String = "data.jsonl") throws -> String {
        let path = TextFixtures.temporaryDirectory() + "/" + name
        try Data(contents.utf8).write(to: URL(fileURLWithPath: path))
        return path
    }

    /// The message of loading `path` the way the trainer does: the tokenizer is asked for only
    /// once the format is known, and here there is none, so text data would say so.
    static func message(_ path: String, _ options: DatasetOptions = DatasetOptions()) -> String {
        do {
            let data = try Dataset(path: path, options: options) { format in
                if format == .tokens { return nil }
                throw KDError("no tokenizer.json")
            }
            return "\(data.format.rawValue) \(data.examples.count) examples"
        } catch {
            return "\(error)"
        }
    }

    @Test func missingEmptyAndBlankFilesAreNamedAsSuch() throws {
        let dir = TextFixtures.temporaryDirectory()
        #expect(Self.message(dir + "/none.jsonl") == "\(dir)/none.jsonl: no such file")
        #expect(Self.message(dir + "/none/x.jsonl") == "\(dir)/none/x.jsonl: no such file")
        let empty = try Self.file("")
        #expect(Self.message(empty) == "\(empty): empty")
        let blank = try Self.file("\n  \n\t\n")
        #expect(Self.message(blank) == "\(blank): no records (only blank lines)")
        let array = try Self.file("[1, 2]\n")
        #expect(Self.message(array) == "\(array):1: expected a JSON object")
        let text = try Self.file("hello\n")
        #expect(Self.message(text) == "\(text):1: not valid JSON")
        let skipped = try Self.file("hello\n[1]\n")
        #expect(Self.message(skipped, DatasetOptions(onBadRecord: .skip)) == "\(skipped): no records (2 bad lines skipped)")
    }

    @Test func aDirectoryOrAFIFOIsRefusedWithoutBlocking() throws {
        let dir = TextFixtures.temporaryDirectory()
        #expect(Self.message(dir) == "\(dir): is a directory")
        let fifo = dir + "/fifo.jsonl"
        #expect(mkfifo(fifo, 0o600) == 0)
        // No writer ever opens the FIFO: reading it would block forever.
        #expect(Self.message(fifo) == "\(fifo): is not a regular file")
        #expect(throws: KDError("\(fifo): is not a regular file")) { try JSONLines(path: fifo) }
        #expect(Self.message("/dev/null") == "/dev/null: is not a regular file")
    }

    @Test func aLongFirstLineIsReadWhole() throws {
        // 100k ids: a first line of about 600 KB, far beyond the 64 KiB that format detection once read.
        let ids = (0..<100_000).map { String($0 % 50_000) }.joined(separator: ", ")
        let path = try Self.file("{\"input_ids\": [\(ids)]}\n{\"input_ids\": [1, 2]}\n")
        #expect(Self.message(path, DatasetOptions(maxSeqLen: 200_000)) == "tokens 2 examples")
        let data = try Dataset(path: path, tokenizer: nil, options: DatasetOptions(maxSeqLen: 200_000))
        #expect(data.examples[0].inputIDs.count == 100_000)
        #expect(data.maxTokenID == 49_999)
    }

    @Test func tokenIdsBeyondInt32OrNegativeAreRefusedWithFileAndLine() throws {
        func message(_ line: String) throws -> String {
            let path = try Self.file(#"{"input_ids": [1, 2]}"# + "\n" + line + "\n")
            return Self.message(path).replacingOccurrences(of: path, with: "data.jsonl")
        }
        #expect(try message(#"{"input_ids": [1, 4294967301]}"#)
            == "data.jsonl:2: \"input_ids\"[1] = 4294967301 is not a token id (0 to 2147483647)")
        #expect(try message(#"{"input_ids": [2147483648]}"#)
            == "data.jsonl:2: \"input_ids\"[0] = 2147483648 is not a token id (0 to 2147483647)")
        #expect(try message(#"{"input_ids": [-100, 1]}"#)
            == "data.jsonl:2: \"input_ids\"[0] = -100 is not a token id (0 to 2147483647)")
        #expect(try message(#"{"input_ids": [1, 2], "labels": [-100, -1]}"#)
            == "data.jsonl:2: \"labels\"[1] = -1 is not a token id (0 to 2147483647, or -100)")
        #expect(try message(#"{"input_ids": [1, 2], "labels": [-100, 9223372036854775807]}"#)
            == "data.jsonl:2: \"labels\"[1] = 9223372036854775807 is not a token id (0 to 2147483647, or -100)")
        #expect(try message(#"{"input_ids": [1, 1e400]}"#) == "data.jsonl:2: not valid JSON")
        let digits = String(repeating: "9", count: 300)
        let huge = try message("{\"input_ids\": [1, \(digits)]}")
        #expect(huge == "data.jsonl:2: \"input_ids\"[1] = 1e+300 is not a token id (0 to 2147483647)")
        #expect(try message(#"{"input_ids": [1, 2.5]}"#) == "data.jsonl:2: \"input_ids\"[1] is not an integer")
        #expect(try message(#"{"input_ids": [1, 2147483647], "labels": [-100, 2147483647]}"#) == "tokens 2 examples")
    }

    @Test func maxTokenIDLetsTheTrainerRefuseOutOfVocabularyIds() throws {
        let path = try Self.file("""
            {"input_ids": [1, 2, 3]}
            {"input_ids": [4, 5, 6], "labels": [-100, 5, 70]}
            """)
        let data = try Dataset(path: path, tokenizer: nil, options: DatasetOptions())
        #expect(data.maxTokenID == 70)
        try data.checkTokenIDs(below: 71, of: "student vocabulary")
        #expect(throws: KDError("\(path):2: \"labels\"[2] = 70 is outside the student vocabulary (10 tokens)")) {
            try data.checkTokenIDs(below: 10, of: "student vocabulary")
        }
        #expect(throws: KDError("\(path):2: \"input_ids\"[0] = 4 is outside the student vocabulary (4 tokens)")) {
            try data.checkTokenIDs(below: 4, of: "student vocabulary")
        }
    }

    @Test func echoedInputIsCutAndEscaped() throws {
        let key = String(repeating: "k", count: 5000) + "\\u0000"
        let path = try Self.file("{\"\(key)\": 1, \"a\\u0000\\nb\": 2}\n")
        let message = Self.message(path)
        #expect(message == "\(path):1: cannot tell the format from the keys ['a\\u{0}\\u{A}b', '\(String(repeating: "k", count: 40))…' (5001 characters)]; set data.format")
        #expect(!message.contains("\n") && !message.contains("\u{0}"))
        let role = String(repeating: "r", count: 300)
        let chat = try Self.file("{\"messages\": [{\"role\": \"\(role)\", \"content\": \"x\"}]}\n")
        let tokenizer = TextFixtures.qwen3
        #expect(throws: KDError("\(chat):1: messages[0]: unknown role '\(String(repeating: "r", count: 40))…' (300 characters) (expected one of system, user, assistant, tool)")) {
            try Dataset(path: chat, tokenizer: tokenizer, options: DatasetOptions())
        }
    }

    @Test func quotedCutsAtScalarsAndEscapesControls() {
        #expect(quoted("plain") == "'plain'")
        #expect(quoted("it's a\\b") == "'it\\'s a\\\\b'")
        #expect(quoted("a\u{0}\u{7}\t\r\n\u{7F}\u{85}\u{2028}z") == "'a\\u{0}\\u{7}\\u{9}\\u{D}\\u{A}\\u{7F}\\u{85}\\u{2028}z'")
        #expect(quoted("abcdef", limit: 3) == "'abc…' (6 characters)")
        #expect(quoted("abc", limit: 3) == "'abc'")
        // 40k combining marks are one Character; the cut counts scalars.
        let marks = "e" + String(repeating: "\u{301}", count: 40_000)
        #expect(quoted(marks, limit: 5).unicodeScalars.count == 2 + 5 + 1 + " (40001 characters)".unicodeScalars.count)
        #expect(quoted(String(repeating: "x", count: 1000)).count == 122 + " (1000 characters)".count + 1)
    }
}
