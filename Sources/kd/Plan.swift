import ArgumentParser
import Foundation
import KDCore
import KDTrain

struct Plan: KDCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print the placement and memory plan of a training run (reads config.json only).")

    @Option(help: "Run config YAML (- for stdin).") var config: String
    @Option(name: .customLong("set"), help: "Override a key: key.path=value (repeatable).") var overrides: [String] = []

    func execute() throws {
        let run = try RunConfig.load(path: config, overrides: overrides)
        let plan = try MemoryPlan(config: run)
        Console.json(plan.json)
        for device in plan.devices {
            let budget = device.capacityBytes.map(formatBytes) ?? "unlimited"
            let layers = device.layers.sorted { $0.key > $1.key }.compactMap { role, layers in
                layers.isEmpty ? nil : "\(role) layers \(layers.first!)-\(layers.last!)"
            }
            let what = (layers + device.holds).joined(separator: ", ")
            let held = device.heldDTypes.isEmpty ? "" : " " + device.heldDTypes.sorted().joined(separator: "+")
            Console.info(String(format: "device %d  %-20@ %@ of %@%@  %@", device.id, device.role + held,
                                formatBytes(device.totalBytes), budget, device.fits ? "" : "  OVER BUDGET",
                                what.isEmpty ? "" : "(\(what))"))
        }
        if !plan.fits {
            let over = plan.devices.filter { !$0.fits }.map { "device \($0.id)" }.joined(separator: ", ")
            throw KDError("the run does not fit: \(over) over budget")
        }
    }
}
