import COpenMPI
import Foundation

/// The processes of a run: this process alone, or the ranks of an MPI job (started by Open MPI's
/// `mpirun`, or by a PMIx launcher such as Slurm's `srun`).
///
/// kd started on its own never initialises MPI and behaves as a single process. Every collective
/// here gives the same bits on every rank and does not depend on timing: sums are formed in rank
/// order by kd, never by MPI's reduction operators (whose order depends on the algorithm MPI picks
/// for the message size and the number of ranks).
public final class Communicator: @unchecked Sendable {
    public let rank: Int
    public let size: Int
    /// This rank's host, and how many of the job's ranks run on it.
    public let host: String
    public let ranksOnHost: Int
    /// The MPI communicator (nil for this process alone).
    private let comm: MPI_Comm?
    /// This process's rank in the whole job (for messages).
    public let worldRank: Int
    private let lock = NSLock()
    private var sent = 0

    private init(comm: MPI_Comm?, rank: Int, size: Int, host: String, ranksOnHost: Int, worldRank: Int) {
        self.comm = comm
        self.rank = rank
        self.size = size
        self.host = host
        self.ranksOnHost = ranksOnHost
        self.worldRank = worldRank
    }

    /// This process alone.
    public static let single = Communicator(comm: nil, rank: 0, size: 1, host: ProcessInfo.processInfo.hostName, ranksOnHost: 1,
                                            worldRank: 0)

    /// The job this process belongs to: `single` until `start()` joins an MPI job.
    nonisolated(unsafe) public private(set) static var world = Communicator.single

    /// Whether an MPI launcher started this process (Open MPI's mpirun sets OMPI_COMM_WORLD_SIZE;
    /// PMIx launchers, srun among them, set PMIX_RANK).
    public static var launchedByMPI: Bool {
        let environment = ProcessInfo.processInfo.environment
        return environment["OMPI_COMM_WORLD_SIZE"] != nil || environment["PMIX_RANK"] != nil
    }

    /// Joins the MPI job when an MPI launcher started this process; does nothing otherwise.
    public static func start() throws {
        guard launchedByMPI, world === single else { return }
        var provided: Int32 = 0
        try check(kd_mpi_init(&provided), "initialising MPI")
        guard provided >= MPI_THREAD_MULTIPLE else {
            throw KDError("MPI: this Open MPI does not support MPI_THREAD_MULTIPLE, which kd's device threads need")
        }
        var rank: Int32 = 0, size: Int32 = 0
        let comm = kd_mpi_world()
        try check(kd_mpi_rank(comm, &rank), "reading the rank")
        try check(kd_mpi_size(comm, &size), "reading the job's size")
        var name = [CChar](repeating: 0, count: Int(MPI_MAX_PROCESSOR_NAME) + 1)
        var length: Int32 = 0
        try check(kd_mpi_processor_name(&name, &length), "reading the host name")
        let host = String(decoding: name.prefix(Int(max(0, min(length, MPI_MAX_PROCESSOR_NAME)))).map { UInt8(bitPattern: $0) },
                          as: UTF8.self)
        let joined = Communicator(comm: comm, rank: Int(rank), size: Int(size), host: host, ranksOnHost: 1, worldRank: Int(rank))
        // Ranks per host: every rank's host name, compared.
        let width = Int(MPI_MAX_PROCESSOR_NAME)
        var mine = [UInt8](repeating: 0, count: width)
        for (i, byte) in host.utf8.prefix(width).enumerated() { mine[i] = byte }
        let all = try joined.allGather(mine)
        let hosts = (0..<joined.size).map { all[$0 * width ..< ($0 + 1) * width] }
        world = Communicator(comm: comm, rank: joined.rank, size: joined.size, host: host,
                             ranksOnHost: hosts.filter { $0 == hosts[joined.rank] }.count, worldRank: joined.rank)
    }

    /// Leaves the MPI job (every rank must), when `start()` joined one.
    public static func finish() {
        guard world !== single else { return }
        _ = kd_mpi_finalize()
    }

    /// Ends every rank of the job with `code` (this process alone when it is not in a job).
    public func abort(code: Int32) -> Never {
        if self !== Communicator.single { kd_mpi_abort(code) }
        exit(code)
    }

