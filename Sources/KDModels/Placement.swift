import KDCore

/// Where a model's pieces go on a device group: contiguous stages of decoder layers balanced by
/// parameter bytes, the embedding with the first stage, the final norm and lm_head with the last.
public struct Placement: Sendable, Equatable {
    public struct Stage: Sendable, Equatable {
        /// Position of the device within its group.
        public let deviceIndex: Int
        public let layers: Range<Int>
        public let holdsEmbedding: Bool
        public let holdsHead: Bool
        /// f32 bytes of the parameters this device holds (a tied embedding copied to the last
        /// stage counts on both).
        public let parameterBytes: Int
        public let parameterCount: Int
    }

    public let stages: [Stage]

    public init(spec: ModelSpec, deviceCount: Int) {
        let f32 = MemoryLayout<Float>.stride
        // A tied lm_head needs its own copy of the embedding when it sits on another device.
        let headCount = spec.headParameterCount + (spec.tieWordEmbeddings && deviceCount > 1 ? spec.embeddingParameterCount : 0)
        let counts = [spec.embeddingParameterCount] + (0..<spec.numLayers).map(spec.layerParameterCount) + [headCount]
        let ranges = balancedContiguousPartition(counts, parts: deviceCount)
        stages = ranges.enumerated().map { device, items in
            let count = items.reduce(0) { $0 + counts[$1] }
            // Item 0 is the embedding and item numLayers+1 the head; layer i is item i+1.
            let first = max(items.lowerBound, 1) - 1
            let end = min(items.upperBound, spec.numLayers + 1) - 1
            return Stage(
                deviceIndex: device, layers: first < end ? first..<end : 0..<0,
                holdsEmbedding: items.contains(0), holdsHead: items.contains(spec.numLayers + 1),
                parameterBytes: count * f32, parameterCount: count)
        }
    }

    /// The stage holding decoder layer `layer`.
    public func stage(ofLayer layer: Int) -> Stage {
        stages.first { $0.layers.contains(layer) }!
    }

    /// Human-readable lines, one per device.
    public func describe(devices: [Device]) -> [String] {
        stages.map { stage in
            var parts: [String] = []
            if stage.holdsEmbedding { parts.append("embedding") }
            if !stage.layers.isEmpty {
                parts.append(stage.layers.count == 1 ? "layer \(stage.layers.lowerBound)"
                             : "layers \(stage.layers.lowerBound)-\(stage.layers.upperBound - 1)")
            }
            if stage.holdsHead { parts.append("norm + lm_head") }
            let what = parts.isEmpty ? "no layers" : parts.joined(separator: ", ")
            return "\(devices[stage.deviceIndex]): \(what) (\(formatBytes(stage.parameterBytes)))"
        }
    }
}
