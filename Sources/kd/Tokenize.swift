import ArgumentParser
import Foundation
import KDCore
import KDEval
import KDText

/// Reads JSON objects line by line from stdin, calling `body` with each and its line number; a
/// bad line ends the command with `<stdin>:LINE: problem`.
func forEachStdinRecord(_ body: ([String: Any]) throws -> Void) throws {
    var lineNumber = 0
    while let line = readLine(strippingNewline: true) {
        lineNumber += 1
        if line.allSatisfy(\.isWhitespace) { continue }
        do {
            try body(try JSONLines.parse(Data(line.utf8)))
        } catch let error as KDError {
            throw KDError("<stdin>:\(lineNumber): \(error.message)")
        }
    }
}

struct Tokenize: KDCommand {
    static let configuration = CommandConfiguration(
        abstract: "Turn JSONL text on stdin into token ids on stdout.",
        discussion: "Each line is {\"text\": ...}, or {\"messages\": [...]} with --chat (rendered with the Qwen3 chat "
            + "template). Each output line is {\"ids\": [...]}.")

    @Option(help: "Directory with tokenizer.json (and tokenizer_config.json for --chat).") var tokenizer: String
    @Flag(help: "Lines are chats: {\"messages\": [...]}.") var chat = false
    @Flag(name: .customLong("add-generation-prompt"), help: "With --chat: end with the assistant's turn header.")
    var addGenerationPrompt = false
    @Flag(name: .customLong("enable-thinking"), help: "With --add-generation-prompt: leave thinking on.")
    var enableThinking = false
    @Flag(help: "Report load time and encoding throughput on stderr.") var stats = false

    func execute() throws {
        let loadStart = ContinuousClock.now
        let tokenizer = try Tokenizer.load(directory: tokenizer)
        let loadSeconds = (ContinuousClock.now - loadStart).seconds
        if chat { try ChatTemplate.check(tokenizer.chatTemplate, file: tokenizer.configFile) }
        var bytes = 0, tokens = 0, texts = 0
        var encodeSeconds = 0.0
        try forEachStdinRecord { object in
            let text: String
            if chat {
                guard let list = object["messages"] as? [Any] else { throw KDError("expected \"messages\": [...]") }
                let messages = try list.map(ChatMessage.init(json:))
                text = ChatTemplate.render(messages, addGenerationPrompt: addGenerationPrompt, enableThinking: enableThinking)
            } else {
                guard let value = object["text"] else { throw KDError("missing \"text\"") }
                guard let string = value as? String else { throw KDError("\"text\" must be a string") }
                text = string
            }
            let start = ContinuousClock.now
            let ids = tokenizer.encode(text)
            encodeSeconds += (ContinuousClock.now - start).seconds
            bytes += text.utf8.count
            tokens += ids.count
            texts += 1
            Console.json(["ids": ids])
        }
        if stats {
            Console.info(String(format: "%d texts, %d bytes, %d tokens; load %.3f s, encode %.3f s, %.2f MB/s",
                                texts, bytes, tokens, loadSeconds, encodeSeconds, Double(bytes) / encodeSeconds / 1e6))
        }
    }
}

struct Detokenize: KDCommand {
    static let configuration = CommandConfiguration(
        abstract: "Turn JSONL token ids on stdin ({\"ids\": [...]}) into text ({\"text\": ...}) on stdout.")

    @Option(help: "Directory with tokenizer.json.") var tokenizer: String
    @Flag(name: .customLong("skip-special-tokens"), help: "Leave out special tokens such as <|im_end|>.")
    var skipSpecialTokens = false

    func execute() throws {
        let tokenizer = try Tokenizer.load(directory: tokenizer)
        try forEachStdinRecord { object in
            let record = JSONLines.Record(line: 0, object: object)
            guard let ids = try record.tokenIDs("ids") ?? record.tokenIDs("input_ids") else {
                throw KDError("missing \"ids\"")
            }
            Console.json(["text": try tokenizer.decode(ids, skipSpecialTokens: skipSpecialTokens)])
        }
    }
}