    /// "rank R (host)" in a job of several ranks; nil alone.
    public var label: String? { Communicator.world.size > 1 ? "rank \(worldRank) (\(host))" : nil }

    /// The ranks that give the same `color`, numbered in order of `key` (then of rank here). Every
    /// rank of this communicator must call it.
    public func split(color: Int, key: Int) throws -> Communicator {
        guard let comm else { return self }
        var out: MPI_Comm?
        try Self.check(kd_mpi_split(comm, Int32(color), Int32(key), &out), "splitting the job")
        var rank: Int32 = 0, size: Int32 = 0
        try Self.check(kd_mpi_rank(out!, &rank), "reading the rank")
        try Self.check(kd_mpi_size(out!, &size), "reading the size")
        return Communicator(comm: out, rank: Int(rank), size: Int(size), host: host, ranksOnHost: ranksOnHost, worldRank: worldRank)
    }

    /// Bytes this rank has sent to other ranks.
    public var bytesSent: Int { lock.withLock { sent } }

    private func count(_ bytes: Int) { lock.withLock { sent += bytes } }

    fileprivate static func check(_ code: Int32, _ what: String) throws {
        guard code != 0 else { return }
        var text = [CChar](repeating: 0, count: Int(MPI_MAX_ERROR_STRING) + 1)
        var length: Int32 = 0
        _ = kd_mpi_error_string(code, &text, &length)
        let message = String(decoding: text.prefix(Int(max(0, min(length, MPI_MAX_ERROR_STRING)))).map { UInt8(bitPattern: $0) },
                             as: UTF8.self)
        throw KDError("MPI: \(what) failed: \(message.isEmpty ? "error \(code)" : message)")
    }

    /// The largest message of one MPI call, in bytes (MPI counts are 32-bit).
    static let largestMessage = 1 << 28

    // MARK: Collectives

    /// Every rank's `bytes` (the same count on every rank), in rank order.
    public func allGather(_ bytes: [UInt8]) throws -> [UInt8] {
        guard size > 1 else { return bytes }
        precondition(bytes.count <= Self.largestMessage / size, "allGather of \(bytes.count) bytes from \(size) ranks")
        var out = [UInt8](repeating: 0, count: bytes.count * size)
        try bytes.withUnsafeBytes { send in
            try out.withUnsafeMutableBytes { receive in
                try Self.check(kd_mpi_allgather_bytes(comm, send.baseAddress, receive.baseAddress, Int32(bytes.count)), "gathering")
            }
        }
        count(bytes.count * (size - 1))
        return out
    }

    /// The sum over ranks of each element, added in rank order (the same bits on every rank).
    public func sum(_ values: [Double]) throws -> [Double] {
        guard size > 1 else { return values }
        let all = try allGather(values.withUnsafeBytes { Array($0) })
        return all.withUnsafeBytes { raw in
            let gathered = raw.bindMemory(to: Double.self)
            return values.indices.map { i in (1..<size).reduce(gathered[i]) { $0 + gathered[$1 * values.count + i] } }
        }
    }

    /// The sum over ranks of each element.
    public func sum(_ values: [Int]) throws -> [Int] {
        guard size > 1 else { return values }
        let all = try allGather(values.map { Int64($0) }.withUnsafeBytes { Array($0) })
        return all.withUnsafeBytes { raw in
            let gathered = raw.bindMemory(to: Int64.self)
            return values.indices.map { i in Int((0..<size).reduce(Int64(0)) { $0 &+ gathered[$1 * values.count + i] }) }
        }
    }

    /// The largest of the ranks' values.
    public func maximum(_ value: Int) throws -> Int {
        guard size > 1 else { return value }
        let all = try allGather(withUnsafeBytes(of: Int64(value)) { Array($0) })
        return all.withUnsafeBytes { Int($0.bindMemory(to: Int64.self).max()!) }
    }

    /// Returns once every rank has called it.
    public func barrier() throws {
        guard size > 1 else { return }
        try Self.check(kd_mpi_barrier(comm), "waiting for the other ranks")
    }

