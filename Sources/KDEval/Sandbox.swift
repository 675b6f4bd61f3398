import Foundation
import KDCore

/// Runs untrusted Python (a generated HumanEval completion with its tests) in a separate process
/// with limits: a private temporary directory, CPU time, memory, processes, file size and open
/// files, a wall-clock timeout, and, where the system permits, no network and a PID namespace
/// whose processes all die with it (as an unprivileged user when kd runs as root). A hang, a
/// crash, a fork bomb or runaway output counts as a failure and never outlives the run.
public struct Sandbox: Sendable {
    public struct Limits: Sendable {
        public var wallSeconds: Double = 10
        public var cpuSeconds = 10
        public var memoryBytes = 1 << 30
        public var processes = 64
        public var outputBytes = 1 << 20
        public var openFiles = 64

        public init() {}
    }

    public enum Outcome: Equatable, Sendable {
        case passed
        case failed(String)
        case timedOut

        public var passed: Bool { self == .passed }
    }

    public let python: String
    public let limits: Limits
    /// The command that wraps the interpreter, chosen by what this system allows.
    let wrapper: [String]
    /// What isolation applies, for reports: e.g. "network, pid namespace, uid 65534".
    public let isolation: String
    let dropsPrivileges: Bool

    /// Finds an interpreter and the strongest isolation that works here.
    public static func make(limits: Limits = Limits()) throws -> Sandbox {
        let fm = FileManager.default
        guard fm.isExecutableFile(atPath: "/usr/bin/prlimit") else {
            throw KDError("HumanEval scoring needs /usr/bin/prlimit (util-linux) to limit the tests it runs")
        }
        let isRoot = geteuid() == 0
        // When dropping to an unprivileged user, the interpreter must be outside /root.
        let candidates = ["/usr/bin/python3", "/usr/local/bin/python3"]
        let searched = (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":")
            .map { "\($0)/python3" }
        guard let python = (candidates + searched).first(where: { fm.isExecutableFile(atPath: $0) }) else {
            throw KDError("HumanEval scoring needs python3 on this machine")
        }
        let unshare = ["/usr/bin/unshare", "--net", "--pid", "--fork", "--kill-child"]
        let attempts: [(wrapper: [String], isolation: String, drops: Bool)] = isRoot
            ? [(unshare + ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"],
                "no network, own pid namespace, uid 65534", true),
               (unshare + ["--"], "no network, own pid namespace", false),
               // Without namespaces, an unprivileged uid at least makes the process limit apply.
               (["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"], "uid 65534", true)]
            : [(["/usr/bin/unshare", "--user", "--map-root-user", "--net", "--pid", "--fork", "--kill-child", "--"],
                "no network, own pid namespace (user namespace)", false)]
        for attempt in attempts where fm.isExecutableFile(atPath: attempt.wrapper[0]) {
            let probe = Sandbox(python: python, limits: limits, wrapper: attempt.wrapper, isolation: attempt.isolation,
                                dropsPrivileges: attempt.drops)
            if probe.run("print('ok')") == .passed { return probe }
        }
        return Sandbox(python: python, limits: limits, wrapper: [], isolation: "process limits only", dropsPrivileges: false)
    }

    /// Runs `program` and reports whether it exited cleanly within the limits.
    public func run(_ program: String) -> Outcome {
        var template = Array((NSTemporaryDirectory() as NSString).appendingPathComponent("kd-sandbox-XXXXXX").utf8CString)
        guard let made = mkdtemp(&template) else { return .failed("cannot create a temporary directory") }
        let directory = String(cString: made)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let file = (directory as NSString).appendingPathComponent("program.py")
        guard FileManager.default.createFile(atPath: file, contents: Data(program.utf8)) else {
            return .failed("cannot write the program")
        }
        if dropsPrivileges {
            chown(directory, 65534, 65534)
            chown(file, 65534, 65534)
        }
        // prlimit sets the limits before the interpreter (and any privilege drop) starts; they are
        // inherited by everything it runs.
        let prlimit = ["/usr/bin/prlimit", "--cpu=\(limits.cpuSeconds)", "--as=\(limits.memoryBytes)",
                       "--fsize=\(limits.outputBytes)", "--nofile=\(limits.openFiles)", "--nproc=\(limits.processes)", "--"]
        let command = (prlimit + wrapper + [python, "-I", "-B", "program.py"]).map { "'\($0)'" }.joined(separator: " ")
        let script = "cd '\(directory)' && exec \(command) < /dev/null > out.txt 2> err.txt"
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        // Its own process group, so that everything it starts can be killed at once.
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETPGROUP))
        posix_spawnattr_setpgroup(&attributes, 0)
        var pid: pid_t = 0
        let words: [String] = ["/bin/sh", "-c", script]
        let argv: [UnsafeMutablePointer<CChar>?] = words.map { word in word.withCString { strdup($0) } } + [nil]
        defer { argv.forEach { free($0) } }
        guard posix_spawn(&pid, "/bin/sh", nil, &attributes, argv, environ) == 0 else {
            return .failed("cannot start /bin/sh")
        }
        let deadline = ContinuousClock.now + .milliseconds(Int(limits.wallSeconds * 1000))
        var status: Int32 = 0
        var finished = false
        while ContinuousClock.now < deadline {
            if waitpid(pid, &status, WNOHANG) == pid {
                finished = true
                break
            }
            usleep(5_000)
        }
        // The whole group goes, finished or not: children left behind are killed too (and with
        // the pid namespace, even those that left the group).
        kill(-pid, SIGKILL)
        if !finished { waitpid(pid, &status, 0) }
        guard finished else { return .timedOut }
        let exited = status & 0x7F == 0
        let code = (status >> 8) & 0xFF
        if exited && code == 0 { return .passed }
        let errors = (try? String(contentsOfFile: (directory as NSString).appendingPathComponent("err.txt"), encoding: .utf8)) ?? ""
        let last = errors.split(separator: "\n").last.map(String.init) ?? ""
        return .failed(exited ? "exit code \(code)\(last.isEmpty ? "" : ": " + last)" : "killed by signal \(status & 0x7F)")
    }
}
