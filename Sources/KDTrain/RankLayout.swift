import Foundation
import KDCore
import KDModels

/// Where a run's models live in its MPI job.
///
/// The job is `run.data_parallel` replicas of `ranksPerReplica` consecutive ranks each. Within a
/// replica, `devices.ranks` gives each device's rank (by default every device on one rank, or
/// device i on rank i when the job has data_parallel × devices.count ranks). Each model's stages
/// follow its devices in order, one block of consecutive stages a rank. The student's last block
/// (its output projection and the loss) is on the student's rank, which drives the replica; its
/// blocks before run on ranks of their own (`StudentStages`), passing activations forward and
/// gradients back. The teacher may share the student's rank, or be on ranks of its own, whose
/// last part serves the student's rank its logits (`RemoteTeacher`). Alone, kd is the one rank of
/// one replica.
public struct RankLayout {
    public let world: Communicator
    public let ranksPerReplica: Int
    /// Each device's rank within its replica.
    public let deviceRanks: [Int]
    public let replica: Int
    /// World ranks of this replica's teacher parts (in stage order) and of its student.
    public let teacherRanks: [Int]
    public let studentRank: Int
    /// World ranks of this replica's student stages before the student's rank, in stage order.
    public let studentPartRanks: [Int]
    /// The ranks that hold the same piece of the run in every replica, on a rank holding (part of)
    /// the student: the replicas' student ranks for the data-parallel sums, or a student part's
    /// counterparts, which sum their stages' gradients the same way. Nil on a teacher's rank.
    public let replicas: Communicator?
    /// The replica's devices: this rank's are devices of this process, the others' are reached
    /// through their ranks (`RankBackend`) and hold nothing here.
    public let devices: DeviceGroup

    public var holdsStudent: Bool { world.rank == studentRank }
    /// Whether this rank runs student stages for the student's rank.
    public var holdsStudentPart: Bool { studentPartRanks.contains(world.rank) }
    /// Whether this rank runs (part of) the teacher: beside its student, or for a student on another rank.
    public var holdsTeacher: Bool { teacherRanks.contains(world.rank) }
    public var teacherElsewhere: Bool { teacherRanks != [studentRank] }
    /// Whether this rank writes the run's files and prints (replica 0's student).
    public var writes: Bool { holdsStudent && replica == 0 }

    /// The ranks (within a replica) of a model's parts in stage order: its devices in order, one
    /// block of them a rank.
    static func blocks(_ devices: [Int], deviceRanks: [Int]) -> [Int] {
        var ranks: [Int] = []
        for rank in devices.map({ deviceRanks[$0] }) where ranks.last != rank { ranks.append(rank) }
        return ranks
    }

    /// The ranks (within a replica) of the teacher's parts in stage order; the student's rank when
    /// a cache stands in for the teacher.
    static func teacherRanks(_ config: RunConfig, deviceRanks: [Int], studentRank: Int) -> [Int] {
        if config.data.teacherCache != nil { return [studentRank] }
        return blocks(config.teacher.devices, deviceRanks: deviceRanks)
    }

