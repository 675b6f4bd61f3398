import Foundation
import Testing

/// `kd generate` greedy output against transformers' generate(do_sample=False).
@Suite struct GenerateCommandTests {
    static func cases() throws -> [[String: Any]] {
        let text = try String(contentsOfFile: KDProcess.fixtures + "/generation/expected.jsonl", encoding: .utf8)
        return text.split(separator: "\n").map { KDProcess.json(String($0)) }
    }

    /// Greedy decoding, with the (bf16-exact) weights held as f32 and as bf16.
    @Test(arguments: ["f32", "bf16"])
    func greedyEqualsTransformers(dtype: String) throws {
        let cases = try Self.cases()
        #expect(cases.count == 8)
        for record in cases {
            let prompt = (record["prompt"] as! [Int]).map(String.init).joined(separator: ",")
            var arguments = ["generate", "--model", KDProcess.fixtures + "/" + (record["model"] as! String),
                             "--prompt-ids", prompt, "--max-new-tokens", "\(record["max_new_tokens"] as! Int)", "--json",
                             "--devices", "0,1", "--dtype", dtype]
            if let adapter = record["adapter"] as? String { arguments += ["--adapter", KDProcess.fixtures + "/" + adapter] }
            let result = try KDProcess.run(arguments)
            #expect(result.status == 0, "\(result.stderr)")
            #expect(KDProcess.json(result.stdout)["ids"] as? [Int] == record["ids"] as? [Int], "\(record["model"]!) \(prompt)")
        }
    }

    @Test func badArgumentsAreOneLine() throws {
        let model = KDProcess.fixtures + "/forward/moe-8x2"
        let none = try KDProcess.run(["generate", "--model", model])
        #expect(none.stderr == "kd: error: give exactly one of --prompt, --messages or --prompt-ids\n")
        let text = try KDProcess.run(["generate", "--model", model, "--prompt", "hi"])
        #expect(text.stderr == "kd: error: a text prompt needs the model's tokenizer.json\n")
        let ids = try KDProcess.run(["generate", "--model", model, "--prompt-ids", "1,x"])
        #expect(ids.stderr == "kd: error: --prompt-ids '1,x': expected comma-separated token ids\n")
        let topP = try KDProcess.run(["generate", "--model", model, "--prompt-ids", "1", "--temperature", "1", "--top-p", "2"])
        #expect(topP.stderr == "kd: error: --top-p must be in (0, 1]\n")
        #expect(topP.status == 1)
    }
}
