import Foundation
import Testing
import KDCore
@testable import KDText

@Suite struct ChatTemplateTests {
    @Test func rendersByteIdenticalToTransformers() throws {
        let cases = try TextFixtures.jsonLines("chat.jsonl")
        #expect(cases.count == 14)
        for (index, record) in cases.enumerated() {
            let messages = try (record["messages"] as! [Any]).map(ChatMessage.init(json:))
            let rendered = ChatTemplate.render(
                messages, addGenerationPrompt: record["add_generation_prompt"] as? Bool ?? false,
                enableThinking: record["enable_thinking"] as? Bool ?? true)
            #expect(rendered == record["text"] as! String, "case \(index)")
        }
    }

    @Test func qwen3TemplateIsRecognisedAndOthersRefused() throws {
        let tokenizer = TextFixtures.qwen3
        try ChatTemplate.check(tokenizer.chatTemplate, file: "tokenizer_config.json")
        #expect(tokenizer.padID == 151_643)
        #expect(tokenizer.eosID == 151_645)
        let llama = "{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>{% endfor %}"
        #expect(throws: KDError("tokenizer_config.json: the chat template is not the Qwen3 ChatML-with-thinking family that kd renders; tokenize the data yourself and use format: tokens")) {
            try ChatTemplate.check(llama, file: "tokenizer_config.json")
        }
    }

    @Test func messagesAreValidated() {
        #expect(throws: KDError("unknown role 'asistant' (expected one of system, user, assistant, tool)")) {
            _ = try ChatMessage(json: ["role": "asistant", "content": "x"])
        }
        #expect(throws: KDError("message \"content\" must be a string")) {
            _ = try ChatMessage(json: ["role": "user", "content": 3])
        }
    }
}