    /// Sends `bytes` to rank `destination` (of this communicator) with `tag`, in messages of at most
    /// `largestMessage` bytes; returns when the buffer may be reused.
    public func send(_ bytes: UnsafeRawBufferPointer, to destination: Int, tag: Int) throws {
        guard let comm else { throw KDError("MPI: a send needs an MPI job") }
        try Self.inMessages(bytes.count) { offset, n in
            try Self.check(kd_mpi_send_bytes(comm, bytes.baseAddress.map { $0 + offset }, Int32(n), Int32(destination), Int32(tag)),
                           "sending to rank \(destination)")
        }
        count(bytes.count)
    }

    /// A message on its way: its own copy of the bytes, kept until `wait` returns.
    public final class PendingSend {
        private let buffer: UnsafeMutableRawBufferPointer
        private var request: MPI_Request? = nil
        private var done = false

        fileprivate init(_ bytes: UnsafeRawBufferPointer, to destination: Int, tag: Int, comm: MPI_Comm) throws {
            buffer = .allocate(byteCount: max(1, bytes.count), alignment: 16)
            buffer.copyMemory(from: bytes)
            do {
                try Communicator.check(kd_mpi_isend_bytes(comm, buffer.baseAddress, Int32(bytes.count), Int32(destination),
                                                          Int32(tag), &request), "sending to rank \(destination)")
            } catch {
                buffer.deallocate()
                throw error
            }
        }

        /// Returns once the message has left (its copy may be freed).
        public func wait() throws {
            guard !done else { return }
            done = true
            defer { buffer.deallocate() }
            try Communicator.check(kd_mpi_wait(&request), "sending")
        }

        deinit { if !done { try? wait() } }
    }

    /// Starts sending a copy of `bytes` (at most `largestMessage`) to rank `destination` with
    /// `tag` and returns at once: the caller goes on while the message travels, in order with the
    /// others to that rank and tag. `wait` on the result before relying on its arrival.
    public func startSend(_ bytes: UnsafeRawBufferPointer, to destination: Int, tag: Int) throws -> PendingSend {
        guard let comm else { throw KDError("MPI: a send needs an MPI job") }
        guard bytes.count <= Self.largestMessage else { throw KDError("MPI: a message of \(bytes.count) bytes is too large to start") }
        let pending = try PendingSend(bytes, to: destination, tag: tag, comm: comm)
        count(bytes.count)
        return pending
    }

    /// Receives exactly `bytes.count` bytes that rank `source` sent with `send(_:to:tag:)`.
    public func receive(into bytes: UnsafeMutableRawBufferPointer, from source: Int, tag: Int) throws {
        guard let comm else { throw KDError("MPI: a receive needs an MPI job") }
        try Self.inMessages(bytes.count) { offset, n in
            try Self.check(kd_mpi_receive_bytes(comm, bytes.baseAddress.map { $0 + offset }, Int32(n), Int32(source), Int32(tag)),
                           "receiving from rank \(source)")
        }
    }

    /// `count` integers that rank `source` sent as an array with `send(_:to:tag:)`.
    public func receive<T: FixedWidthInteger>(_ count: Int, _ type: T.Type, from source: Int, tag: Int) throws -> [T] {
        var values = [T](repeating: 0, count: count)
        try values.withUnsafeMutableBytes { try receive(into: $0, from: source, tag: tag) }
        return values
    }

    /// Calls `body(offset, length)` for consecutive messages of at most `largestMessage` bytes
    /// covering `count` bytes (one empty message for none: both sides then agree on the count).
    private static func inMessages(_ count: Int, _ body: (Int, Int) throws -> Void) rethrows {
        var offset = 0
        repeat {
            let n = min(largestMessage, count - offset)
            try body(offset, n)
            offset += n
        } while offset < count
    }

    /// Root's bytes on every rank (other ranks' `bytes` are ignored).
    public func broadcast(_ bytes: [UInt8], from root: Int) throws -> [UInt8] {
        guard size > 1 else { return bytes }
        let length = try allGather(withUnsafeBytes(of: Int64(rank == root ? bytes.count : 0)) { Array($0) })
            .withUnsafeBytes { Int($0.bindMemory(to: Int64.self)[root]) }
        guard length <= Self.largestMessage else { throw KDError("MPI: a broadcast of \(length) bytes is too large") }
        var buffer = rank == root ? bytes : [UInt8](repeating: 0, count: length)
        try buffer.withUnsafeMutableBytes { raw in
            try Self.check(kd_mpi_broadcast_bytes(comm, raw.baseAddress, Int32(length), Int32(root)), "broadcasting")
        }
        if rank == root { count(length * (size - 1)) }
        return buffer
    }

