import Foundation
import KDCore
import Synchronization

/// The first stages of a model when they run in other processes (the ranks of an MPI job) and
/// this process holds the rest: what `CausalLM` asks of them. Their kernels are the in-process
/// stages', so the model gives the same bits wherever its stages run.
public protocol RemoteStages: AnyObject {
    /// Whether their adapters are set aside (the base model), as `withAdaptersDetached` asks.
    var adaptersDetached: Bool { get set }
    /// Their output for `batch` [tokens, hidden], received onto `device`. A training forward
    /// keeps what their backward needs.
    func forward(_ batch: TokenBatch, training: Bool, onto device: Device) throws -> Tensor
    /// Backward from d(their output) [tokens, hidden]: their adapters' gradients accumulate where
    /// they are.
    func backward(_ dOutput: Tensor) throws
}

/// A decoder-only language model placed on a device group: the embedding on the first device,
/// contiguous stages of decoder layers, the final norm and lm_head on the last device.
/// Activations cross from stage to stage with `Tensor.to(_:)`. With `upstream`, the first stages
/// run in other processes and this one holds the rest (the head among them).
public final class CausalLM: AdaptedModel {
    public let spec: ModelSpec
    public let group: DeviceGroup
    public let placement: Placement
    /// The stages before this process's, when they run elsewhere.
    public let upstream: (any RemoteStages)?
    /// The embedding [vocab, hidden] on the first device; nil when it is tied to the output
    /// projection on the same device (token rows are then read from `lmHead`), or held upstream.
    public let embedding: Tensor?
    /// The decoder layers held here, in order (all of them without `upstream`).
    public let layers: [DecoderLayer]
    public let finalNorm: Tensor
    /// The output projection [vocab, hidden] on the last device, held as the checkpoint stores it
    /// (or as `WeightDType` says): logits = x·Wᵀ and d(hidden) = d(logits)·W through `WeightProducts`.
    public let lmHead: Tensor
    /// Bytes of activations and their gradients this model has copied between its devices.
    public var movedBytes: Int { moved.load(ordering: .relaxed) }
    private let moved = Atomic<Int>(0)

    init(spec: ModelSpec, group: DeviceGroup, placement: Placement, upstream: (any RemoteStages)? = nil, embedding: Tensor?,
         layers: [DecoderLayer], finalNorm: Tensor, lmHead: Tensor) {
        self.spec = spec
        self.group = group
        self.placement = placement
        self.upstream = upstream
        self.embedding = embedding
        self.layers = layers
        self.finalNorm = finalNorm
        self.lmHead = lmHead
    }

    /// Places the checkpoint on `group` and loads each stage's weights onto its device, held as
    /// `dtype` says. The plan is checked against every device's budget before any weight is read.
    /// The first stages may be on devices of other processes, which `upstream` runs; the rest,
    /// the head among them, must be on devices of this one.
    public static func load(_ checkpoint: Checkpoint, on group: DeviceGroup, dtype: WeightDType = .auto,
                            after upstream: (any RemoteStages)? = nil) throws -> CausalLM {
        try checkpoint.validate()
        let spec = checkpoint.spec
        let placement = Placement(spec: spec, deviceCount: group.count, elementSize: checkpoint.heldElementSize(dtype))
        try placement.checkCapacity(of: group)
        let local = localStages(placement, group)
        guard !local.isEmpty else { throw KDError("the model's last stage, with its output projection, must be held here") }
        guard local.allSatisfy({ group.devices[$0.deviceIndex].isLocal }) else {
            throw KDError("the model's stages after the first on this process's devices must be on them too, not "
                + "\(local.map { group.devices[$0.deviceIndex] }.filter { !$0.isLocal }.map(\.description))")
        }
        guard (local.startIndex > 0) == (upstream != nil) else {
            throw KDError(upstream == nil ? "the model's first stages are on devices of other processes, and nothing runs them"
                : "the model's stages are all on devices of this process, with stages upstream")
        }
        let held = try loadStages(Array(local), from: checkpoint, on: group, dtype: dtype)
        return CausalLM(spec: spec, group: group, placement: placement, upstream: upstream, embedding: held.embedding,
                        layers: held.layers, finalNorm: held.finalNorm!, lmHead: held.head!)
    }

    /// The stages held in this process: those from the first on one of its devices.
    var localStages: ArraySlice<Placement.Stage> { Self.localStages(placement, group) }

    static func localStages(_ placement: Placement, _ group: DeviceGroup) -> ArraySlice<Placement.Stage> {
        placement.stages.drop { !group.devices[$0.deviceIndex].isLocal }
    }

