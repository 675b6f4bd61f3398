import Foundation
import KDCore
import KDModels
import KDText

/// The student's first stages when they run on ranks of their own (see `RankLayout`), as the
/// student's rank sees them: `CausalLM`'s upstream. Each part rank (`serve`) holds consecutive
/// stages (`ModelPart`) with their adapters, their gradients and their AdamW moments: activations
/// go forward part to part and on to the student's rank, d(activations) come back the same way,
/// and each part accumulates its adapters' gradients and steps its own optimizer. What the
/// student's rank needs of them crosses on request: each slot's Σg² for the global gradient norm
/// (added in slot order, so the norm is the one process's bits), and their adapters, moments or
/// gradients when a checkpoint is written. The kernels and their order are the in-process
/// student's, so a run with its student split gives the one process's numbers bit for bit.
///
/// Messages (one sender's messages with one tag arrive in order): from the student's rank to
/// every part a request of eight Int64 (`Request`, then its arguments), followed for `forward` by
/// the token ids (Int32) and the attention mask (UInt8) and for `start` by the checkpoint path to
/// resume from; between parts, and from the last part to the student's rank, the stages' output
/// (tokens × hidden f32, `activationTag`), and d(output) the other way (`gradientTag`); and from a
/// part to the student's rank the replies (`replyTag`).
public final class StudentStages: RemoteStages {
    static let requestTag = 21, activationTag = 22, gradientTag = 23, replyTag = 24

    enum Request: Int64 {
        case stop = 0, start, forward, backward, zeroGradients, squareSums, step, adapters, moments, gradients
    }

    /// What a part holds: one entry per adapter, in layer order (its slots: A, then B).
    struct Manifest: Codable {
        struct Entry: Codable {
            let name: String
            let rank: Int
            let inFeatures: Int
            let outFeatures: Int
            /// A PiSSA adapter, which also carries its initial A₀ and B₀.
            let pissa: Bool
        }
        let adapters: [Entry]
    }

    let communicator: Communicator
    /// The parts' ranks in `communicator`, in stage order, and each part's last device there (which
    /// sends its output and replies, and takes d(output)).
    let ranks: [Int]
    let devices: [Device]
    public var adaptersDetached = false
    let hidden: Int
    let settings: LoRASettings
    /// Whether training forwards may be requested ahead of their turn (`requestForward`): the parts then run the next
    /// micro-batches' forwards while this rank and they finish the current one's (GPipe), which
    /// needs activation checkpointing (a part sets aside only the layers' inputs).
    let pipelined: Bool
    private var manifests: [Manifest] = []
    /// Forwards requested ahead whose output has not been received (tokens, target device), and
    /// outputs received ahead; both in request order.
    private var requested: [(tokens: Int, device: Device, sends: [Communicator.PendingSend])] = []
    private var arrived: [Tensor] = []
    /// Tokens of the training forwards whose backward is still to come, in order.
    private var awaitingBackward: [Int] = []
    private let lock = NSLock()
    private var received = 0
    /// Bytes the parts have sent this rank.
    public var bytesReceived: Int { lock.withLock { received } }

    /// The student's first stages, on `ranks` of `communicator` (the stages on their devices).
    init(communicator: Communicator, ranks: [Int], devices: [Device], spec: ModelSpec, settings: LoRASettings, pipelined: Bool) {
        self.pipelined = pipelined
        self.communicator = communicator
        self.ranks = ranks
        self.devices = devices
        self.hidden = spec.hiddenSize
        self.settings = settings
    }


    private func request(_ kind: Request, _ arguments: [Int64] = []) throws {
        let header = [kind.rawValue] + arguments + [Int64](repeating: 0, count: 7 - arguments.count)
        for rank in ranks { try header.withUnsafeBytes { try communicator.send($0, to: rank, tag: Self.requestTag) } }
    }

    private func receive(into tensor: Tensor, from part: Device, tag: Int = replyTag) throws {
        try tensor.receive(from: part, tag: tag)
        lock.withLock { received += tensor.byteCount }
    }

    private func receive<T: FixedWidthInteger>(_ count: Int, _ type: T.Type, from rank: Int) throws -> [T] {
        let values = try communicator.receive(count, type, from: rank, tag: Self.replyTag)
        lock.withLock { received += count * MemoryLayout<T>.stride }
        return values
    }