    /// The bytes one rank sends in `sumInRankOrder` of `count` values over `ranks` ranks.
    public static func bytesSentBySumInRankOrder(count total: Int, ranks: Int) -> Int {
        guard ranks > 1, total > 0 else { return 0 }
        let round = largestMessage / MemoryLayout<Float>.stride / ranks
        return stride(from: 0, to: total, by: round).reduce(0) { sum, start in
            let segment = (min(round, total - start) + ranks - 1) / ranks
            return sum + 2 * (ranks - 1) * segment * MemoryLayout<Float>.stride
        }
    }

    /// Replaces `values` by their sum over ranks, added in rank order, so every rank gets the same
    /// bits whatever the timing. Each rank owns a 1/size segment: an all-to-all sends every segment
    /// to its owner, the owner adds the ranks' copies in rank order, and an all-gather returns the
    /// sums to every rank. Each rank sends 2·(size−1)/size of the values' bytes, as a ring
    /// all-reduce does, in rounds of at most `largestMessage` bytes.
    public func sumInRankOrder(_ values: UnsafeMutablePointer<Float>, count total: Int) throws {
        guard size > 1, total > 0 else { return }
        let round = Self.largestMessage / MemoryLayout<Float>.stride / size
        var send = [Float](), receive = [Float]()
        for start in stride(from: 0, to: total, by: round) {
            let n = min(round, total - start)
            let segment = (n + size - 1) / size
            send.removeAll(keepingCapacity: true)
            send.append(contentsOf: UnsafeBufferPointer(start: values + start, count: n))
            send.append(contentsOf: repeatElement(0, count: segment * size - n))
            receive = [Float](repeating: 0, count: segment * size)
            try send.withUnsafeBufferPointer { s in
                try receive.withUnsafeMutableBufferPointer { r in
                    try Self.check(kd_mpi_alltoall_floats(comm, s.baseAddress, r.baseAddress, Int32(segment)), "exchanging gradients")
                }
            }
            var owned = [Float](repeating: 0, count: segment)
            for i in 0..<segment {
                var sum = receive[i]
                for source in 1..<size { sum += receive[source * segment + i] }
                owned[i] = sum
            }
            try owned.withUnsafeBytes { o in
                try send.withUnsafeMutableBytes { s in
                    try Self.check(kd_mpi_allgather_bytes(comm, o.baseAddress, s.baseAddress, Int32(o.count)), "gathering gradients")
                }
            }
            (values + start).update(from: send, count: n)
            count(2 * (size - 1) * segment * MemoryLayout<Float>.stride)
        }
    }
}

/// A device owned by another rank of an MPI job, as this rank sees it: its memory and its work are
/// that rank's, so it allocates and runs nothing here; bytes reach it as messages to its rank,
/// which that rank receives into a tensor on the device, and come back from it the same way.
public final class RankBackend: DeviceBackend, @unchecked Sendable {
    public let communicator: Communicator
    /// The device's rank in `communicator`.
    public let rank: Int

    public init(rank: Int, of communicator: Communicator) {
        self.communicator = communicator
        self.rank = rank
    }

    public var location: String? { "rank \(rank)" }
    public var isCurrent: Bool { false }
    public func stop() {}

    public func allocate(bytes: Int, for device: Device) throws -> UnsafeMutableRawPointer {
        throw KDError("\(device): its memory is that rank's; a tensor reaches it by send(to:tag:)")
    }

    public func deallocate(_ pointer: UnsafeMutableRawPointer, bytes: Int) {
        preconditionFailure("a device on another rank lent no memory here")
    }

    public func run(_ job: @escaping () -> Void) throws {
        throw KDError("device on rank \(rank): its work runs on that rank")
    }

    public func copyIn(_ bytes: UnsafeRawBufferPointer, tag: Int) throws {
        try communicator.send(bytes, to: rank, tag: tag)
    }

    public func copyOut(into bytes: UnsafeMutableRawBufferPointer, tag: Int) throws {
        try communicator.receive(into: bytes, from: rank, tag: tag)
    }
}
