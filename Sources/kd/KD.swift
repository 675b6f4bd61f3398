import ArgumentParser

@main
struct KD: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kd",
        abstract: "Knowledge distillation of Hugging Face Qwen3 models into LoRA students, on CPU.",
        version: "0.1.0",
        subcommands: [Init.self, Inspect.self, Forward.self, Plan.self, Tokenize.self, Detokenize.self, DataCommand.self,
                      Train.self, Export.self, Generate.self, Compare.self, Evaluate.self, Plot.self, ConfigCommand.self]
    )

    /// `--resume` may stand alone (meaning auto); the parser needs it spelled out.
    static func main() {
        var arguments = Array(CommandLine.arguments.dropFirst())
        if let index = arguments.firstIndex(of: "--resume"),
           index + 1 == arguments.count || arguments[index + 1].hasPrefix("-") {
            arguments.insert("auto", at: index + 1)
        }
        main(arguments)
    }
}
