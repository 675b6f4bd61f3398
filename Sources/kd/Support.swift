import ArgumentParser
import Foundation
import KDCore
import KDModels

/// A kd subcommand: its work in `execute()`, with every failure reported as one line on stderr
/// and a non-zero exit code (never a trap or a stack trace). In an MPI job of several ranks, a
/// failure on any rank ends every rank (MPI_Abort), and only commands that run across ranks start.
protocol KDCommand: ParsableCommand {
    func execute() throws
    /// Whether the command runs as the ranks of an MPI job (else it refuses to start in one).
    static var runsAcrossRanks: Bool { get }
}

extension KDCommand {
    static var runsAcrossRanks: Bool { false }

    mutating func run() throws {
        do {
            let world = Communicator.world
            if world.size > 1 && !Self.runsAcrossRanks {
                throw KDError("kd \(Self._commandName) runs in one process, not as \(world.size) MPI ranks (only kd train runs across ranks)")
            }
            try execute()
        } catch let error as ExitCode {
            throw error
        } catch {
            Console.error(Self.describe(error))
            if Communicator.world.size > 1 { Communicator.world.abort(code: 1) }
            throw ExitCode(1)
        }
    }

    static func describe(_ error: Error) -> String {
        switch error {
        case let error as KDError: error.message
        case let error as DecodingError: String(describing: error).split(separator: "\n").joined(separator: " ")
        default: error.localizedDescription.split(separator: "\n").joined(separator: " ")
        }
    }
}

/// Human output goes to stderr; machine output (JSON) to stdout. In an MPI job, rank 0 prints
/// both, and every rank its errors, with its rank and host. A write that fails is dropped: output
/// that nobody reads any more (mpirun stopping the job) must not end the run before it stops in order.
enum Console {
    /// One line, always: control characters are escaped and a message longer than a screenful
    /// is cut, whatever input it echoes.
    static func error(_ message: String) {
        let rank = Communicator.world.label.map { "\($0): " } ?? ""
        _ = writeAll(STDERR_FILENO, Data("kd: error: \(rank)\(oneLine(message))\n".utf8))
    }

    /// Whether this process prints its human and machine output: rank 0 until a run decides
    /// otherwise (the rank that writes the run's files).
    nonisolated(unsafe) static var speaks = Communicator.world.rank == 0

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
        guard speaks else { return }
        _ = writeAll(STDERR_FILENO, Data("\(message)\n".utf8))
    }

    /// One JSON object per line on stdout, keys sorted.
    static func json(_ object: Any, pretty: Bool = false) {
        guard speaks else { return }
        var options: JSONSerialization.WritingOptions = [.sortedKeys, .withoutEscapingSlashes]
        if pretty { options.insert(.prettyPrinted) }
        let data = (try? JSONSerialization.data(withJSONObject: object, options: options)) ?? Data("{}".utf8)
        _ = writeAll(STDOUT_FILENO, data + Data("\n".utf8))
    }

    /// Whether the output is read by a person. Open MPI gives its ranks a pseudo-terminal whatever
    /// mpirun's own output is, so a rank counts as writing to a pipe (metrics lines on stdout, plain
    /// progress lines on stderr), which suits `mpirun ... | jq` and a log file alike.
    static var stdoutIsTerminal: Bool { isatty(STDOUT_FILENO) != 0 && !Communicator.launchedByMPI }
    static var stderrIsTerminal: Bool { isatty(STDERR_FILENO) != 0 && !Communicator.launchedByMPI }
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
