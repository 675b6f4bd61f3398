import ArgumentParser
import Foundation
import KDCore
import KDModels

struct Export: KDCommand {
    static let configuration = CommandConfiguration(
        abstract: "Merge a PEFT LoRA adapter into its base model (W + s·B·A), in the base's layout and dtypes.")

    @Option(help: "Base model directory.") var model: String
    @Option(help: "PEFT adapter directory (adapter_config.json + adapter_model.safetensors).") var adapter: String
    @Option(help: "Directory to write (must not exist unless --force).") var output: String
    @Flag(help: "Replace --output if it exists.") var force = false

    func execute() throws {
        let checkpoint = try Checkpoint(directory: model)
        try checkpoint.validate()
        let device = Device(id: 0)
        let (settings, matrices) = try PEFTAdapter.tensors(directory: adapter, spec: checkpoint.spec) { _ in device }
        let start = ContinuousClock.now
        try Merge.write(base: checkpoint, adapters: matrices, scale: settings.scale, to: output, replace: force)
        Console.info(String(format: "wrote %@: %d linear layers merged (r %d, scale %.3g) in %.1f s", output,
                            matrices.count, settings.r, settings.scale, (ContinuousClock.now - start).seconds))
    }
}