    public init(config: RunConfig, world: Communicator = .world) throws {
        let replicas = config.run.dataParallel, devices = config.deviceCount
        let local: [Int]
        if let ranks = config.devices.ranks {
            local = ranks
        } else if world.size == replicas * devices && devices > 1 {
            local = Array(0..<devices)
        } else {
            local = [Int](repeating: 0, count: devices)
        }
        let perReplica = (local.max() ?? 0) + 1
        guard world.size == replicas * perReplica else {
            if world.size == 1 {
                throw KDError("run.data_parallel is \(replicas) with \(perReplica) rank\(perReplica == 1 ? "" : "s") a replica: "
                    + "start \(replicas * perReplica) MPI ranks (mpirun -n \(replicas * perReplica) kd train ...)")
            }
            throw KDError("kd runs as \(world.size) MPI ranks but the run needs run.data_parallel \(replicas) × \(perReplica) "
                + "(devices.ranks \(local)): start one rank per device rank of each replica")
        }
        let studentBlocks = Self.blocks(config.student.devices, deviceRanks: local)
        guard Set(studentBlocks).count == studentBlocks.count, let student = studentBlocks.last else {
            throw KDError("student.devices \(config.student.devices) are on ranks \(config.student.devices.map { local[$0] }): "
                + "each rank must hold consecutive stages of the student")
        }
        let parts = studentBlocks.dropLast()
        if !parts.isEmpty && config.distill.onPolicy.fraction > 0 {
            throw KDError("distill.on_policy samples with the whole student in one process, but student.devices "
                + "\(config.student.devices) are on ranks \(studentBlocks): put them on one rank, or set distill.on_policy.fraction 0")
        }
        let teacher = Self.teacherRanks(config, deviceRanks: local, studentRank: student)
        guard Set(teacher).count == teacher.count else {
            throw KDError("teacher.devices \(config.teacher.devices) are on ranks \(config.teacher.devices.map { local[$0] }): "
                + "each rank must hold consecutive stages of the teacher")
        }
        guard teacher == [student] || Set(teacher).isDisjoint(with: studentBlocks) else {
            throw KDError("teacher.devices \(config.teacher.devices) are on ranks \(teacher) and student.devices "
                + "\(config.student.devices) on ranks \(studentBlocks): a teacher split across ranks, or beside a student's "
                + "earlier stages, needs ranks of its own")
        }
        for r in 0..<perReplica where !studentBlocks.contains(r) && !teacher.contains(r) {
            throw KDError("devices.ranks \(local): rank \(r) of each replica holds neither model"
                + (config.data.teacherCache != nil ? " (with data.teacher_cache the teacher is not run)" : ""))
        }
        self.world = world
        ranksPerReplica = perReplica
        deviceRanks = local
        let replica = world.rank / perReplica
        self.replica = replica
        teacherRanks = teacher.map { replica * perReplica + $0 }
        studentRank = replica * perReplica + student
        studentPartRanks = parts.map { replica * perReplica + $0 }
        // One group per piece of the student (its rank: 0; its part p: p + 1), one for teachers.
        let piece = studentBlocks.firstIndex(of: world.rank % perReplica).map { $0 == studentBlocks.count - 1 ? 0 : $0 + 1 }
        let group = try world.split(color: piece ?? studentBlocks.count, key: replica)
        self.replicas = piece == nil ? nil : group
        let capacity = config.devices.memoryPerDevice?.bytes, mine = world.rank % perReplica
        self.devices = try DeviceGroup(local.enumerated().map { device, rank in
            rank == mine ? Device(id: device, capacity: capacity)
                : Device(id: device, capacity: capacity, backend: RankBackend(rank: replica * perReplica + rank, of: world))
        })
    }

    /// The first and the last of `model`'s devices (`devices.*.devices`, in order) held by `rank`,
    /// a world rank of this replica.
    func devices(of model: [Int], onRank rank: Int) -> (first: Device, last: Device) {
        let held = model.filter { deviceRanks[$0] == rank % ranksPerReplica }
        return (devices.devices[held.first!], devices.devices[held.last!])
    }
}

extension RankLayout {
    /// The stages of `model` (the run's teacher or student, `role`) on this process's devices, loaded
    /// once they are known to fit their budgets (`plan`); `onLoad` gets a line.
    func loadPart(_ model: RunConfig.Model, role: String, config: RunConfig, plan: MemoryPlan, onLoad: (String) -> Void)
        throws -> ModelPart {
        let group = try DeviceGroup(model.devices.map { devices.devices[$0] })
        try plan.requireFit(devices: Set(group.devices.filter(\.isLocal).map(\.id)), model: role)
        let start = ContinuousClock.now
        let part = try ModelPart.load(try Checkpoint(directory: model.path), on: group, dtype: model.dtype)
        let layers = part.stages.reduce(0) { $0 + $1.layers.count }
        onLoad(String(format: "loaded %d %@ layers in %.1f s", layers, role, (ContinuousClock.now - start).seconds))
        return part
    }
}
