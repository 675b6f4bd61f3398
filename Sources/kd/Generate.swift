import ArgumentParser
import Foundation
import KDCore
import KDEval
import KDModels
import KDText

struct Generate: KDCommand {
    static let configuration = CommandConfiguration(
        abstract: "Generate text from a model (+ a LoRA adapter) with a KV cache.",
        discussion: "Text goes to stdout as it is produced on a terminal; --json prints {\"ids\", \"text\", \"tokens_per_s\", ...}.")

    @Option(help: "Model directory.") var model: String
    @Option(help: "A PEFT LoRA adapter to run with the model.") var adapter: String?
    @Option(help: "Prompt text (raw, or a user turn with --chat).") var prompt: String?
    @Option(help: "A JSON file with a list of chat messages.") var messages: String?
    @Option(name: .customLong("prompt-ids"), help: "Prompt token ids, e.g. 1,2,3.") var promptIDs: String?
    @Flag(help: "Render --prompt as a user turn with the chat template.") var chat = false
    @Flag(name: .customLong("enable-thinking"), help: "Leave Qwen3 thinking on in the generation prompt.") var enableThinking = false
    @Option(help: "Sampling temperature (0 = greedy).") var temperature: Float = 0
    @Option(name: .customLong("top-k"), help: "Keep the k most likely tokens.") var topK: Int?
    @Option(name: .customLong("top-p"), help: "Keep the most likely tokens holding this much probability.") var topP: Float?
    @Option(help: "Sampling seed.") var seed: UInt64 = 0
    @Option(name: .customLong("max-new-tokens"), help: "Most tokens to generate.") var maxNewTokens: Int = 256
    @Option(name: .customLong("stop"), help: "Stop when the text ends with this (repeatable).") var stops: [String] = []
    @Option(help: "Device ids to shard the layers over, e.g. 0,1.") var devices: String = "0"
    @Option(help: "How frozen weights are held: auto (bf16 checkpoints as bf16), bf16 or f32.") var dtype: String = "auto"
    @Option(help: "BLAS threads per call (default: one per core).") var threads: Int?
    @Flag(help: "Print JSON on stdout instead of the text.") var json = false

    func execute() throws {
        try setThreads(threads)
        guard maxNewTokens >= 1 else { throw KDError("--max-new-tokens must be at least 1") }
        let source: Prompt
        switch (prompt, messages, promptIDs) {
        case (let text?, nil, nil): source = .text(text, chat: chat)
        case (nil, let file?, nil): source = try Prompt.messages(file: file)
        case (nil, nil, let ids?):
            let parsed = ids.split(separator: ",").map { Int($0.trimmingCharacters(in: .whitespaces)) }
            guard !parsed.isEmpty, parsed.allSatisfy({ $0 != nil }) else {
                throw KDError("--prompt-ids '\(ids)': expected comma-separated token ids")
            }
            source = .ids(parsed.map { $0! })
        default:
            throw KDError("give exactly one of --prompt, --messages or --prompt-ids")
        }
        let checkpoint = try Checkpoint(directory: model)
        let tokenizerFile = (model as NSString).appendingPathComponent("tokenizer.json")
        let tokenizer = FileManager.default.fileExists(atPath: tokenizerFile) ? try Tokenizer.load(directory: model) : nil
        let ids = try source.tokens(tokenizer: tokenizer, enableThinking: enableThinking)
        let lm = try loadModel(checkpoint, devices: devices, dtype: dtype, adapter: adapter)
        var stop = StopCondition.defaults(modelDirectory: model, spec: lm.spec, eosID: tokenizer?.eosID)
        stop.strings = stops
        let sampling = Sampling(temperature: temperature, topK: topK, topP: topP, seed: seed)
        let stream = !json && Console.stdoutIsTerminal && tokenizer != nil
        var streamed = TextStream()
        let start = ContinuousClock.now
        var firstToken: ContinuousClock.Instant?
        let result = try Generator(model: lm).generate(
            [ids], maxNewTokens: maxNewTokens, sampling: sampling, stop: stop,
            decode: tokenizer.map { t in { (try? t.decode($0, skipUnknown: true)) ?? "" } },
            onToken: { _, id in
                if firstToken == nil { firstToken = ContinuousClock.now }
                if stream, let tokenizer, !stop.tokenIDs.contains(id) {
                    FileHandle.standardOutput.write(streamed.append(tokenizer.bytes(of: id)))
                }
            })[0]
        let end = ContinuousClock.now
        let decodeSeconds = (end - (firstToken ?? end)).seconds
        let tokensPerSecond = result.ids.count > 1 ? Double(result.ids.count - 1) / decodeSeconds : 0
        let shown = result.finish == .stop && stop.tokenIDs.contains(result.ids.last ?? -1) ? Array(result.ids.dropLast()) : result.ids
        let text = try tokenizer?.decode(shown, skipUnknown: true) ?? ""
        if json {
            Console.json(["ids": result.ids, "text": text, "tokens_per_s": tokensPerSecond, "prompt_tokens": ids.count,
                          "prefill_s": ((firstToken ?? end) - start).seconds, "finish_reason": result.finish.rawValue])
        } else if stream {
            FileHandle.standardOutput.write(Data("\n".utf8))
        } else {
            let output = tokenizer == nil ? result.ids.map(String.init).joined(separator: ",") : text
            FileHandle.standardOutput.write(Data((output + "\n").utf8))
        }
        Console.info(String(format: "%d prompt + %d generated tokens (%@); %.1f tokens/s decoding",
                            ids.count, result.ids.count, result.finish.rawValue, tokensPerSecond))
    }
}

/// Turns token bytes into text as they arrive, holding back an incomplete UTF-8 sequence.
struct TextStream {
    private var pending: [UInt8] = []

    mutating func append(_ bytes: [UInt8]) -> Data {
        pending += bytes
        // Emit everything up to the last complete UTF-8 sequence.
        var end = pending.count
        var back = 0
        while back < min(4, pending.count) {
            let byte = pending[pending.count - 1 - back]
            if byte & 0xC0 != 0x80 {  // a lead byte (or ASCII)
                let need = byte < 0x80 ? 1 : byte >= 0xF0 ? 4 : byte >= 0xE0 ? 3 : 2
                if back + 1 < need { end = pending.count - 1 - back }
                break
            }
            back += 1
        }
        let out = Data(pending[..<end])
        pending.removeFirst(end)
        return out
    }
}
