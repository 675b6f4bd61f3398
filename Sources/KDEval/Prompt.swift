import Foundation
import KDCore
import KDText

/// Where a prompt comes from: raw text, chat messages (rendered with the Qwen3 template and its
/// generation prompt), or token ids.
public enum Prompt {
    case text(String, chat: Bool)
    case messages([ChatMessage])
    case ids([Int])

    /// Reads a JSON file holding a list of messages (or {"messages": [...]}).
    public static func messages(file path: String) throws -> Prompt {
        let data = try InputFile.read(path, limit: 1 << 30)
        guard let value = try? JSONSerialization.jsonObject(with: data) else { throw KDError("\(path): not valid JSON") }
        let list = (value as? [Any]) ?? ((value as? [String: Any])?["messages"] as? [Any])
        guard let list, !list.isEmpty else { throw KDError("\(path): expected a list of messages or {\"messages\": [...]}") }
        do {
            return .messages(try list.map(ChatMessage.init(json:)))
        } catch let error as KDError {
            throw KDError("\(path): \(error.message)")
        }
    }

    /// The token ids to generate from. Chat prompts end with the assistant's turn header (and an
    /// empty think block unless thinking is enabled).
    public func tokens(tokenizer: Tokenizer?, enableThinking: Bool) throws -> [Int] {
        switch self {
        case .ids(let ids):
            return ids
        case .text(let text, let chat):
            guard let tokenizer else { throw KDError("a text prompt needs the model's tokenizer.json") }
            if !chat { return tokenizer.encode(text) }
            return try Prompt.messages([ChatMessage(role: "user", content: text)]).tokens(tokenizer: tokenizer, enableThinking: enableThinking)
        case .messages(let messages):
            guard let tokenizer else { throw KDError("a chat prompt needs the model's tokenizer.json") }
            try ChatTemplate.check(tokenizer.chatTemplate, file: tokenizer.configFile)
            return tokenizer.encode(ChatTemplate.render(messages, addGenerationPrompt: true, enableThinking: enableThinking))
        }
    }
}
