import ArgumentParser
import Foundation
import KDCore

@main
struct KD: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kd",
        abstract: "Knowledge distillation of Hugging Face Qwen3 models into LoRA students, on CPU.",
        version: "0.1.0",
        subcommands: [Init.self, Inspect.self, Forward.self, Plan.self, Tokenize.self, Detokenize.self, DataCommand.self,
                      Train.self, TeacherCacheCommand.self, Export.self, Generate.self, Compare.self, Evaluate.self, Plot.self, ConfigCommand.self]
    )

    static func main() {
        // A file-size limit (ulimit -f) makes a write fail with EFBIG, reported like any other
        // write error, instead of killing the process half-way through a file.
        signal(SIGXFSZ, SIG_IGN)
        // mpirun forwards SIGINT/SIGTERM to its ranks and then closes the pseudo-terminals it gave
        // them for output: a rank must live on (without SIGHUP, and with writes that fail instead of
        // SIGPIPE) to finish its step and let rank 0 write the checkpoint.
        if Communicator.launchedByMPI {
            signal(SIGHUP, SIG_IGN)
            signal(SIGPIPE, SIG_IGN)
        }
        // `--resume` may stand alone (meaning auto); the parser needs it spelled out.
        var arguments = Array(CommandLine.arguments.dropFirst())
        if let index = arguments.firstIndex(of: "--resume"),
           index + 1 == arguments.count || arguments[index + 1].hasPrefix("-") {
            arguments.insert("auto", at: index + 1)
        }
        // A negative number after an option is its value (`--temperature -1`), not another option.
        var index = 0
        while index + 1 < arguments.count {
            let option = arguments[index], value = arguments[index + 1]
            if option.hasPrefix("--"), !option.contains("="), value.hasPrefix("-"), Double(value) != nil {
                arguments[index ... index + 1] = [option + "=" + value]
            }
            index += 1
        }
        do {
            // Under mpirun or srun, this process is one rank of a job (alone: nothing happens).
            try Communicator.start()
        } catch {
            Console.error((error as? KDError)?.message ?? "\(error)")
            Foundation.exit(1)
        }
        do {
            var command = try parseAsRoot(arguments)
            try command.run()
            Communicator.finish()
        } catch {
            let code = exitCode(for: error)
            // --help and --version print their text; errors that already printed theirs just exit
            // (a failed rank has already ended the job; a stopped run leaves it in order).
            if code == .success || error is ExitCode {
                Communicator.finish()
                exit(withError: error)
            }
            // Usage errors: one line (the first of the parser's message), not the usage screen.
            let message = message(for: error).split(separator: "\n").first.map(String.init) ?? "invalid arguments"
            let subcommand = arguments.first.flatMap { name in configuration.subcommands.contains { $0._commandName == name } ? name + " " : nil }
            Console.error((message.hasPrefix("Error: ") ? String(message.dropFirst("Error: ".count)) : message)
                + " (see kd \(subcommand ?? "")--help)")
            Communicator.world.abort(code: code.rawValue)
        }
    }
}
