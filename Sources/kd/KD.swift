import ArgumentParser

@main
struct KD: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kd",
        abstract: "Knowledge distillation of Hugging Face Qwen3 models into LoRA students, on CPU.",
        version: "0.1.0",
        subcommands: [Init.self, Inspect.self, Forward.self, Plan.self, Tokenize.self, Detokenize.self, DataCommand.self]
    )
}
