import Foundation
import KDCore

/// Where a run's models live in its MPI job.
///
/// The job is `run.data_parallel` replicas of `ranksPerReplica` consecutive ranks each. Within a
/// replica, `devices.ranks` gives each device's rank (by default every device on one rank, or
/// device i on rank i when the job has data_parallel × devices.count ranks). The student is on one
/// rank of its replica. The teacher may share it, or be on other ranks, then in consecutive parts
/// of its stages (its devices in order, one block of them a rank), which serve the student's rank
/// its logits (`RemoteTeacher`). Alone, kd is the one rank of one replica.
public struct RankLayout {
    public let world: Communicator
    public let ranksPerReplica: Int
    /// Each device's rank within its replica.
    public let deviceRanks: [Int]
    public let replica: Int
    /// World ranks of this replica's teacher parts (in stage order) and of its student.
    public let teacherRanks: [Int]
    public let studentRank: Int
    /// The replicas' student ranks, on a student rank (for the data-parallel sums); nil on a rank
    /// that holds only a teacher.
    public let replicas: Communicator?

    public var holdsStudent: Bool { world.rank == studentRank }
    /// Whether this rank runs (part of) the teacher: beside its student, or for a student on another rank.
    public var holdsTeacher: Bool { teacherRanks.contains(world.rank) }
    public var teacherElsewhere: Bool { teacherRanks != [studentRank] }
    /// Whether this rank writes the run's files and prints (replica 0's student).
    public var writes: Bool { holdsStudent && replica == 0 }

    /// The ranks (within a replica) of the teacher's parts in stage order: its devices in order, one
    /// block of them a rank; the student's rank when a cache stands in for the teacher.
    static func teacherRanks(_ config: RunConfig, deviceRanks: [Int], studentRank: Int) -> [Int] {
        if config.data.teacherCache != nil { return [studentRank] }
        var ranks: [Int] = []
        for rank in config.teacher.devices.map({ deviceRanks[$0] }) where ranks.last != rank { ranks.append(rank) }
        return ranks
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
        let studentRanks = Set(config.student.devices.map { local[$0] })
        guard studentRanks.count == 1, let student = studentRanks.first else {
            throw KDError("student.devices \(config.student.devices) are on ranks \(studentRanks.sorted()): the student's stages "
                + "across ranks are not supported yet (put its devices on one rank; the teacher may be on others)")
        }
        let teacher = Self.teacherRanks(config, deviceRanks: local, studentRank: student)
        guard Set(teacher).count == teacher.count else {
            throw KDError("teacher.devices \(config.teacher.devices) are on ranks \(config.teacher.devices.map { local[$0] }): "
                + "each rank must hold consecutive stages of the teacher")
        }
        guard teacher == [student] || !teacher.contains(student) else {
            throw KDError("teacher.devices \(config.teacher.devices) are on ranks \(teacher), one of them the student's: a "
                + "teacher split across ranks needs ranks of its own")
        }
        for r in 0..<perReplica where r != student && !teacher.contains(r) {
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
        let isStudent = world.rank == studentRank
        let group = try world.split(color: isStudent ? 0 : 1, key: replica)
        self.replicas = isStudent ? group : nil
    }
}
