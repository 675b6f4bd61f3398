import Foundation
import KDCore
import KDModels

/// A teacher on another rank of the job (see `RankLayout`), as the student's rank sees it: it
/// sends the teacher's rank each batch's tokens and scored rows as soon as the batch is known, and
/// receives the logits chunk by chunk, straight into the student's loss device. The teacher's rank
/// (`serve`) runs the same forward and head as an in-process teacher, so the logits are the same
/// bits; and it works on the next batch while the student finishes this one, as a concurrent
/// in-process teacher does.
///
/// Messages between the two ranks, in order (MPI keeps the order of one sender's messages with one
/// tag): a request is five Int64 (kind: 1 batch, 0 stop; batch size; sequence length; scored rows;
/// chunk tokens), then the token ids (Int32), the attention mask (UInt8) and the scored rows
/// (Int64); each chunk of the answer is three Float64 (seconds, forward seconds, head seconds) and
/// then its logits, rows × teacher vocabulary f32. Every chunk of a request is received, also when
/// the student no longer needs it (`TeacherStream.cancel`), so the two ranks never fall out of step.
public final class RemoteTeacher: @unchecked Sendable {
    static let requestTag = 11, chunkTag = 12
    let communicator: Communicator
    /// The teacher's rank in `communicator`.
    let rank: Int
    public let spec: ModelSpec
    private let lock = NSLock()
    private var received = 0
    /// Bytes the teacher's rank has sent this rank (the chunks).
    public var bytesReceived: Int { lock.withLock { received } }

    init(communicator: Communicator, rank: Int, spec: ModelSpec) {
        self.communicator = communicator
        self.rank = rank
        self.spec = spec
    }

    /// Sends a batch to the teacher's rank.
    func request(_ tokens: TokenBatch, rows: [Int], chunkTokens: Int) throws {
        let header: [Int64] = [1, Int64(tokens.batchSize), Int64(tokens.sequenceLength), Int64(rows.count), Int64(chunkTokens)]
        try header.withUnsafeBytes { try communicator.send($0, to: rank, tag: Self.requestTag) }
        try tokens.inputIDs.withUnsafeBytes { try communicator.send($0, to: rank, tag: Self.requestTag) }
        try tokens.attentionMask.withUnsafeBytes { try communicator.send($0, to: rank, tag: Self.requestTag) }
        try rows.map { Int64($0) }.withUnsafeBytes { try communicator.send($0, to: rank, tag: Self.requestTag) }
    }

    /// Receives the next chunk of `rows` rows onto `target`.
    func receiveChunk(rows: Int, on target: Device) throws -> TeacherStream.Chunk {
        var times = [Double](repeating: 0, count: 3)
        try times.withUnsafeMutableBytes { try communicator.receive(into: $0, from: rank, tag: Self.chunkTag) }
        let logits = try Tensor(uninitializedShape: [rows, spec.vocabSize], on: target)
        try target.run { [communicator, rank] in
            try communicator.receive(into: UnsafeMutableRawBufferPointer(start: logits.bytes, count: logits.byteCount),
                                     from: rank, tag: Self.chunkTag)
        }
        lock.withLock { received += times.count * MemoryLayout<Double>.stride + logits.byteCount }
        var phases = ["teacher_head": times[2]]
        if times[1] > 0 { phases["teacher_forward"] = times[1] }
        return TeacherStream.Chunk(targets: .logits(logits), seconds: times[0], phases: phases, movedBytes: logits.byteCount)
    }

    /// Tells the teacher's rank that no more batches come.
    public func stop() throws {
        let header: [Int64] = [0, 0, 0, 0, 0]
        try header.withUnsafeBytes { try communicator.send($0, to: rank, tag: Self.requestTag) }
    }

    /// The teacher's rank: loads the teacher onto its devices and answers the student's rank until
    /// it says stop. `onLoad` gets a line once the teacher is loaded.
    public static func serve(config: RunConfig, layout: RankLayout, onLoad: (String) -> Void) throws {
        let plan = try MemoryPlan(config: config, teacherElsewhere: true)
        BLAS.threads = plan.budget.threads
        if let over = plan.devices.first(where: { !$0.fits && config.teacher.devices.contains($0.id) }) {
            throw KDError("the teacher does not fit device \(over.id): it needs \(formatBytes(over.totalBytes)) of "
                + "\(formatBytes(over.capacityBytes ?? 0)) (see kd plan)")
        }
        let start = ContinuousClock.now
        let devices = try DeviceGroup.make(count: config.deviceCount, capacity: config.devices.memoryPerDevice?.bytes)
        let teacher = try CausalLM.load(try Checkpoint(directory: config.teacher.path),
                                        on: try DeviceGroup(config.teacher.devices.map { devices.devices[$0] }), dtype: config.teacher.dtype)
        onLoad(String(format: "loaded the teacher in %.1f s", (ContinuousClock.now - start).seconds))
        let communicator = layout.world, student = layout.studentRank
        func receive<T>(_ count: Int, _ type: T.Type) throws -> [T] where T: FixedWidthInteger {
            var values = [T](repeating: 0, count: count)
            try values.withUnsafeMutableBytes { try communicator.receive(into: $0, from: student, tag: requestTag) }
            return values
        }
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
            guard rows.allSatisfy({ $0 >= 0 && $0 < batch * length }),
                  ids.allSatisfy({ $0 >= 0 && Int($0) < teacher.spec.vocabSize }) else {
                throw KDError("rank \(student) sent the teacher rows or token ids out of range")
            }
            let stream = TeacherStream.live(
                teacher: teacher, tokens: TokenBatch(batchSize: batch, sequenceLength: length, inputIDs: ids, attentionMask: mask),
                rows: rows, chunkTokens: chunkTokens, target: teacher.lastDevice, concurrent: false)
            for _ in TeacherStream.ranges(rowCount, chunkTokens) {
                let chunk = try stream.next()
                guard case .logits(let logits) = chunk.targets else { continue }
                let times = [chunk.seconds, chunk.phases["teacher_forward"] ?? 0, chunk.phases["teacher_head"] ?? 0]
                try times.withUnsafeBytes { try communicator.send($0, to: student, tag: chunkTag) }
                try teacher.lastDevice.run {
                    try communicator.send(UnsafeRawBufferPointer(start: logits.bytes, count: logits.byteCount), to: student, tag: chunkTag)
                }
            }
        }
    }
}
