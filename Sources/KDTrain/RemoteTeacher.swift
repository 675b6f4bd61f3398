import Foundation
import KDCore
import KDModels

/// A teacher on other ranks of the job (see `RankLayout`), as the student's rank sees it: it sends
/// the teacher's ranks each batch's tokens and scored rows as soon as the batch is known, and
/// receives the logits chunk by chunk from the last of them, straight into the student's loss
/// device. The teacher's ranks (`serve`) each hold consecutive stages (`ModelPart`): each passes
/// its layers' output to the next, and the last applies the final norm and the output projection.
/// The kernels and their order are the in-process teacher's, so the logits are the same bits; and
/// every part works on the next batch while the parts after it, and the student, finish this one.
///
/// Messages, in order (MPI keeps the order of one sender's messages with one tag): to every teacher
/// rank a request of five Int64 (kind: 1 batch, 0 stop; batch size; sequence length; scored rows;
/// chunk tokens), then the token ids (Int32), the attention mask (UInt8) and the scored rows
/// (Int64); from one part to the next its output, tokens × hidden f32; from the last part to the
/// student each chunk, three Float64 (seconds, the part's forward seconds, head seconds) and then
/// its logits, rows × teacher vocabulary f32. Every chunk of a request is received, also when the
/// student no longer needs it (`TeacherStream.cancel`), so the ranks never fall out of step.
public final class RemoteTeacher: @unchecked Sendable {
    static let requestTag = 11, chunkTag = 12, hiddenTag = 13
    let communicator: Communicator
    /// The teacher's ranks in `communicator`, in stage order; the last sends the logits.
    let ranks: [Int]
    var rank: Int { ranks[ranks.count - 1] }
    /// The teacher's last device, on `rank`, which sends the logits.
    let device: Device
    public let spec: ModelSpec
    private let lock = NSLock()
    private var received = 0
    /// Bytes the teacher's rank has sent this rank (the chunks).
    public var bytesReceived: Int { lock.withLock { received } }

    init(communicator: Communicator, ranks: [Int], device: Device, spec: ModelSpec) {
        self.communicator = communicator
        self.ranks = ranks
        self.device = device
        self.spec = spec
    }

    /// Sends a batch to the teacher's ranks.
    func request(_ tokens: TokenBatch, rows: [Int], chunkTokens: Int) throws {
        let header: [Int64] = [1, Int64(tokens.batchSize), Int64(tokens.sequenceLength), Int64(rows.count), Int64(chunkTokens)]
        let scored = rows.map { Int64($0) }
        for rank in ranks {
            try header.withUnsafeBytes { try communicator.send($0, to: rank, tag: Self.requestTag) }
            try tokens.inputIDs.withUnsafeBytes { try communicator.send($0, to: rank, tag: Self.requestTag) }
            try tokens.attentionMask.withUnsafeBytes { try communicator.send($0, to: rank, tag: Self.requestTag) }
            try scored.withUnsafeBytes { try communicator.send($0, to: rank, tag: Self.requestTag) }
        }
    }

    /// Receives the next chunk of `rows` rows onto `target`.
    func receiveChunk(rows: Int, on target: Device) throws -> TeacherStream.Chunk {
        var times = [Double](repeating: 0, count: 3)
        try times.withUnsafeMutableBytes { try communicator.receive(into: $0, from: rank, tag: Self.chunkTag) }
        let logits = try Tensor(uninitializedShape: [rows, spec.vocabSize], on: target)
        try logits.receive(from: device, tag: Self.chunkTag)
        lock.withLock { received += times.count * MemoryLayout<Double>.stride + logits.byteCount }
        var phases = ["teacher_head": times[2]]
        if times[1] > 0 { phases["teacher_forward"] = times[1] }
        return TeacherStream.Chunk(targets: .logits(logits), seconds: times[0], phases: phases, movedBytes: logits.byteCount)
    }

