import Foundation
import KDCore

/// One chat turn as the Qwen3 template reads it.
public struct ChatMessage: Equatable, Sendable {
    public struct ToolCall: Equatable, Sendable {
        public let name: String
        /// The arguments as JSON text, inserted verbatim.
        public let arguments: String
    }

    public var role: String
    public var content: String
    public var reasoningContent: String?
    public var toolCalls: [ToolCall]

    public init(role: String, content: String, reasoningContent: String? = nil, toolCalls: [ToolCall] = []) {
        self.role = role
        self.content = content
        self.reasoningContent = reasoningContent
        self.toolCalls = toolCalls
    }

    public static let roles = ["system", "user", "assistant", "tool"]

    /// Reads `{"role", "content", "reasoning_content"?, "tool_calls"?}`.
    public init(json: Any) throws {
        guard let object = json as? [String: Any] else { throw KDError("a message must be a JSON object") }
        guard let given = object["role"] as? String else { throw KDError("a message needs a string \"role\"") }
        // Compared scalar by scalar: String == normalises, which is slow on long runs of marks.
        guard let role = ChatMessage.roles.first(where: { $0.unicodeScalars.elementsEqual(given.unicodeScalars) }) else {
            throw KDError("unknown role \(quoted(given, limit: 40)) (expected one of \(ChatMessage.roles.joined(separator: ", ")))")
        }
        let content: String
        switch object["content"] {
        case let text as String: content = text
        case nil, is NSNull: content = ""
        default: throw KDError("message \"content\" must be a string")
        }
        var reasoning: String?
        switch object["reasoning_content"] {
        case let text as String: reasoning = text
        case nil, is NSNull: reasoning = nil
        default: throw KDError("message \"reasoning_content\" must be a string")
        }
        var calls: [ToolCall] = []
        if let list = object["tool_calls"], !(list is NSNull) {
            guard let list = list as? [[String: Any]] else { throw KDError("\"tool_calls\" must be a list of objects") }
            calls = try list.map { entry in
                let call = entry["function"] as? [String: Any] ?? entry
                guard let name = call["name"] as? String else { throw KDError("a tool call needs a string \"name\"") }
                guard let arguments = call["arguments"] as? String else {
                    throw KDError("tool call \(quoted(name, limit: 40)): \"arguments\" must be a JSON-encoded string")
                }
                return ToolCall(name: name, arguments: arguments)
            }
        }
        self.init(role: role, content: content, reasoningContent: reasoning, toolCalls: calls)
    }
}

/// The Qwen3 chat template (ChatML with thinking), rendered natively: byte-identical to
/// transformers' `apply_chat_template` with the template shipped in Qwen3's tokenizer_config.json.
public enum ChatTemplate {
    /// Fails unless `template` is the Qwen3 family's (ChatML turns with `<think>` handling).
    public static func check(_ template: String?, file: String) throws {
        guard let template else {
            throw KDError("\(file): no chat_template (kd renders the Qwen3 ChatML template; use format: tokens for other data)")
        }
        let markers = ["<|im_start|>", "<|im_end|>", "reasoning_content", "enable_thinking", "</think>"]
        guard markers.allSatisfy(template.contains) else {
            throw KDError("\(file): the chat template is not the Qwen3 ChatML-with-thinking family that kd renders; "
                + "tokenize the data yourself and use format: tokens")
        }
    }

    /// Renders `messages`. `enableThinking: false` appends an empty think block to the
    /// generation prompt, as Qwen3 does to switch thinking off.
    public static func render(_ messages: [ChatMessage], addGenerationPrompt: Bool = false, enableThinking: Bool = true) -> String {
        segments(messages, addGenerationPrompt: addGenerationPrompt, enableThinking: enableThinking)
            .map(\.text).joined()
    }

    /// A piece of rendered text; `isCompletion` marks what an assistant writes (its reasoning,
    /// content, tool calls and closing `<|im_end|>\n`), which training scores.
    public struct Segment: Equatable, Sendable {
        public let text: String
        public let isCompletion: Bool
    }