    /// Starts the parts: each attaches its adapters as the student's rank does (from `resumeFrom`
    /// when given, restoring their moments too), and says what it holds.
    func start(resumeFrom: String?) throws {
        let path = Array((resumeFrom ?? "").utf8)
        try request(.start, [Int64(path.count)])
        for rank in ranks { try path.withUnsafeBytes { try communicator.send($0, to: rank, tag: Self.requestTag) } }
        manifests = try ranks.map { rank in
            let length = Int(try receive(1, Int64.self, from: rank)[0])
            guard length >= 0, length <= 1 << 26 else { throw KDError("rank \(rank) sent a manifest of \(length) bytes") }
            let bytes = try receive(length, UInt8.self, from: rank)
            do {
                return try JSONDecoder().decode(Manifest.self, from: Data(bytes))
            } catch {
                throw KDError("rank \(rank) sent a manifest kd cannot read")
            }
        }
    }

    /// Sends the parts a forward's request without waiting for them to take it (they may be busy
    /// with a backward, and a send, however small, can wait for its receiver).
    private func sendForward(_ batch: TokenBatch, training: Bool, key: (step: Int, micro: Int), onto device: Device) throws {
        var started: [Communicator.PendingSend] = []
        let header = [Request.forward.rawValue, Int64(batch.batchSize), Int64(batch.sequenceLength), training ? 1 : 0,
                      adaptersDetached ? 1 : 0, Int64(key.step), Int64(key.micro), 0]
        for rank in ranks {
            started.append(try header.withUnsafeBytes { try communicator.startSend($0, to: rank, tag: Self.requestTag) })
            started.append(try batch.inputIDs.withUnsafeBytes { try communicator.startSend($0, to: rank, tag: Self.requestTag) })
            started.append(try batch.attentionMask.withUnsafeBytes { try communicator.startSend($0, to: rank, tag: Self.requestTag) })
        }
        requested.append((batch.tokenCount, device, started))
    }

    /// Receives the output of the oldest forward requested ahead.
    private func receiveRequested() throws -> Tensor {
        let (tokens, device, sends) = requested.removeFirst()
        // The parts have taken the request by the time its output arrives.
        let output = try Tensor(uninitializedShape: [tokens, hidden], on: device)
        try receive(into: output, from: devices[devices.count - 1], tag: Self.activationTag)
        for send in sends { try send.wait() }
        return output
    }

    /// Requests the training forward of micro-batch `key.micro` of step `key.step` (whose dropout
    /// masks the key draws), its output to be received onto `device`: the next training `forward`
    /// calls take the outputs requested, in order. Only a pipelined run requests one before the
    /// last one's backward.
    func requestForward(_ batch: TokenBatch, key: (step: Int, micro: Int), onto device: Device) throws {
        guard pipelined || (requested.isEmpty && awaitingBackward.isEmpty) else {
            throw KDError("student stages run forwards ahead only with activation checkpointing")
        }
        try sendForward(batch, training: true, key: key, onto: device)
    }

    public func forward(_ batch: TokenBatch, training: Bool, onto device: Device) throws -> Tensor {
        let output: Tensor
        if !arrived.isEmpty {
            output = arrived.removeFirst()
        } else if !requested.isEmpty {
            output = try receiveRequested()
        } else {
            // A training forward comes requested, with its dropout key; one without (evaluation) draws no masks.
            guard !training else { throw KDError("student stages: a training forward must be requested first (requestForward)") }
            try sendForward(batch, training: false, key: (0, 0), onto: device)
            output = try receiveRequested()
        }
        guard output.shape[0] == batch.tokenCount, training || awaitingBackward.isEmpty else {
            throw KDError("student stages: a forward of \(batch.tokenCount) tokens does not match the one requested ahead")
        }
        if training { awaitingBackward.append(batch.tokenCount) }
        return output
    }

    public func backward(_ dOutput: Tensor) throws {
        guard !awaitingBackward.isEmpty else { throw KDError("student stages: backward without a training forward") }
        try requireShape(dOutput, [awaitingBackward.removeFirst(), hidden], "d(student stages' output)")
        // The parts may be sending the outputs of forwards requested ahead: take them first, or
        // both sides would wait in a send.
        while !requested.isEmpty { arrived.append(try receiveRequested()) }
        try request(.backward)
        try dOutput.send(to: devices[devices.count - 1], tag: Self.gradientTag)
    }

