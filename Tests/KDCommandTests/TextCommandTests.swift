import Foundation
import Testing

@Suite struct TextCommandTests {
    static let tokenizer = KDProcess.repository + "/Configs/tokenizer/qwen3"

    @Test func tokenizeAndDetokenizeRoundTripInAPipe() throws {
        let input = "{\"text\": \"Hello world, 你好!\"}\n\n{\"text\": \"e\\u0301\"}\n"
        let encoded = try KDProcess.run(["tokenize", "--tokenizer", Self.tokenizer], stdin: input)
        #expect(encoded.status == 0, "\(encoded.stderr)")
        #expect(encoded.stdout == "{\"ids\":[9707,1879,11,220,108386,0]}\n{\"ids\":[963]}\n")
        let decoded = try KDProcess.run(["detokenize", "--tokenizer", Self.tokenizer], stdin: encoded.stdout)
        #expect(decoded.stdout == "{\"text\":\"Hello world, 你好!\"}\n{\"text\":\"é\"}\n")
    }

    @Test func chatRendersTheTemplate() throws {
        let result = try KDProcess.run(
            ["tokenize", "--tokenizer", Self.tokenizer, "--chat", "--add-generation-prompt"],
            stdin: "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}]}\n")
        #expect(result.stdout == "{\"ids\":[151644,872,198,13048,151645,198,151644,77091,198,151667,271,151668,271]}\n")
    }

    @Test func badLinesNameTheLineAndExitOne() throws {
        let cases: [([String], String, String)] = [
            (["tokenize"], "{\"text\": \"a\"}\n{\"txt\": \"b\"}\n", "<stdin>:2: missing \"text\""),
            (["tokenize"], "not json\n", "<stdin>:1: not valid JSON"),
            (["tokenize", "--chat"], "{\"messages\": [{\"role\": \"robot\"}]}\n",
             "<stdin>:1: unknown role 'robot' (expected one of system, user, assistant, tool)"),
            (["detokenize"], "{\"ids\": [1, -5]}\n", "<stdin>:1: token id -5 is outside the tokenizer (151669 tokens)"),
        ]
        for (arguments, stdin, message) in cases {
            let result = try KDProcess.run(arguments + ["--tokenizer", Self.tokenizer], stdin: stdin)
            #expect(result.status == 1)
            #expect(result.stderr == "kd: error: \(message)\n")
        }
        let missing = try KDProcess.run(["tokenize", "--tokenizer", "/nowhere"], stdin: "")
        #expect(missing.stderr == "kd: error: /nowhere: no tokenizer.json (kd reads Hugging Face fast-tokenizer files)\n")
    }

    @Test func dataStatsOnATextDataset() throws {
        let dir = KDProcess.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Data("{\"prompt\": \"Hi\", \"response\": \"Hello\"}\n{\"prompt\": \"x\"}\n".utf8)
            .write(to: URL(fileURLWithPath: dir + "/train.jsonl"))
        let yaml = "student: {path: \(Self.tokenizer)}\ndata: {train: \(dir)/train.jsonl, on_bad_record: skip}\n"
        let result = try KDProcess.run(["data", "--config", "-", "--stats"], stdin: yaml)
        #expect(result.status == 0, "\(result.stderr)")
        let stats = KDProcess.json(result.stdout)
        #expect(stats["examples"] as? Int == 1)
        #expect(stats["skipped"] as? Int == 1)
        #expect(stats["scored_tokens"] as? Int == 3)
        #expect(result.stderr.contains("⟦Hello<|im_end|>\n⟧"))
        let strict = try KDProcess.run(["data", "--config", "-", "--stats", "--set", "data.on_bad_record=error"], stdin: yaml)
        #expect(strict.status == 1)
        #expect(strict.stderr == "kd: error: \(dir)/train.jsonl:2: missing \"response\"\n")
    }
}
