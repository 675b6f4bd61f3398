import Foundation
import KDCore

/// The consecutive stages of a model that one process holds when the model is split over the
/// ranks of an MPI job: the embedding with the first stage, its decoder layers, and the final norm
/// and output projection with the last. A teacher's parts run forward; a student's parts before
/// its last also train (`forward(training:)`, `backward`), with adapters on their linears. The
/// model is placed over all of its devices as `CausalLM.load` places it, and the part's weights,
/// kernels and their order are `CausalLM`'s, so a model split into parts gives the whole model's bits.
public final class ModelPart: AdaptedModel {
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
    public var linears: [Linear] { layers.flatMap(\.linears) }

    /// As `CausalLM.activationCheckpointing`: a training forward keeps each layer's input only,
    /// and `backward` recomputes the layer first.
    public var activationCheckpointing = false {
        didSet { DecoderLayer.setKeep(layers, checkpointing: activationCheckpointing, keepingProducts: layersKeepingProducts) }
    }

    /// As `CausalLM.layersKeepingProducts`.
    public var layersKeepingProducts: Set<Int> = [] {
        didSet { DecoderLayer.setKeep(layers, checkpointing: activationCheckpointing, keepingProducts: layersKeepingProducts) }
    }

    /// The context of the last training forward, for `backward`.
    private var trainingContext: ForwardContext?

    /// Loads the stages placed on the devices of this process in `group`, which lists all of the
    /// model's devices (the others in other processes); they must be consecutive stages. Only
    /// their weights are read.
    public static func load(_ checkpoint: Checkpoint, on group: DeviceGroup, dtype: WeightDType = .auto) throws -> ModelPart {
        try checkpoint.validate()
        let spec = checkpoint.spec
        let placement = Placement(spec: spec, deviceCount: group.count, elementSize: checkpoint.heldElementSize(dtype))
        try placement.checkCapacity(of: group)
        let positions = placement.stages.indices.filter { group.devices[placement.stages[$0].deviceIndex].isLocal }
        guard let first = positions.first, positions == Array(first..<first + positions.count) else {
            throw KDError("a model part must hold consecutive stages; devices "
                + "\(group.devices.filter(\.isLocal).map(\.id)) of this process hold stages \(positions)")
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
    /// final-normed hidden states on its last device, the others their layers' output. With
    /// `training` (not for the last part), dropout is on and the layers keep what `backward` needs.
    public func forward(_ batch: TokenBatch, input: Tensor?, training: Bool = false) throws -> Tensor {
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
        x = try CausalLM.forward(x, through: stages, layers: layers, group: group, move: { try $0.to($1) }) { layer, current in
            try layer.forward(current, context: context, training: training)
        }
        trainingContext = training ? context : nil
        guard holdsLast, let finalNorm else { return x }
        return try CausalLM.finalNorm(try x.to(lastDevice), weight: finalNorm, spec: spec).normed
    }

    /// What a checkpointed training forward keeps for `backward` (the context and each layer's
    /// input, and its products where it keeps them), set aside while the part runs the next
    /// micro-batches' forwards (a pipeline stage).
    public struct PendingBackward {
        let context: ForwardContext
        let kept: [DecoderLayer.Kept]
    }

    /// Takes what the last training forward kept for `backward`; it must have been checkpointed.
    public func setAside() throws -> PendingBackward {
        guard let context = trainingContext else { throw KDError("model part: nothing to set aside without a training forward") }
        let kept = layers.compactMap { $0.takeKept() }
        guard kept.count == layers.count else {
            throw KDError("model part: only a checkpointed training forward can be set aside")
        }
        trainingContext = nil
        return PendingBackward(context: context, kept: kept)
    }

    /// Puts back what `setAside` took, for its `backward`.
    public func restore(_ pending: PendingBackward) {
        for (layer, kept) in zip(layers, pending.kept) { layer.restoreKept(kept) }
        trainingContext = pending.context
    }

    /// Backward from d(the part's output) [tokens, hidden] through its layers in reverse, as
    /// `CausalLM.backward` runs them (a checkpointed layer recomputes first); the adapters'
    /// gradients accumulate. Returns d(its input) on its first device, or nil for the first part
    /// (the embedding does not train).
    public func backward(_ dOutput: Tensor) throws -> Tensor? {
        guard let context = trainingContext, !holdsLast else {
            throw KDError("model part backward without a training forward pass")
        }
        trainingContext = nil
        let dx = try CausalLM.backward(dOutput, through: stages, layers: layers, group: group, context: context,
                                       move: { try $0.to($1) }, timed: { _, body in try body() })
        return holdsFirst ? nil : try dx.to(firstDevice)
    }

    /// logits [rows, vocab] = hidden rows · Wᵀ through the output projection (the last part).
    public func project(_ hidden: UnsafePointer<Float>, rows: Int, into logits: UnsafeMutablePointer<Float>) throws {
        guard let head else { throw KDError("only the last part of a model holds its output projection") }
        try WeightProducts.linear(hidden, rows: rows, weight: head, into: logits)
    }
}