    /// Zeroes the parts' gradients for a new step.
    func zeroGradients() throws { try request(.zeroGradients) }

    /// Σg² of every slot of the parts, in slot order (the parts sum their gradients over their
    /// replicas first), and each part's busy seconds since it was last asked.
    func squareSums() throws -> (sums: [Double], busySeconds: [Double]) {
        try request(.squareSums)
        var sums: [Double] = [], busy: [Double] = []
        for (rank, manifest) in zip(ranks, manifests) {
            let values = try receive(1 + 2 * manifest.adapters.count, UInt64.self, from: rank).map { Double(bitPattern: $0) }
            busy.append(values[0])
            sums += values.dropFirst()
        }
        return (sums, busy)
    }

    /// Clips the parts' gradients with the global `norm` (when `maxNorm` > 0) and steps their optimizers.
    func step(norm: Double, maxNorm: Double, lr: Double) throws {
        try request(.step, [Int64(bitPattern: norm.bitPattern), Int64(bitPattern: maxNorm.bitPattern), Int64(bitPattern: lr.bitPattern)])
    }

    /// The parts' adapters, copied onto `device`, in layer order.
    func adapters(on device: Device) throws -> [NamedAdapter] {
        try request(.adapters)
        var all: [NamedAdapter] = []
        for (part, manifest) in zip(devices, manifests) {
            for entry in manifest.adapters {
                let (a, b) = try pair(entry, from: part, on: device)
                let adapter = LoRAAdapter(a: a, b: b, scale: settings.scale, dropout: Float(settings.dropout))
                if entry.pissa { adapter.initial = try pair(entry, from: part, on: device) }
                all.append(NamedAdapter(name: entry.name, adapter: adapter))
            }
        }
        return all
    }

    /// The parts' AdamW moments, copied onto `device`, in slot order.
    func moments(on device: Device) throws -> [AdamW.Moments] {
        try request(.moments)
        var all: [AdamW.Moments] = []
        for (part, manifest) in zip(devices, manifests) {
            for entry in manifest.adapters {
                for (matrix, shape) in [("A", [entry.rank, entry.inFeatures]), ("B", [entry.outFeatures, entry.rank])] {
                    let average = try Tensor(uninitializedShape: shape, on: device)
                    let square = try Tensor(uninitializedShape: shape, on: device)
                    try receive(into: average, from: part)
                    try receive(into: square, from: part)
                    all.append(AdamW.Moments(name: entry.name + ".lora_" + matrix, average: average, averageSquare: square))
                }
            }
        }
        return all
    }

    /// The parts' adapters' gradients by PEFT key, copied onto `device`.
    func gradients(on device: Device) throws -> [(name: String, tensor: Tensor)] {
        try request(.gradients)
        var all: [(name: String, tensor: Tensor)] = []
        for (part, manifest) in zip(devices, manifests) {
            for entry in manifest.adapters {
                let (a, b) = try pair(entry, from: part, on: device)
                all += [(PEFTAdapter.key(entry.name, "A"), a), (PEFTAdapter.key(entry.name, "B"), b)]
            }
        }
        return all
    }

    /// A [rank, in] and a [out, rank] tensor received from `part`.
    private func pair(_ entry: Manifest.Entry, from part: Device, on device: Device) throws -> (Tensor, Tensor) {
        let a = try Tensor(uninitializedShape: [entry.rank, entry.inFeatures], on: device)
        let b = try Tensor(uninitializedShape: [entry.outFeatures, entry.rank], on: device)
        try receive(into: a, from: part)
        try receive(into: b, from: part)
        return (a, b)
    }

    /// Tells the parts that the run is over.
    public func stop() throws { try request(.stop) }

