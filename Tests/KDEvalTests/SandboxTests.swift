import Foundation
import Testing
@testable import KDEval

/// The HumanEval sandbox: passing and failing programs, and what must never harm the host.
@Suite(.serialized) struct SandboxTests {
    static let sandbox: Sandbox = {
        var limits = Sandbox.Limits()
        limits.wallSeconds = 3
        limits.cpuSeconds = 3
        return try! Sandbox.make(limits: limits)
    }()

    @Test func passesAndFails() {
        #expect(Self.sandbox.run("def f(x):\n    return x + 1\nassert f(1) == 2\n") == .passed)
        guard case .failed(let why) = Self.sandbox.run("assert 1 == 2\n") else {
            Issue.record("a failing assertion must fail")
            return
        }
        #expect(why.contains("AssertionError"))
        print("sandbox isolation: \(Self.sandbox.isolation)")
    }

    @Test func infiniteLoopIsKilledAtTheTimeout() {
        let start = ContinuousClock.now
        let outcome = Self.sandbox.run("while True:\n    pass\n")
        #expect(outcome == .timedOut || outcome != .passed)
        #expect(ContinuousClock.now - start < .seconds(6))
    }

    @Test func forkBombIsContained() throws {
        let start = ContinuousClock.now
        let outcome = Self.sandbox.run("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n")
        #expect(outcome != .passed)
        #expect(ContinuousClock.now - start < .seconds(6))
        // Nothing it started is left running.
        usleep(200_000)
        #expect(Self.leftovers() == 0)
    }

    @Test func memoryAndOutputFloodsFail() {
        #expect(Self.sandbox.run("x = bytearray(4 * 1024 ** 3)\n") != .passed)
        #expect(Self.sandbox.run("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n") != .passed)
    }

    @Test func networkIsUnreachableWhenIsolated() {
        guard Self.sandbox.isolation.hasPrefix("no network") else { return }
        let program = "import socket\ns = socket.socket()\ns.settimeout(1)\ns.connect(('1.1.1.1', 80))\n"
        #expect(Self.sandbox.run(program) != .passed)
    }

    /// Python processes started from a sandbox directory that are still alive.
    static func leftovers() -> Int {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.filter { Int($0) != nil }.filter { pid in
            let cmdline = (try? Data(contentsOf: URL(fileURLWithPath: "/proc/\(pid)/cmdline"))) ?? Data()
            return String(decoding: cmdline, as: UTF8.self).contains("program.py")
        }.count
    }
}
