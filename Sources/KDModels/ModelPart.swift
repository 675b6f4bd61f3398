import Foundation
import KDCore

/// The consecutive stages of a model that one process holds when the model is split over the
/// ranks of an MPI job: the embedding with the first stage, its decoder layers, and the final norm
/// and output projection with the last. Forward only (a teacher). The model is placed over all of
/// its devices as `CausalLM.load` places it, and the part's weights, kernels and their order are
/// `CausalLM`'s, so a model split into parts gives the whole model's bits.
public final class ModelPart {
    public let spec: ModelSpec
    public let group: DeviceGroup
    /// The stages held here, in order.
    public let stages: [Placement.Stage]
    let embedding: Tensor?
    let layers: [DecoderLayer]
    let finalNorm: Tensor?
    let head: Tensor?

    public var holdsFirst: Bool { stages[0].holdsEmbedding }
    public var holdsLast: Bool { stages[stages.count - 1].holdsHead }
    public var firstDevice: Device { group.devices[stages[0].deviceIndex] }
    public var lastDevice: Device { group.devices[stages[stages.count - 1].deviceIndex] }

    /// Loads the stages placed on the devices at `held` (indices into `group`, which lists all of
    /// the model's devices); they must be consecutive stages. Only their weights are read.
    public static func load(_ checkpoint: Checkpoint, on group: DeviceGroup, holding held: Set<Int>, dtype: WeightDType = .auto)
        throws -> ModelPart {
        try checkpoint.validate()
        let spec = checkpoint.spec
        let placement = Placement(spec: spec, deviceCount: group.count, elementSize: checkpoint.heldElementSize(dtype))
        try placement.checkCapacity(of: group)
        let positions = placement.stages.indices.filter { held.contains(placement.stages[$0].deviceIndex) }
        guard let first = positions.first, positions == Array(first..<first + positions.count) else {
            throw KDError("a model part must hold consecutive stages; devices \(held.sorted()) hold stages \(positions)")
        }
        let stages = positions.map { placement.stages[$0] }
        let loaded = try CausalLM.loadStages(stages, from: checkpoint, on: group, dtype: dtype)
        return ModelPart(spec: spec, group: group, stages: stages, embedding: loaded.embedding, layers: loaded.layers,
                         finalNorm: loaded.finalNorm, head: loaded.head)
    }

    init(spec: ModelSpec, group: DeviceGroup, stages: [Placement.Stage], embedding: Tensor?, layers: [DecoderLayer],
         finalNorm: Tensor?, head: Tensor?) {
        self.spec = spec
        self.group = group
        self.stages = stages
        self.embedding = embedding
        self.layers = layers
        self.finalNorm = finalNorm
        self.head = head
    }

    /// The part's output for `batch` [tokens, hidden]: from the token ids (the first part) or
    /// `input`, the stages before's output, through its layers; the last part returns the
    /// final-normed hidden states on its last device, the others their layers' output.
    public func forward(_ batch: TokenBatch, input: Tensor?) throws -> Tensor {
        let context = ForwardContext(batch: batch, headDim: spec.headDim, ropeTheta: spec.ropeTheta)
        var x: Tensor
        if holdsFirst {
            try CausalLM.checkTokens(batch, spec: spec)
            x = try CausalLM.embed(batch.inputIDs.map(Int.init), from: embedding ?? head!, spec: spec)
        } else {
            guard let input else { throw KDError("a model part without the first stage needs the stages before's output") }
            try requireShape(input, [batch.tokenCount, spec.hiddenSize], "model part input")
            x = input
        }
        var offset = 0
        for stage in stages where !stage.layers.isEmpty {
            let device = group.devices[stage.deviceIndex]
            x = try x.to(device)
            let current = x, first = offset
            try device.run { [layers] in
                for i in 0..<stage.layers.count { try layers[first + i].forward(current, context: context) }
            }
            offset += stage.layers.count
        }
        guard holdsLast, let finalNorm else { return x }
        return try CausalLM.finalNorm(try x.to(lastDevice), weight: finalNorm, spec: spec).normed
    }

    /// logits [rows, vocab] = hidden rows · Wᵀ through the output projection (the last part).
    public func project(_ hidden: UnsafePointer<Float>, rows: Int, into logits: UnsafeMutablePointer<Float>) throws {
        guard let head else { throw KDError("only the last part of a model holds its output projection") }
        try WeightProducts.linear(hidden, rows: rows, weight: head, into: logits)
    }
}