    /// The bytes the student's rank sends its parts in a step of `microBatches` micro-batches of
    /// `tokens` positions, and a part sends (its output forward and, but for the first part, its
    /// input's gradient back; its sums to the student's rank), for kd plan.
    static func bytesPerStep(microBatches: Int, tokens: Double, hidden: Int, parts: Int, position: Int?, slots: Int) -> Double {
        let activations = Double(microBatches) * tokens * Double(hidden) * 4
        guard let position else {
            // Requests: zero, sums and step a step, forward (with ids and mask) and backward a micro-batch.
            let requests = Double(64 * (3 + 2 * microBatches)) + Double(microBatches) * tokens * 5
            return requests * Double(parts) + (parts > 0 ? activations : 0)
        }
        return activations * (position > 0 ? 2 : 1) + Double(8 * (1 + slots))
    }

    // MARK: A part's rank

    /// A rank holding student stages before the student's rank: loads its stages, attaches their
    /// adapters as the student's rank does and answers it until it says stop. `onLoad` gets a line
    /// once the part is loaded.
    public static func serve(config: RunConfig, layout: RankLayout, onLoad: (String) -> Void) throws {
        let plan = try MemoryPlan(config: config, teacherElsewhere: true)
        BLAS.threads = plan.budget.threads
        let world = layout.world, student = layout.studentRank
        guard let peers = layout.replicas, let position = layout.studentPartRanks.firstIndex(of: world.rank) else {
            throw KDError("rank \(world.rank) holds no student stages")
        }
        let part = try layout.loadPart(config.student, role: "student", config: config, plan: plan, onLoad: onLoad)
        part.activationCheckpointing = config.train.activationCheckpointing
        part.layersKeepingProducts = plan.studentLayersKeepingProducts
        // The devices this part's tensors go to and come from: the previous part's last, and the
        // next part's first or the student's rank's first, which also takes the replies.
        let studentDevices = config.student.devices, parts = layout.studentPartRanks
        let previous = position > 0 ? layout.devices(of: studentDevices, onRank: parts[position - 1]).last : nil
        let head = layout.devices(of: studentDevices, onRank: student).first
        let next = position + 1 < parts.count ? layout.devices(of: studentDevices, onRank: parts[position + 1]).first : head
        func receive<T: FixedWidthInteger>(_ count: Int, _ type: T.Type) throws -> [T] {
            try world.receive(count, type, from: student, tag: requestTag)
        }
        func reply<T>(_ values: [T]) throws { try values.withUnsafeBytes { try world.send($0, to: student, tag: replyTag) } }
        var adapters: [NamedAdapter] = []
        var optimizer: AdamW?
        // Training forwards whose backward is to come, in order: their tokens, dropout key and,
        // when checkpointed, what they kept (set aside for the forwards run in between).
        var pending: [(tokens: Int, step: Int, micro: Int, kept: ModelPart.PendingBackward?)] = []
        var busy = 0.0
        func setDropout(step: Int, micro: Int) {
            for named in adapters {
                named.adapter.dropoutStream = Trainer.dropoutStream(
                    seed: config.run.seed, step: step, micro: micro, linear: named.name, replicas: peers)
            }
        }
        func timed(_ body: () throws -> Void) rethrows {
            let start = ContinuousClock.now
            try body()
            busy += (ContinuousClock.now - start).seconds
        }
        while true {
            let header = try receive(8, Int64.self)
            guard let kind = Request(rawValue: header[0]) else {
                throw KDError("rank \(student) sent its student stages a request they cannot read (\(header))")
            }
            if kind != .start && kind != .stop && optimizer == nil {
                throw KDError("rank \(student) sent its student stages a request before starting them")
            }
            switch kind {
            case .stop:
                return
            case .start:
                guard header[1] >= 0, header[1] <= 1 << 16 else { throw KDError("rank \(student) sent a path of \(header[1]) bytes") }
                let path = String(decoding: try receive(Int(header[1]), UInt8.self), as: UTF8.self)
                let resumeFrom = path.isEmpty ? nil : path
                try Trainer.attachAdapters(config, to: part, resumeFrom: resumeFrom)
                adapters = part.namedAdapters
                let made = try Trainer.optimizer(config, adapters: adapters)
                if let resumeFrom {
                    try Trainer.restore(adapters, optimizer: made, from: resumeFrom, step: try TrainingCheckpoint.readState(resumeFrom).step)
                }
                optimizer = made
                let manifest = Manifest(adapters: adapters.map {
                    .init(name: $0.name, rank: $0.adapter.rank, inFeatures: $0.adapter.inFeatures,
                          outFeatures: $0.adapter.outFeatures, pissa: $0.adapter.initial != nil)
                })
                let bytes = Array(try JSONEncoder().encode(manifest))
                try reply([Int64(bytes.count)])
                try reply(bytes)
            case .forward:
                let (batch, length) = (Int(header[1]), Int(header[2]))
                guard batch >= 0, length >= 0, batch <= RunConfig.Limits.tokens, length <= RunConfig.Limits.tokens,
                      batch * length <= RunConfig.Limits.tokens else {
                    throw KDError("rank \(student) sent its student stages a batch they cannot read (\(header))")
                }
                let training = header[3] != 0, detached = header[4] != 0
                let ids = try receive(batch * length, Int32.self), mask = try receive(batch * length, UInt8.self)
                let tokenBatch = TokenBatch(batchSize: batch, sequenceLength: length, inputIDs: ids, attentionMask: mask)
                var input: Tensor?
                if let previous {
                    let x = try Tensor(uninitializedShape: [batch * length, part.spec.hiddenSize], on: part.firstDevice)
                    try x.receive(from: previous, tag: activationTag)
                    input = x
                }
                guard header[5] >= 0, header[6] >= 0 else { throw KDError("rank \(student) sent a negative dropout key") }
                let (step, micro) = (Int(header[5]), Int(header[6]))
                if training { setDropout(step: step, micro: micro) }
                var output: Tensor?
                try timed {
                    output = try detached ? part.withLocalAdaptersDetached { try part.forward(tokenBatch, input: input, training: training) }
                        : part.forward(tokenBatch, input: input, training: training)
                    if training {
                        // Checkpointed, the forward's inputs wait aside while later forwards run.
                        let kept = config.train.activationCheckpointing ? try part.setAside() : nil
                        pending.append((batch * length, step, micro, kept))
                    }
                }
                try output!.send(to: next, tag: activationTag)
            case .backward:
                guard !pending.isEmpty else { throw KDError("rank \(student) asked for a backward without a training forward") }
                let forward = pending.removeFirst()
                guard forward.kept != nil || pending.isEmpty else {
                    throw KDError("rank \(student) ran forwards ahead without activation checkpointing")
                }
                let dOutput = try Tensor(uninitializedShape: [forward.tokens, part.spec.hiddenSize], on: part.lastDevice)
                try dOutput.receive(from: next, tag: gradientTag)
                var dInput: Tensor?
                try timed {
                    if let kept = forward.kept { part.restore(kept) }
                    setDropout(step: forward.step, micro: forward.micro)
                    dInput = try part.backward(dOutput)
                }
                if let previous, let dInput { try dInput.send(to: previous, tag: gradientTag) }
            case .zeroGradients:
                for named in adapters { try named.adapter.zeroGradients() }
            case .squareSums:
                var sums: [Double] = []
                try timed {
                    if peers.size > 1 { try Trainer.sum(adapters, over: peers) }
                    sums = optimizer!.gradientSquareSums()
                }
                try reply(([busy] + sums).map(\.bitPattern))
                busy = 0
            case .step:
                let (norm, maxNorm, lr) = (Double(bitPattern: UInt64(bitPattern: header[1])),
                                           Double(bitPattern: UInt64(bitPattern: header[2])),
                                           Double(bitPattern: UInt64(bitPattern: header[3])))
                timed {
                    if maxNorm > 0 { optimizer!.clip(norm: norm, maxNorm: maxNorm) }
                    optimizer!.step(lr: lr)
                }
            case .adapters:
                for named in adapters {
                    for tensor in [named.adapter.a, named.adapter.b] + (named.adapter.initial.map { [$0.a, $0.b] } ?? []) {
                        try tensor.send(to: head, tag: replyTag)
                    }
                }
            case .moments:
                for slot in optimizer!.moments {
                    try slot.average.send(to: head, tag: replyTag)
                    try slot.averageSquare.send(to: head, tag: replyTag)
                }
            case .gradients:
                for named in adapters {
                    try named.adapter.gradA!.send(to: head, tag: replyTag)
                    try named.adapter.gradB!.send(to: head, tag: replyTag)
                }
            }
        }
    }
}
