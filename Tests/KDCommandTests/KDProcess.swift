import Foundation

/// Runs the `kd` binary that `swift build` put beside the test bundle.
struct KDProcess {
    struct Result {
        let status: Int32
        let stdout: String
        let stderr: String
    }

    static let binary = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        .appendingPathComponent("kd").path

    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Fixtures").path

    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().path

    /// Open MPI's launcher, and what the tests give it: as many ranks as asked on this host's cores
    /// (`--oversubscribe`), permission to run as root (CI runs as root), and shared memory without
    /// the ptrace-based single copy that containers often forbid.
    static let mpirun = "/usr/bin/mpirun"
    static func launch(ranks: Int, _ arguments: [String]) -> (executable: String, arguments: [String], environment: [String: String]) {
        let environment = ProcessInfo.processInfo.environment.merging(
            ["OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
             "OMPI_MCA_btl_vader_single_copy_mechanism": "none"]) { _, new in new }
        return (mpirun, ["-n", "\(ranks)", "--oversubscribe", binary] + arguments, environment)
    }

    /// Starts `ranks` copies of kd under mpirun and returns at once; stdout is dropped, stderr goes
    /// to `stderr` (dropped without one). mpirun gets the signals it passes on to its ranks
    /// unblocked, as from a shell (the test runner's threads may block them, and a child inherits
    /// the mask of the thread that starts it).
    static func start(_ arguments: [String], ranks: Int, stderr: Pipe? = nil) throws -> Process {
        var forwarded = sigset_t()
        sigemptyset(&forwarded)
        sigaddset(&forwarded, SIGUSR1)
        sigaddset(&forwarded, SIGUSR2)
        pthread_sigmask(SIG_UNBLOCK, &forwarded, nil)
        let launch = launch(ranks: ranks, arguments)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: launch.executable)
        process.arguments = launch.arguments
        process.environment = launch.environment
        process.standardOutput = FileHandle.nullDevice
        process.standardError = stderr ?? FileHandle.nullDevice
        try process.run()
        return process
    }

    /// Runs kd, or `ranks` copies of it under mpirun.
    @discardableResult
    static func run(_ arguments: [String], stdin: String? = nil, directory: String? = nil, ranks: Int? = nil) throws -> Result {
        let process = Process()
        if let ranks {
            let launch = launch(ranks: ranks, arguments)
            process.executableURL = URL(fileURLWithPath: launch.executable)
            process.arguments = launch.arguments
            process.environment = launch.environment
        } else {
            process.executableURL = URL(fileURLWithPath: binary)
            process.arguments = arguments
        }
        if let directory { process.currentDirectoryURL = URL(fileURLWithPath: directory) }
        let out = Pipe(), err = Pipe(), input = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = input
        try process.run()
        if let stdin { input.fileHandleForWriting.write(Data(stdin.utf8)) }
        try input.fileHandleForWriting.close()
        // Read both pipes to the end before waiting, so a large output cannot block the child.
        let stderrData = Collected()
        let group = DispatchGroup()
        group.enter()
        DispatchQueue.global().async {
            stderrData.bytes = err.fileHandleForReading.readDataToEndOfFile()
            group.leave()
        }
        let stdoutData = out.fileHandleForReading.readDataToEndOfFile()
        group.wait()
        process.waitUntilExit()
        return Result(status: process.terminationStatus, stdout: String(decoding: stdoutData, as: UTF8.self),
                      stderr: String(decoding: stderrData.bytes, as: UTF8.self))
    }

    /// Bytes one thread reads while another waits on a DispatchGroup (which orders the accesses).
    private final class Collected: @unchecked Sendable { var bytes = Data() }

    static func temporaryDirectory() -> String {
        let path = (NSTemporaryDirectory() as NSString).appendingPathComponent("kd-cli-\(UUID().uuidString)")
        try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    static func json(_ text: String) -> [String: Any] {
        (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any] ?? [:]
    }
}
