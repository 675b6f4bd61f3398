import Foundation
import KDFuzzSupport

// kd-fuzz: the parsers of kd's input files as fuzz targets.
//
// Built normally it is a corpus replayer and in-process mutator (no libFuzzer needed):
//   kd-fuzz list
//   kd-fuzz seeds DIR                    seed corpora, one directory per target
//   kd-fuzz TARGET FILE|DIR...           runs each input once, says accepted or rejected
//   kd-fuzz TARGET --mutate N [SEED]     N deterministic mutants of the target's seeds
// Built with -DFUZZING and the fuzzer sanitizer (Scripts/fuzz.sh) it is a libFuzzer binary:
//   kd-fuzz TARGET [libFuzzer flags and corpus directories]
// The target may also come from KD_FUZZ_TARGET (libFuzzer's child processes inherit it).

enum Command {
    static func fail(_ message: String) -> Never {
        FileHandle.standardError.write(Data("kd-fuzz: error: \(message)\n".utf8))
        exit(2)
    }

    static let usage = "usage: kd-fuzz list | seeds DIR | TARGET (FILE|DIR)... | TARGET --mutate N [SEED]; targets: "
        + FuzzTarget.allCases.map(\.rawValue).joined(separator: ", ")

    static func writeSeeds(into directory: String) {
        for target in FuzzTarget.allCases {
            let folder = (directory as NSString).appendingPathComponent(target.rawValue)
            do {
                try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
            } catch {
                fail("\(folder): cannot create directory")
            }
            let seeds = FuzzSeeds.seeds(for: target, small: true)  // libFuzzer's max_len follows the largest
            for (k, seed) in seeds.enumerated() {
                let path = (folder as NSString).appendingPathComponent(String(format: "seed-%03d", k))
                guard FileManager.default.createFile(atPath: path, contents: Data(seed)) else { fail("\(path): cannot write") }
            }
            // A libFuzzer dictionary: boundary numbers and tokens, and every JSON key of the seeds.
            let tokens = Mutator.interestingTokens + Mutator(seed: 0, corpus: seeds).keys.map { "\"\($0)\"" }
            let dictionary = tokens.map { token in
                "\"" + token.utf8.map { byte in
                    byte == 0x22 || byte == 0x5C || byte < 0x20 || byte >= 0x7F ? String(format: "\\x%02X", byte) : String(UnicodeScalar(byte))
                }.joined() + "\""
            }.joined(separator: "\n") + "\n"
            let dictionaryPath = folder + ".dict"
            guard FileManager.default.createFile(atPath: dictionaryPath, contents: Data(dictionary.utf8)) else {
                fail("\(dictionaryPath): cannot write")
            }
            print("\(target.rawValue): \(seeds.count) seeds in \(folder), dictionary \(dictionaryPath)")
        }
    }

    /// Input files: the arguments, with directories expanded (sorted).
    static func inputs(_ arguments: [String]) -> [String] {
        arguments.flatMap { path -> [String] in
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else { fail("\(path): no such file") }
            guard isDirectory.boolValue else { return [path] }
            let names = ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted()
            return names.map { (path as NSString).appendingPathComponent($0) }
        }
    }

    static func replay(_ target: FuzzTarget, _ arguments: [String]) {
        for path in inputs(arguments) {
            guard let data = FileManager.default.contents(atPath: path) else { fail("\(path): cannot read") }
            switch target.run(data) {
            case .accepted: print("\(path): accepted")
            case .rejected(let error): print("\(path): rejected: \(error)")
            }
        }
    }

    static func mutate(_ target: FuzzTarget, _ arguments: [String]) {
        guard let count = arguments.first.flatMap({ Int($0) }), count >= 0 else { fail(usage) }
        let seed = arguments.dropFirst().first.flatMap { UInt64($0) } ?? 1
        let run = MutationRun(target: target, seeds: FuzzSeeds.seeds(for: target))
        guard !run.seeds.isEmpty else { fail("\(target.rawValue): no seeds under \(FuzzEnvironment.repositoryRoot)") }
        // On stderr, unbuffered: it must be out before a crash.
        FileHandle.standardError.write(Data("\(target.rawValue): mutants are written to \(run.lastInputPath) before they run\n".utf8))
        let summary = run.run(mutants: count, seed: seed)
        print(summary)
        if let path = ProcessInfo.processInfo.environment["KD_FUZZ_SLOWEST"] {
            _ = FileManager.default.createFile(atPath: path, contents: Data(summary.slowestInput))
        }
    }

    static func target(_ name: String) -> FuzzTarget {
        guard let target = FuzzTarget(rawValue: name) else { fail("unknown target '\(name)'; \(usage)") }
        return target
    }
}

#if FUZZING

/// libFuzzer's entry for a custom main (SwiftPM links executables with `main` aliased to
/// `kd_fuzz_main`, so libFuzzer's own main cannot be used).
@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt
) -> CInt

let selectedTarget: FuzzTarget = {
    guard let name = ProcessInfo.processInfo.environment["KD_FUZZ_TARGET"] else { Command.fail(Command.usage) }
    return Command.target(name)
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTestOneInput(_ bytes: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    let data = bytes.map { Data(bytes: $0, count: count) } ?? Data()
    _ = selectedTarget.run(data)
    return 0
}

@_cdecl("kd_fuzz_main")
func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    let arguments = CommandLine.arguments
    if arguments.count >= 2 {
        switch arguments[1] {
        case "list":
            FuzzTarget.allCases.forEach { print($0.rawValue) }
            return 0
        case "seeds":
            guard arguments.count == 3 else { Command.fail(Command.usage) }
            Command.writeSeeds(into: arguments[2])
            return 0
        case let name where FuzzTarget(rawValue: name) != nil:
            setenv("KD_FUZZ_TARGET", name, 1)
        default:
            break
        }
    }
    if selectedTarget == .jsonl { _ = FuzzEnvironment.qwen3 }  // loaded once, before the clock starts
    // libFuzzer sees the arguments without the target name.
    var rest: [UnsafeMutablePointer<CChar>?] = [argv?[0]]
    let skip = arguments.count >= 2 && FuzzTarget(rawValue: arguments[1]) != nil ? 2 : 1
    for k in skip..<Int(argc) { rest.append(argv?[k]) }
    rest.append(nil)
    var count = CInt(rest.count - 1)
    return rest.withUnsafeMutableBufferPointer { buffer in
        var pointer = buffer.baseAddress
        return LLVMFuzzerRunDriver(&count, &pointer, fuzzTestOneInput)
    }
}

#else

@main
struct KDFuzz {
    static func main() {
        let arguments = Array(CommandLine.arguments.dropFirst())
        guard let first = arguments.first else { Command.fail(Command.usage) }
        switch first {
        case "list": FuzzTarget.allCases.forEach { print($0.rawValue) }
        case "seeds":
            guard arguments.count == 2 else { Command.fail(Command.usage) }
            Command.writeSeeds(into: arguments[1])
        case "-h", "--help", "help": print(Command.usage)
        default:
            let target = Command.target(first)
            let rest = Array(arguments.dropFirst())
            if rest.first == "--mutate" { Command.mutate(target, Array(rest.dropFirst())) } else { Command.replay(target, rest) }
        }
        FuzzEnvironment.removeScratch()
    }
}

#endif