    /// Tells the teacher's ranks that no more batches come.
    public func stop() throws {
        let header: [Int64] = [0, 0, 0, 0, 0]
        for rank in ranks { try header.withUnsafeBytes { try communicator.send($0, to: rank, tag: Self.requestTag) } }
    }

    /// A teacher's rank: loads its part of the teacher (the stages on its devices) and answers the
    /// student's rank until it says stop. `onLoad` gets a line once the part is loaded.
    public static func serve(config: RunConfig, layout: RankLayout, onLoad: (String) -> Void) throws {
        let plan = try MemoryPlan(config: config, teacherElsewhere: true)
        BLAS.threads = plan.budget.threads
        let communicator = layout.world, student = layout.studentRank
        let position = layout.teacherRanks.firstIndex(of: communicator.rank)!
        let part = try layout.loadPart(config.teacher, role: "teacher", config: config, plan: plan, onLoad: onLoad)
        // The devices this part's tensors go to and come from: the previous part's last, the next
        // part's first, and the student's loss device.
        let teacherDevices = config.teacher.devices
        let previous = position > 0 ? layout.devices(of: teacherDevices, onRank: layout.teacherRanks[position - 1]).last : nil
        let next = position + 1 < layout.teacherRanks.count
            ? layout.devices(of: teacherDevices, onRank: layout.teacherRanks[position + 1]).first : nil
        let loss = layout.devices.devices[config.student.devices.last!]
        func receive<T: FixedWidthInteger>(_ count: Int, _ type: T.Type) throws -> [T] {
            try communicator.receive(count, type, from: student, tag: requestTag)
        }
        let vocab = part.spec.vocabSize, hidden = part.spec.hiddenSize
        while true {
            let header = try receive(5, Int64.self)
            if header[0] == 0 { return }
            let (batch, length, rowCount, chunkTokens) = (Int(header[1]), Int(header[2]), Int(header[3]), Int(header[4]))
            guard header[0] == 1, batch >= 0, length >= 0, batch <= RunConfig.Limits.tokens, length <= RunConfig.Limits.tokens,
                  batch * length <= RunConfig.Limits.tokens, rowCount >= 0, rowCount <= batch * length,
                  chunkTokens >= 1, chunkTokens <= RunConfig.Limits.tokens else {
                throw KDError("rank \(student) sent the teacher a request it cannot read (\(header))")
            }
            let ids = try receive(batch * length, Int32.self), mask = try receive(batch * length, UInt8.self)
            let rows = try receive(rowCount, Int64.self).map { Int($0) }
            guard rows.allSatisfy({ $0 >= 0 && $0 < batch * length }) else {
                throw KDError("rank \(student) sent the teacher rows out of range")
            }
            let tokens = TokenBatch(batchSize: batch, sequenceLength: length, inputIDs: ids, attentionMask: mask)
            var input: Tensor?
            if let previous {
                let x = try Tensor(uninitializedShape: [batch * length, hidden], on: part.firstDevice)
                try x.receive(from: previous, tag: hiddenTag)
                input = x
            }
            let forwardStart = ContinuousClock.now
            let output = try part.forward(tokens, input: input)
            let forwardSeconds = (ContinuousClock.now - forwardStart).seconds
            if let next {
                try output.send(to: next, tag: hiddenTag)
                continue
            }
            for (index, range) in TeacherStream.ranges(rowCount, chunkTokens).enumerated() {
                let headStart = ContinuousClock.now
                let logits = try projectRows(output, rows: rows[range], vocab: vocab, through: part.project)
                let head = (ContinuousClock.now - headStart).seconds
                let times = [head + (index == 0 ? forwardSeconds : 0), index == 0 ? forwardSeconds : 0, head]
                try times.withUnsafeBytes { try communicator.send($0, to: student, tag: chunkTag) }
                try logits.send(to: loss, tag: chunkTag)
            }
        }
    }
}
