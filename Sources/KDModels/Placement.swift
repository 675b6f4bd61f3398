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
        /// Bytes of the parameters this device holds, in the dtypes they are held in (a tied
        /// embedding copied to the last stage counts on both).
        public let parameterBytes: Int
        public let parameterCount: Int
    }

    public let stages: [Stage]

    /// Stages balanced by parameter count; `elementSize(name)` is the bytes per element a tensor
    /// is held in (f32 unless the model is held otherwise, see `Checkpoint.heldElementSize`).
    public init(spec: ModelSpec, deviceCount: Int, elementSize: (String) -> Int = { _ in MemoryLayout<Float>.stride }) {
        // A tied lm_head needs its own copy of the embedding when it sits on another device.
        let tiedApart = spec.tieWordEmbeddings && deviceCount > 1
        let headCount = spec.headParameterCount + (tiedApart ? spec.embeddingParameterCount : 0)
        let counts = [spec.embeddingParameterCount] + (0..<spec.numLayers).map(spec.layerParameterCount) + [headCount]
        func bytes(_ tensors: [(name: String, shape: [Int])]) -> Int {
            tensors.reduce(0) { $0 + $1.shape.reduce(1, *) * elementSize($1.name) }
        }
        let embedding = ("model.embed_tokens.weight", [spec.vocabSize, spec.hiddenSize])
        var head = [("model.norm.weight", [spec.hiddenSize])]
        if !spec.tieWordEmbeddings { head.append(("lm_head.weight", [spec.vocabSize, spec.hiddenSize])) }
        if tiedApart { head.append(embedding) }
        let itemBytes = [bytes([embedding])] + (0..<spec.numLayers).map { bytes(spec.layerTensors($0)) } + [bytes(head)]
        let ranges = balancedContiguousPartition(counts, parts: deviceCount)
        stages = ranges.enumerated().map { device, items in
            let count = items.reduce(0) { $0 + counts[$1] }
            // Item 0 is the embedding and item numLayers+1 the head; layer i is item i+1.
            let first = max(items.lowerBound, 1) - 1
            let end = min(items.upperBound, spec.numLayers + 1) - 1
            return Stage(
                deviceIndex: device, layers: first < end ? first..<end : 0..<0,
                holdsEmbedding: items.contains(0), holdsHead: items.contains(spec.numLayers + 1),
                parameterBytes: items.reduce(0) { $0 + itemBytes[$1] }, parameterCount: count)
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