    /// The weights of `stages` (consecutive, in order), each loaded onto its device of `group`.
    static func loadStages(_ stages: [Placement.Stage], from checkpoint: Checkpoint, on group: DeviceGroup, dtype: WeightDType)
        throws -> (embedding: Tensor?, layers: [DecoderLayer], finalNorm: Tensor?, head: Tensor?) {
        let spec = checkpoint.spec
        var layers: [DecoderLayer] = []
        var embedding: Tensor?
        var finalNorm: Tensor?
        var head: Tensor?
        for stage in stages {
            let device = group.devices[stage.deviceIndex]
            // Tied on one device: token rows are read from the head; one copy is kept.
            let tiedHere = spec.tieWordEmbeddings && stage.holdsEmbedding && stage.holdsHead
            try device.run {
                func held(_ name: String) throws -> Tensor { try checkpoint.load(name, on: device, heldAs: dtype) }
                if stage.holdsEmbedding && !tiedHere { embedding = try held("model.embed_tokens.weight") }
                for index in stage.layers {
                    layers.append(try loadLayer(index, from: checkpoint, spec: spec, on: device, dtype: dtype))
                }
                if stage.holdsHead {
                    finalNorm = try held("model.norm.weight")
                    // A tied head placed apart from the embedding reads its own copy onto this device.
                    head = try held(spec.tieWordEmbeddings ? "model.embed_tokens.weight" : "lm_head.weight")
                }
            }
        }
        return (embedding, layers, finalNorm, head)
    }

    static func loadLayer(_ index: Int, from checkpoint: Checkpoint, spec: ModelSpec, on device: Device,
                          dtype: WeightDType) throws -> DecoderLayer {
        let p = "model.layers.\(index)."
        func tensor(_ name: String) throws -> Tensor { try checkpoint.load(p + name, on: device, heldAs: dtype) }
        func linear(_ name: String) throws -> Linear { Linear(name: p + name, weight: try tensor(name + ".weight")) }
        func mlp(_ prefix: String) throws -> MLP {
            MLP(gateProj: try linear(prefix + "gate_proj"), upProj: try linear(prefix + "up_proj"),
                downProj: try linear(prefix + "down_proj"))
        }
        let attention = Attention(
            qProj: try linear("self_attn.q_proj"), kProj: try linear("self_attn.k_proj"),
            vProj: try linear("self_attn.v_proj"), oProj: try linear("self_attn.o_proj"),
            qNorm: try tensor("self_attn.q_norm.weight"), kNorm: try tensor("self_attn.k_norm.weight"),
            heads: spec.numHeads, kvHeads: spec.numKVHeads, headDim: spec.headDim, eps: spec.rmsNormEps)
        let feedForward: FeedForward
        switch spec.feedForward[index] {
        case .dense:
            feedForward = .dense(try mlp("mlp."))
        case .sparse(let experts, let topK, _, let normalize):
            feedForward = .sparse(SparseMoE(
                router: try tensor("mlp.gate.weight"), experts: try (0..<experts).map { try mlp("mlp.experts.\($0).") },
                topK: topK, normalizeTopK: normalize))
        }
        return DecoderLayer(
            index: index, inputNorm: try tensor("input_layernorm.weight"), attention: attention,
            postAttentionNorm: try tensor("post_attention_layernorm.weight"), feedForward: feedForward,
            eps: spec.rmsNormEps)
    }

    /// The device of the first stage held here.
    public var firstDevice: Device { group.devices[localStages.first!.deviceIndex] }
    public var lastDevice: Device { lmHead.device }

    /// Every linear layer, in layer order (where LoRA adapters attach).
    public var linears: [Linear] { layers.flatMap(\.linears) }

    func checkTokens(_ batch: TokenBatch) throws { try Self.checkTokens(batch, spec: spec) }

    static func checkTokens(_ batch: TokenBatch, spec: ModelSpec) throws {
        for (i, id) in batch.inputIDs.enumerated() where id < 0 || Int(id) >= spec.vocabSize {
            throw KDError(
                "token id \(id) at row \(i / max(1, batch.sequenceLength)), position \(i % max(1, batch.sequenceLength)) "
                    + "is outside the vocabulary (vocab_size \(spec.vocabSize))")
        }
    }

    /// Activation checkpointing: in a training forward each decoder layer keeps only its input,
    /// and `backward` recomputes the layer (a second training forward that keeps everything, but
    /// for the down projection's product) just before its backward. The numbers are the same bit
    /// for bit; it costs most of one more forward per layer and saves all but one layer's
    /// activations.
    public var activationCheckpointing = false {
        didSet { DecoderLayer.setKeep(layers, checkpointing: activationCheckpointing, keepingProducts: layersKeepingProducts) }
    }

