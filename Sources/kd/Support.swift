import ArgumentParser
import Foundation
import KDCore
import KDModels

/// A kd subcommand: its work in `execute()`, with every failure reported as one line on stderr
/// and a non-zero exit code (never a trap or a stack trace).
protocol KDCommand: ParsableCommand {
    func execute() throws
}

extension KDCommand {
    mutating func run() throws {
        do {
            try execute()
        } catch let error as KDError {
            Console.error(error.message)
            throw ExitCode(1)
        } catch let error as ExitCode {
            throw error
        } catch let error as DecodingError {
            Console.error(String(describing: error).split(separator: "\n").joined(separator: " "))
            throw ExitCode(1)
        } catch {
            Console.error(error.localizedDescription.split(separator: "\n").joined(separator: " "))
            throw ExitCode(1)
        }
    }
}

/// Human output goes to stderr; machine output (JSON) to stdout.
enum Console {
    /// One line, always: control characters are escaped and a message longer than a screenful
    /// is cut, whatever input it echoes.
    static func error(_ message: String) {
        FileHandle.standardError.write(Data("kd: error: \(oneLine(message))\n".utf8))
    }

    static func oneLine(_ message: String, limit: Int = 1000) -> String {
        var out = ""
        var count = 0
        for scalar in message.unicodeScalars {
            if count == limit {
                out += "… (cut)"
                break
            }
            count += 1
            if scalar.value < 0x20 || scalar.value == 0x7F || scalar == "\u{2028}" || scalar == "\u{2029}" {
                out += scalar == "\n" ? "\\n" : "\\u{\(String(scalar.value, radix: 16))}"
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
        return out
    }

    static func info(_ message: String) {
        FileHandle.standardError.write(Data("\(message)\n".utf8))
    }

    /// One JSON object per line on stdout, keys sorted.
    static func json(_ object: Any, pretty: Bool = false) {
        var options: JSONSerialization.WritingOptions = [.sortedKeys, .withoutEscapingSlashes]
        if pretty { options.insert(.prettyPrinted) }
        let data = (try? JSONSerialization.data(withJSONObject: object, options: options)) ?? Data("{}".utf8)
        FileHandle.standardOutput.write(data + Data("\n".utf8))
    }

    static var stdoutIsTerminal: Bool { isatty(STDOUT_FILENO) != 0 }
    static var stderrIsTerminal: Bool { isatty(STDERR_FILENO) != 0 }
}

/// Peak resident memory of this process, in bytes.
func peakResidentBytes() -> Int {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return usage.ru_maxrss * 1024
}

/// Parses "0,1,2" into device ids.
func parseDeviceList(_ text: String) throws -> [Int] {
    let ids = text.split(separator: ",").map { Int($0.trimmingCharacters(in: .whitespaces)) }
    guard !ids.isEmpty, ids.allSatisfy({ $0 != nil && $0! >= 0 }) else {
        throw KDError("--devices '\(text)': expected comma-separated device ids such as 0,1,2")
    }
    let list = ids.map { $0! }
    guard Set(list).count == list.count else { throw KDError("--devices '\(text)' lists a device twice") }
    return list
}

/// A checkpoint's model placed on the devices of a `--devices` list, its weights held as `--dtype`
/// says, with `adapter` attached when given.
func loadModel(_ checkpoint: Checkpoint, devices: String, dtype: String, adapter: String?) throws -> CausalLM {
    let model = try CausalLM.load(checkpoint, on: try DeviceGroup(try parseDeviceList(devices).map { Device(id: $0) }),
                                  dtype: try WeightDType(parsing: dtype, what: "--dtype"))
    if let adapter { try PEFTAdapter.attach(directory: adapter, to: model) }
    return model
}

func setThreads(_ threads: Int?) throws {
    guard let threads else { return }
    guard threads >= 1 else { throw KDError("--threads must be at least 1") }
    BLAS.threads = threads
}

func grouped(_ n: Int) -> String {
    let digits = Array(String(n))
    var out = ""
    for (i, d) in digits.enumerated() {
        if i > 0 && (digits.count - i) % 3 == 0 { out.append(",") }
        out.append(d)
    }
    return out
}