    /// The rendering as segments. The turn header `<|im_start|>assistant\n` and an empty think
    /// block belong to the prompt, since the generation prompt with thinking off ends with them.
    public static func segments(_ messages: [ChatMessage], addGenerationPrompt: Bool = false, enableThinking: Bool = true) -> [Segment] {
        var out: [Segment] = []
        func prompt(_ text: String) { out.append(Segment(text: text, isCompletion: false)) }
        func completion(_ text: String) { out.append(Segment(text: text, isCompletion: true)) }
        if let first = messages.first, first.role == "system" {
            prompt("<|im_start|>system\n" + first.content + "<|im_end|>\n")
        }
        // The last user turn that is not a wrapped tool response: reasoning is kept only after it.
        var lastQuery = messages.count - 1
        for index in stride(from: messages.count - 1, through: 0, by: -1) {
            let m = messages[index]
            if m.role == "user" && !(hasPrefix(m.content, "<tool_response>") && hasSuffix(m.content, "</tool_response>")) {
                lastQuery = index
                break
            }
        }
        for (index, message) in messages.enumerated() {
            let isLast = index == messages.count - 1
            switch message.role {
            case "user":
                prompt("<|im_start|>user\n" + message.content + "<|im_end|>\n")
            case "system" where index > 0:
                prompt("<|im_start|>system\n" + message.content + "<|im_end|>\n")
            case "assistant":
                var content = message.content
                var reasoning = ""
                if let given = message.reasoningContent {
                    reasoning = given
                } else if content.range(of: "</think>") != nil {
                    let parts = content.components(separatedBy: "</think>")
                    reasoning = stripLeading(stripTrailing(parts[0]).components(separatedBy: "<think>").last!)
                    content = stripLeading(parts.last!)
                }
                prompt("<|im_start|>assistant\n")
                var body = ""
                if index > lastQuery && (isLast || !reasoning.isEmpty) {
                    let thought = stripTrailing(stripLeading(reasoning))
                    if thought.isEmpty {
                        prompt("<think>\n\n</think>\n\n")
                    } else {
                        body += "<think>\n" + thought + "\n</think>\n\n"
                    }
                    body += stripLeading(content)
                } else {
                    body += content
                }
                for (k, call) in message.toolCalls.enumerated() {
                    if k > 0 || !content.isEmpty { body += "\n" }
                    body += "<tool_call>\n{\"name\": \"" + call.name + "\", \"arguments\": " + call.arguments + "}\n</tool_call>"
                }
                completion(body + "<|im_end|>\n")
            case "tool":
                var text = index == 0 || messages[index - 1].role != "tool" ? "<|im_start|>user" : ""
                text += "\n<tool_response>\n" + message.content + "\n</tool_response>"
                if isLast || messages[index + 1].role != "tool" { text += "<|im_end|>\n" }
                prompt(text)
            default:
                break  // the leading system message, rendered above
            }
        }
        if addGenerationPrompt {
            prompt("<|im_start|>assistant\n" + (enableThinking ? "" : "<think>\n\n</think>\n\n"))
        }
        return out
    }

    /// Python's `startswith` / `endswith`: by code point. (String's are by Character, which
    /// differs when a mark follows the affix, and normalise, slowly on long runs of marks.)
    static func hasPrefix(_ text: String, _ prefix: String) -> Bool {
        text.unicodeScalars.starts(with: prefix.unicodeScalars)
    }

    static func hasSuffix(_ text: String, _ suffix: String) -> Bool {
        text.unicodeScalars.reversed().starts(with: suffix.unicodeScalars.reversed())
    }

    /// Python's `lstrip('\n')` / `rstrip('\n')`, scalar by scalar ("\r\n" is one Character in Swift).
    static func stripLeading(_ text: String) -> String {
        String(String.UnicodeScalarView(text.unicodeScalars.drop { $0 == "\n" }))
    }

    static func stripTrailing(_ text: String) -> String {
        var scalars = Substring(text).unicodeScalars
        while scalars.last == "\n" { scalars.removeLast() }
        return String(scalars)
    }
}
