import ArgumentParser
import Foundation
import KDCore
import KDTrain

struct Plan: KDCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print the placement and memory plan of a training run (reads config.json only).",
        discussion: """
            With run.data_parallel N, also each MPI rank's memory and the bytes it sends per step; with --hostfile \
            (Open MPI's format), which host each rank lands on under mpirun's default mapping and each host's total.
            """)

    @Option(help: "Run config YAML (- for stdin).") var config: String
    @Option(name: .customLong("set"), help: "Override a key: key.path=value (repeatable).") var overrides: [String] = []
    @Option(help: "An Open MPI hostfile: place the ranks on its hosts.") var hostfile: String?

    func execute() throws {
        let run = try RunConfig.load(path: config, overrides: overrides)
        let plan = try MemoryPlan(config: run)
        let hosts = try hostfile.map { try Hostfile(path: $0) }
        var json = plan.json
        let placement = hosts?.placement(ranks: plan.ranks.count)
        if let hosts, let placement {
            json["hosts"] = hosts.hosts.enumerated().map { index, host -> [String: Any] in
                let ranks = plan.ranks.filter { placement[$0.rank] == index }
                return ["host": host.name, "slots": host.slots, "ranks": ranks.map(\.rank),
                        "bytes": ranks.reduce(0) { $0 + $1.bytes }, "sent_bytes_per_step": ranks.reduce(0) { $0 + $1.sentBytesPerStep }]
            }
        }
        Console.json(json)
        for device in plan.devices {
            let budget = device.capacityBytes.map(formatBytes) ?? "unlimited"
            let layers = device.layers.sorted { $0.key > $1.key }.compactMap { role, layers in
                layers.isEmpty ? nil : "\(role) layers \(layers.first!)-\(layers.last!)"
            }
            let kept = device.layersKeepingProducts
            let products = kept.isEmpty ? [] : ["recomputing only attention in layers \(kept.first!)-\(kept.last!)"]
            let what = (layers + device.holds + products).joined(separator: ", ")
            let held = device.heldDTypes.isEmpty ? "" : " " + device.heldDTypes.sorted().joined(separator: "+")
            Console.info(String(format: "device %d  %-20@ %@ of %@%@  %@", device.id, device.role + held,
                                formatBytes(device.totalBytes), budget, device.fits ? "" : "  OVER BUDGET",
                                what.isEmpty ? "" : "(\(what))"))
        }
        if plan.ranks.count > 1 || hosts != nil {
            for rank in plan.ranks {
                let host = placement.map { "  on \(hosts!.hosts[$0[rank.rank]].name)" } ?? ""
                Console.info("rank \(rank.rank)  devices \(rank.devices.map(String.init).joined(separator: ","))  "
                    + "\(formatBytes(rank.bytes)), sends \(formatBytes(rank.sentBytesPerStep)) a step\(host)")
            }
            if let hosts, plan.ranks.count > hosts.slots {
                Console.info("note: \(plan.ranks.count) ranks on \(hosts.slots) slots: mpirun needs --oversubscribe")
            }
        }
        if !plan.fits {
            let over = plan.devices.filter { !$0.fits }.map { "device \($0.id)" }.joined(separator: ", ")
            throw KDError("the run does not fit: \(over) over budget")
        }
    }
}
