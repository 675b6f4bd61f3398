import ArgumentParser
import Foundation
import KDCore
import KDModels
import KDTrain

/// The signal that asked a run to stop (0 = none). Set from a signal handler, so a plain global.
nonisolated(unsafe) var requestedStop: Int32 = 0

struct Train: KDCommand {
    static let configuration = CommandConfiguration(
        abstract: "Distill the teacher into a LoRA student.",
        discussion: """
            Writes <output_dir>/metrics.jsonl, checkpoint-<step>/ and final_model/. Metrics lines also go to stdout \
            with --json or when stdout is not a terminal; a terminal gets a progress bar on stderr. --resume (alone: \
            auto) continues from the newest complete checkpoint, or from DIR, bit-identically. SIGINT/SIGTERM \
            (and SIGUSR1, which mpirun passes on to every rank) finish the current step, write a checkpoint and exit \
            128 + the signal (130/143/138). A run owns its output_dir while it \
            lives (a lock on <output_dir>/.kd-lock, which holds its pid): a second run there is refused. Under \
            mpirun or srun with run.data_parallel N, the N ranks are replicas that share every batch; rank 0 writes and \
            prints, and an error on any rank ends them all.
            """)

    static var runsAcrossRanks: Bool { true }

    @Option(help: "Run config YAML (- for stdin).") var config: String
    @Option(name: .customLong("set"), help: "Override a key: key.path=value (repeatable).") var overrides: [String] = []
    @Option(help: "Resume: auto (newest checkpoint in output_dir) or a checkpoint directory.") var resume: String?
    @Flag(help: "Metrics lines on stdout even on a terminal.") var json = false
    @Flag(name: .customLong("save-gradients"), help: "Also write each step's pre-clip LoRA gradients to output_dir/gradients/.")
    var saveGradients = false

    func execute() throws {
        let run = try RunConfig.load(path: config, overrides: overrides)
        let layout = try RankLayout(config: run)
        Console.speaks = layout.writes
        if !layout.holdsStudent {
            // A rank that holds the student's first stages, or only a teacher, serves its student's
            // rank until that rank lets it go: a stop asked of every rank (a signal to each, or
            // SIGUSR1 to mpirun, which passes it on to all) is the student's rank's to carry out.
            for stop in Self.stopSignals { signal(stop, SIG_IGN) }
            if layout.holdsStudentPart {
                try StudentStages.serve(config: run, layout: layout) { Console.info($0) }
            } else {
                try RemoteTeacher.serve(config: run, layout: layout) { Console.info($0) }
            }
            return
        }
        let resumeMode: TrainingRun.Resume? = resume.map { $0 == "auto" ? .auto : .directory($0) }
        let training = try TrainingRun(config: run, resume: resumeMode, layout: layout) { Console.info($0) }
        if let from = training.resumedFrom { Console.info("resuming from \(from) at step \(training.trainer.step)") }
        if saveGradients && Console.speaks {
            let directory = (run.run.outputDir as NSString).appendingPathComponent("gradients")
            try reportingWrites(to: directory) {
                try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            }
            training.gradientSink = { step, gradients in
                let path = (directory as NSString).appendingPathComponent("step-\(step).safetensors")
                try reportingWrites(to: path) {
                    let writer = try SafetensorsWriter(
                        path: path, entries: gradients.map { .init(name: $0.name, dtype: .f32, shape: $0.tensor.shape) })
                    do {
                        for (_, tensor) in gradients { try writer.write(tensor) }
                        try writer.finish()
                    } catch {
                        writer.discard()
                        throw error
                    }
                }
            }
        }
        installStopHandlers()
        let toStdout = json || !Console.stdoutIsTerminal
        let progress = Progress(total: run.train.maxSteps, start: training.trainer.step, terminal: Console.stderrIsTerminal && Console.speaks,
                                divergence: run.distill.loss == .forwardKL ? nil : run.distill.loss.rawValue)
        let outcome = try training.run(
            onStep: { metrics in
                if toStdout { Console.json(metrics.json) }
                progress.show(metrics)
            },
            stopRequested: { requestedStop == 0 ? nil : requestedStop })
        progress.finish()
        defer { try? training.trainer.models.releaseRanks() }
        switch outcome {
        case .finished:
            Console.info("done: \(run.run.outputDir)/final_model")
            if let (base, distilled) = try training.evaluate() {
                Console.info(Evaluation.table(base: base, adapted: distilled,
                                              title: "held-out (\(run.data.eval!), \(distilled.tokens) scored tokens):"))
            }
        case .stopped(let signal, let checkpoint):
            Console.info("stopped at step \(training.trainer.step) by signal \(signal); checkpoint \(checkpoint); "
                + "resume with: kd train --config \(config) --resume")
            throw ExitCode(128 + signal)
        }
    }

    /// The signals that stop a run in order: SIGINT and SIGTERM, and SIGUSR1, the one Open MPI's
    /// mpirun passes on to every rank (it answers SIGTERM by killing the job a few seconds later).
    static let stopSignals = [SIGINT, SIGTERM, SIGUSR1]

    func installStopHandlers() {
        // A parent may have started kd with these signals blocked (the mask is inherited).
        var unblock = sigset_t()
        sigemptyset(&unblock)
        for stop in Self.stopSignals { sigaddset(&unblock, stop) }
        pthread_sigmask(SIG_UNBLOCK, &unblock, nil)
        for signalNumber in Self.stopSignals {
            signal(signalNumber) { received in
                // A second signal does not wait for the step to finish.
                if requestedStop != 0 { _exit(128 + received) }
                requestedStop = received
                let note = "\nkd: stopping after this step and writing a checkpoint (signal again to abort)\n"
                _ = note.withCString { write(STDERR_FILENO, $0, strlen($0)) }
            }
        }
    }
}

/// A one-line progress bar with ETA on a terminal; a plain line per logged step otherwise. With a
/// divergence other than the forward KL, its value follows `kl` under its own name.
final class Progress {
    let total: Int
    let terminal: Bool
    let started = ContinuousClock.now
    let firstStep: Int
    let divergence: String?

    init(total: Int, start: Int, terminal: Bool, divergence: String?) {
        self.total = total
        self.terminal = terminal
        self.firstStep = start
        self.divergence = divergence
    }

    func show(_ m: StepMetrics) {
        let done = m.step - firstStep
        let perStep = (ContinuousClock.now - started).seconds / Double(max(1, done))
        let eta = Int(perStep * Double(total - m.step))
        let chosen = divergence.map { "  \($0) " + String(format: "%.4f", m.divergence) } ?? ""
        let text = String(format: "step %d/%d  loss %.4f  kl %.4f", m.step, total, m.loss, m.klLoss) + chosen
            + String(format: "  ce %.4f  |g| %.3f  lr %.2e  %.0f tok/s  ETA %d:%02d", m.ceLoss, m.gradNorm, m.lr,
                     m.tokensPerSecond, eta / 60, eta % 60)
        if terminal {
            let width = 20
            let filled = total > 0 ? width * m.step / total : width
            let bar = String(repeating: "█", count: filled) + String(repeating: "·", count: width - filled)
            FileHandle.standardError.write(Data("\r\u{1B}[2K[\(bar)] \(text)".utf8))
        } else {
            Console.info(text)
        }
    }

    func finish() {
        if terminal { FileHandle.standardError.write(Data("\n".utf8)) }
    }
}
