import ArgumentParser
import Foundation
import KDCore
import KDTrain

struct ConfigCommand: KDCommand {
    static let configuration = CommandConfiguration(
        commandName: "config",
        abstract: "Show the run-config keys with their defaults (--docs), or a config's effective values.",
        discussion: "With --config: every key's effective value as JSON, or one value with --get key.path.")

    @Option(help: "Run config YAML (- for stdin).") var config: String?
    @Option(name: .customLong("set"), help: "Override a key: key.path=value (repeatable).") var overrides: [String] = []
    @Option(help: "Print only this key's value.") var get: String?
    @Flag(help: "List every key with its default and meaning.") var docs = false

    func execute() throws {
        if docs || config == nil {
            let defaults = RunConfig()
            for field in RunConfig.fields {
                FileHandle.standardOutput.write(Data("\(field.key) = \(render(field.jsonValue(in: defaults)))\n    \(field.documentation)\n".utf8))
            }
            return
        }
        let run = try RunConfig.load(path: config!, overrides: overrides)
        let values = Dictionary(uniqueKeysWithValues: run.effectiveValues.map { ($0.key, $0.value) })
        if let get {
            guard let value = values[get] else { throw KDError("unknown key '\(get)'") }
            FileHandle.standardOutput.write(Data((render(value) + "\n").utf8))
        } else {
            Console.json(values)
        }
    }

    func render(_ value: Any) -> String {
        if value is NSNull { return "null" }
        if let text = value as? String { return text }
        if let data = try? JSONSerialization.data(withJSONObject: value, options: [.fragmentsAllowed, .withoutEscapingSlashes]) {
            return String(decoding: data, as: UTF8.self)
        }
        return "\(value)"
    }
}