    /// Under activation checkpointing, the decoder layers (by index) that also keep their products
    /// (q, k, v, the middle residual, gate and up: at Qwen3-8B's shapes 34,816 f32 a token, against
    /// ~85,000 kept without checkpointing), so that their recompute forms none of the layer's
    /// products, only norms, rope and attention (and the adapters' A·x̃). See `DecoderLayer.Keep`;
    /// `train.recompute` chooses them (`MemoryPlan`).
    public var layersKeepingProducts: Set<Int> = [] {
        didSet { DecoderLayer.setKeep(layers, checkpointing: activationCheckpointing, keepingProducts: layersKeepingProducts) }
    }

    /// Where the model reports its time, when set: `forward` (the layers of `hiddenStates`),
    /// `head` (the output projection and its backward), `recompute` (the layers' second forward
    /// under activation checkpointing) and `backward` (the rest of the layers' backward).
    public var timing: PhaseTimes.Scope?

    /// Runs `body`, timed as `phase` of `timing` when the model has one.
    public func timed<T>(_ phase: String, _ body: () throws -> T) rethrows -> T {
        guard let timing else { return try body() }
        return try timing.time(phase, body)
    }

    /// What a training forward keeps for backward beyond the layers' own saved activations.
    private var trainingState: (context: ForwardContext, finalInput: Tensor, finalInverseRMS: Tensor)?

    /// The final-normed hidden states [rows, hidden] on the last device. With `training`, dropout is
    /// on and every layer keeps what its backward needs, or only its input with
    /// `activationCheckpointing` (call `backward` next).
    public func hiddenStates(_ batch: TokenBatch, training: Bool = false) throws -> Tensor {
        try checkTokens(batch)
        let context = ForwardContext(batch: batch, headDim: spec.headDim, ropeTheta: spec.ropeTheta)
        let input = try timed("forward") {
            let start = try upstream.map { try $0.forward(batch, training: training, onto: firstDevice) }
                ?? embed(batch.inputIDs.map(Int.init))
            return try throughLayers(start) { layer, x in
                try layer.forward(x, context: context, training: training)
            }
        }
        let (normed, inverseRMS) = try Self.finalNorm(input, weight: finalNorm, spec: spec)
        trainingState = training ? (context, input, inverseRMS) : nil
        return normed
    }

    /// The final RMS norm of `input` [rows, hidden] with `weight`, on their device, and each row's 1/rms.
    static func finalNorm(_ input: Tensor, weight: Tensor, spec: ModelSpec) throws -> (normed: Tensor, inverseRMS: Tensor) {
        let device = weight.device, rows = input.shape[0]
        try requireSameDevice(input, weight, op: "final norm")
        return try device.run {
            let normed = try Tensor(uninitializedShape: input.shape, on: device)
            let inverseRMS = try Tensor(uninitializedShape: [rows], on: device)
            Kernels.rmsNorm(input.data, weight: weight.data, rows: rows, cols: spec.hiddenSize,
                            eps: spec.rmsNormEps, into: normed.data, inverseRMS: inverseRMS.data)
            return (normed, inverseRMS)
        }
    }

    /// The embedding rows of `ids` [ids.count, hidden] on the first device.
    func embed(_ ids: [Int]) throws -> Tensor {
        try Self.embed(ids, from: embedding ?? lmHead, spec: spec)
    }

    /// The rows of `ids` of an embedding table [vocab, hidden], on its device.
    static func embed(_ ids: [Int], from table: Tensor, spec: ModelSpec) throws -> Tensor {
        let device = table.device
        return try device.run {
            let x = try Tensor(uninitializedShape: [ids.count, spec.hiddenSize], on: device)
            WeightProducts.gatherRows(table, ids: ids, into: x.data)
            return x
        }
    }

    /// `x` on `device` (copied with `to()` when it is elsewhere, and counted in `movedBytes`).
    private func move(_ x: Tensor, to device: Device) throws -> Tensor {
        if x.device !== device { moved.add(x.byteCount, ordering: .relaxed) }
        return try x.to(device)
    }

    /// Runs `layer(x)` for every decoder layer held here, stage by stage on each stage's device
    /// thread, moving the activations across with `to()`; returns them on the last device.
    func throughLayers(_ input: Tensor, _ layer: @escaping (DecoderLayer, Tensor) throws -> Void) throws -> Tensor {
        let x = try Self.forward(input, through: localStages, layers: layers, group: group, move: { [self] in try move($0, to: $1) }, layer)
        return try move(x, to: lastDevice)
    }

    /// Runs `layer(x)` for each of `layers`, the decoder layers of `stages` in order, stage by
    /// stage on each stage's device thread, moving `x` onto it with `move` first; returns `x` as
    /// the last stage with layers leaves it.
    static func forward(_ input: Tensor, through stages: some Sequence<Placement.Stage>, layers: [DecoderLayer], group: DeviceGroup,
                        move: (Tensor, Device) throws -> Tensor, _ layer: @escaping (DecoderLayer, Tensor) throws -> Void) throws -> Tensor {
        var x = input
        let first = layers.first?.index ?? 0
        for stage in stages where !stage.layers.isEmpty {
            let device = group.devices[stage.deviceIndex]
            x = try move(x, device)
            let current = x
            try device.run {
                for index in stage.layers { try layer(layers[index - first], current) }
            }
        }
        return x
    }

