import Foundation
import KDCore

/// Where a run's models live in its MPI job.
///
/// The job is `run.data_parallel` replicas of `ranksPerReplica` consecutive ranks each. Within a
/// replica, `devices.ranks` gives each device's rank (by default every device on one rank, or
/// device i on rank i when the job has data_parallel × devices.count ranks). Each model is on one
/// rank of its replica; the teacher may be on another rank than the student, and then serves the
/// student's rank its logits (`RemoteTeacher`). Alone, kd is the one rank of one replica.
public struct RankLayout {
    public let world: Communicator
    public let ranksPerReplica: Int
    public let replica: Int
    /// World ranks of this replica's teacher and student.
    public let teacherRank: Int
    public let studentRank: Int
    /// The replicas' student ranks, on a student rank (for the data-parallel sums); nil on a rank
    /// that holds only a teacher.
    public let replicas: Communicator?

    public var holdsStudent: Bool { world.rank == studentRank }
    /// Whether this rank runs the teacher: beside its student, or for a student on another rank.
    public var holdsTeacher: Bool { world.rank == teacherRank }
    public var teacherElsewhere: Bool { teacherRank != studentRank }
    /// Whether this rank writes the run's files and prints (replica 0's student).
    public var writes: Bool { holdsStudent && replica == 0 }

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
        func rank(of model: RunConfig.Model, _ name: String) throws -> Int {
            let ranks = Set(model.devices.map { local[$0] })
            guard ranks.count == 1 else {
                throw KDError("\(name).devices \(model.devices) are on ranks \(ranks.sorted()): one model's stages across ranks "
                    + "are not supported yet (put each model's devices on one rank; the teacher may be on another than the student)")
            }
            return ranks.first!
        }
        let student = try rank(of: config.student, "student")
        let teacher = config.data.teacherCache == nil ? try rank(of: config.teacher, "teacher") : student
        for r in 0..<perReplica where r != student && r != teacher {
            throw KDError("devices.ranks \(local): rank \(r) of each replica holds neither model"
                + (config.data.teacherCache != nil ? " (with data.teacher_cache the teacher is not run)" : ""))
        }
        self.world = world
        ranksPerReplica = perReplica
        replica = world.rank / perReplica
        teacherRank = replica * perReplica + teacher
        studentRank = replica * perReplica + student
        let isStudent = world.rank == studentRank
        let group = try world.split(color: isStudent ? 0 : 1, key: replica)
        self.replicas = isStudent ? group : nil
    }
}