    /// Backward from d(output) `dOutput` through `layers`, the decoder layers of `stages` in
    /// order, stage by stage in reverse on each stage's device thread (moving the gradient with
    /// `move`): each layer recomputes its forward if it was checkpointed (timed as "recompute"),
    /// then forms d(input) in place (as "backward"; not for layer 0, as embeddings do not train)
    /// and accumulates its adapters' gradients. Returns d(input of the first layer).
    static func backward(_ dOutput: Tensor, through stages: some BidirectionalCollection<Placement.Stage>, layers: [DecoderLayer],
                         group: DeviceGroup, context: ForwardContext, move: (Tensor, Device) throws -> Tensor,
                         timed: @escaping (String, () throws -> Void) throws -> Void) throws -> Tensor {
        var dx = dOutput
        let first = layers.first?.index ?? 0
        for stage in stages.reversed() where !stage.layers.isEmpty {
            let device = group.devices[stage.deviceIndex]
            dx = try move(dx, device)
            let gradient = dx
            try device.run {
                for layer in layers[(stage.layers.lowerBound - first)..<(stage.layers.upperBound - first)].reversed() {
                    try timed("recompute") { try layer.recompute(context: context) }
                    try timed("backward") { try layer.backward(gradient, context: context, inputGradient: layer.index > 0) }
                }
            }
        }
        return dx
    }

    /// Backward from d(final hidden states) [rows, hidden] on the last device through every
    /// layer, stage by stage in reverse (a checkpointed layer recomputes its forward first), and
    /// on to `upstream`; the adapters' gradients accumulate.
    public func backward(_ dHidden: Tensor) throws {
        guard let state = trainingState else { throw KDError("backward without a training forward pass") }
        trainingState = nil
        let rows = state.context.rows, hidden = spec.hiddenSize
        let dOutput = try lastDevice.run { [self] in
            let dx = try Tensor(uninitializedShape: [rows, hidden], on: lastDevice)
            Kernels.rmsNormBackward(dHidden.data, x: state.finalInput.data, weight: finalNorm.data,
                                    inverseRMS: state.finalInverseRMS.data, rows: rows, cols: hidden, into: dx.data,
                                    accumulate: false)
            return dx
        }
        let dx = try Self.backward(dOutput, through: localStages, layers: layers, group: group, context: state.context,
                                   move: { [self] in try move($0, to: $1) }, timed: { [self] phase, body in try timed(phase, body) })
        // dx is now d(the input of the first layer held here), the stages upstream's output.
        if let upstream { try upstream.backward(try move(dx, to: firstDevice)) }
    }

    /// Logits [rows, vocab] for the given rows of final hidden states, on the last device.
    public func project(_ hidden: UnsafePointer<Float>, rows: Int, into logits: UnsafeMutablePointer<Float>) throws {
        try timed("head") { try WeightProducts.linear(hidden, rows: rows, weight: lmHead, into: logits) }
    }

    /// d(hidden) [rows, hidden] = d(logits) [rows, vocab] · W (the output projection is frozen).
    public func projectBackward(_ dLogits: UnsafePointer<Float>, rows: Int, into dHidden: UnsafeMutablePointer<Float>) throws {
        try timed("head") { try WeightProducts.backward(dLogits, rows: rows, weight: lmHead, into: dHidden, accumulate: false) }
    }

    /// Full logits [batch·sequence, vocab] on the last device.
    public func logits(_ batch: TokenBatch) throws -> Tensor {
        let hidden = try hiddenStates(batch)
        return try lastDevice.run { [self] in
            let logits = try Tensor(uninitializedShape: [batch.tokenCount, spec.vocabSize], on: lastDevice)
            try project(hidden.data, rows: batch.tokenCount, into: logits.data)
            return logits
        }
    }
}

extension Placement {
    /// Fails before anything is loaded when a stage's parameters exceed its device's budget.
    public func checkCapacity(of group: DeviceGroup) throws {
        for (stage, line) in zip(stages, describe(devices: group.devices)) {
            let device = group.devices[stage.deviceIndex]
            if let capacity = device.capacity, stage.parameterBytes > capacity {
                throw KDError(
                    "\(device): its stage needs \(formatBytes(stage.parameterBytes)) of parameters but its budget is "
                        + "\(formatBytes(capacity)) (\(line)); add devices or raise memory_per_device")
            }
        }
    }
}
