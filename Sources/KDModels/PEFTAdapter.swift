import Foundation
import KDCore

/// How LoRA adapters are shaped and initialised (the `lora` section of a run config).
public struct LoRASettings: Equatable, Sendable {
    public static let allTargets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

    public var r = 16
    public var alpha: Double = 32
    public var dropout: Double = 0.05
    public var targetModules = LoRASettings.allTargets
    public var useRSLoRA = false
    public var initMethod = LoRAInit.default
    public var initFrom: String? = nil

    /// The largest rank kd accepts, in a run config or an adapter file.
    public static let maximumRank = 1 << 16

    public init() {}

    /// The factor s in y = Wx + s·B·A·x: alpha/r, or alpha/√r with rank-stabilised LoRA.
    public var scale: Float { Float(useRSLoRA ? alpha / Double(r).squareRoot() : alpha / Double(r)) }

    /// Whether a linear layer (by checkpoint name) gets an adapter: its last name component is a
    /// target, as PEFT matches a list of target_modules.
    public func targets(_ linearName: String) -> Bool {
        targetModules.contains(String(linearName.split(separator: ".").last ?? ""))
    }
}

public enum LoRAInit: String, CaseIterable, Sendable { case `default`, gaussian, pissa }

/// Reading and writing adapters in the PEFT layout: `adapter_config.json` and
/// `adapter_model.safetensors` with keys `base_model.model.<linear>.lora_A.weight` / `lora_B`.
public enum PEFTAdapter {
    public static let configName = "adapter_config.json"
    public static let weightsName = "adapter_model.safetensors"

    public static func key(_ linear: String, _ matrix: String) -> String { "base_model.model.\(linear).lora_\(matrix).weight" }

    /// Reads the settings of an adapter directory, refusing what kd does not implement.
    public static func settings(directory: String) throws -> LoRASettings {
        let path = (directory as NSString).appendingPathComponent(configName)
        let object = try readJSONObject(atPath: path)
        let config = JSONFields(object, file: path)
        let type = try config.string("peft_type")
        guard type?.uppercased() == "LORA" else {
            throw KDError("\(path): peft_type \(type.map { quoted($0) } ?? "missing") is not LORA")
        }
        guard let r = try config.int("r"), r >= 1 && r <= LoRASettings.maximumRank else {
            throw KDError("\(path): r must be an integer between 1 and \(LoRASettings.maximumRank)")
        }
        var settings = LoRASettings()
        settings.r = r
        settings.alpha = try config.number("lora_alpha") ?? Double(r)
        guard settings.alpha > 0 else { throw KDError("\(path): lora_alpha must be positive") }
        settings.dropout = try config.number("lora_dropout") ?? 0
        guard settings.dropout >= 0 && settings.dropout < 1 else { throw KDError("\(path): lora_dropout must be in [0, 1)") }
        settings.useRSLoRA = try config.bool("use_rslora") ?? false
        guard let modules = try? config.strings("target_modules"), !modules.isEmpty else {
            throw KDError("\(path): target_modules must be a list of module names")
        }
        settings.targetModules = modules
        for key in ["rank_pattern", "alpha_pattern"] {
            if let pattern = object[key], !(pattern is NSNull) {
                guard let mapping = pattern as? [String: Any] else { throw KDError("\(path): \(key) must be an object") }
                if !mapping.isEmpty { throw KDError("\(path): \(key) is not supported (one rank and alpha for every module)") }
            }
        }
        if try config.bool("fan_in_fan_out") == true { throw KDError("\(path): fan_in_fan_out is not supported") }
        if let bias = try config.string("bias"), bias != "none" { throw KDError("\(path): bias \(quoted(bias)) is not supported") }
        if try config.bool("use_dora") == true { throw KDError("\(path): DoRA adapters are not supported") }
        return settings
    }

    /// The adapter in `directory` as (A, B) per targeted linear of a model with `spec`, every
    /// tensor checked: present, of the right shape, nothing unexpected.
    /// Only the linears `device` gives a device for are loaded (a model part's); the others are
    /// checked all the same.
    public static func tensors(directory: String, spec: ModelSpec, on device: (String) -> Device?)
        throws -> (settings: LoRASettings, matrices: [String: (a: Tensor, b: Tensor)]) {
        let settings = try settings(directory: directory)
        let file = try SafetensorsFile(path: (directory as NSString).appendingPathComponent(weightsName))
        var matrices: [String: (a: Tensor, b: Tensor)] = [:]
        var used = Set<String>()
        for layer in 0..<spec.numLayers {
            for tensor in spec.layerTensors(layer) where tensor.shape.count == 2 && tensor.name.hasSuffix(".weight") {
                let linear = String(tensor.name.dropLast(".weight".count))
                guard settings.targets(linear) else { continue }
                let (out, inFeatures) = (tensor.shape[0], tensor.shape[1])
                var pair: [Tensor] = []
                let target = device(linear)
                for (matrix, shape) in [("A", [settings.r, inFeatures]), ("B", [out, settings.r])] {
                    let name = key(linear, matrix)
                    guard let info = file.tensors[name] else { throw KDError("\(file.path): missing tensor \(quoted(name))") }
                    guard info.shape == shape else {
                        throw KDError("\(file.path): tensor '\(name)' has shape \(info.shape), the model implies \(shape)")
                    }
                    if let target { pair.append(try target.run { try file.load(name, on: target).clone() }) }
                    used.insert(name)
                }
                if pair.count == 2 { matrices[linear] = (pair[0], pair[1]) }
            }
        }
        guard !used.isEmpty else {
            throw KDError("\(directory): the adapter targets \(settings.targetModules) but the model has no such linear layers")
        }
        if let extra = file.tensors.keys.sorted().first(where: { !used.contains($0) }) {
            throw KDError("\(file.path): unexpected tensor \(quoted(extra)) (not a targeted linear of this model)")
        }
        return (settings, matrices)
    }

    /// Attaches the adapter in `directory` to `model`'s targeted linears.
    @discardableResult
    public static func attach(directory: String, to model: some AdaptedModel, dropout: Float? = nil) throws -> LoRASettings {
        let devices = Dictionary(uniqueKeysWithValues: model.linears.map { ($0.name, $0.device) })
        let (settings, matrices) = try tensors(directory: directory, spec: model.spec) { devices[$0] }
        for linear in model.linears {
            guard let (a, b) = matrices[linear.name] else { continue }
            linear.adapter = LoRAAdapter(a: a, b: b, scale: settings.scale, dropout: dropout ?? Float(settings.dropout))
        }
        return settings
    }

    /// Fresh adapters on every targeted linear: A kaiming-uniform (a = √5, so U(±1/√in)) or
    /// N(0, 1/r) for gaussian, B zero; each linear's values come from its own seeded stream.
    /// PiSSA takes A and B from the weight's principal singular directions instead.
    public static func attachFresh(to model: some AdaptedModel, settings: LoRASettings, seed: UInt64) throws {
        if settings.initMethod == .pissa { return try attachPiSSA(to: model, settings: settings) }
        for linear in model.linears where settings.targets(linear.name) {
            let a = try Tensor(uninitializedShape: [settings.r, linear.inFeatures], on: linear.device)
            var rng = RandomGenerator(seed: seed, stream: RandomGenerator.hash("lora_A"), RandomGenerator.hash(linear.name))
            let values = a.data
            switch settings.initMethod {
            case .gaussian:
                for i in 0..<a.count { values[i] = rng.nextNormal() / Float(settings.r) }
            default:
                let bound = 1 / Float(linear.inFeatures).squareRoot()
                for i in 0..<a.count { values[i] = (2 * rng.nextUniform() - 1) * bound }
            }
            let b = try Tensor.zeros([linear.outFeatures, settings.r], on: linear.device)
            linear.adapter = LoRAAdapter(a: a, b: b, scale: settings.scale, dropout: Float(settings.dropout))
        }
    }

    // MARK: PiSSA

    /// PiSSA, as PEFT's init_lora_weights="pissa": with the thin SVD W = U·S·Vt and scale s,
    /// A₀ = diag(√(S_r/s))·Vt_r and B₀ = U_r·diag(√(S_r/s)), so s·B₀·A₀ is W's best rank-r part;
    /// the frozen weight becomes the residual W − s·B₀·A₀.
    static func attachPiSSA(to model: some AdaptedModel, settings: LoRASettings) throws {
        for linear in model.linears where settings.targets(linear.name) {
            let (out, inFeatures, r) = (linear.outFeatures, linear.inFeatures, settings.r)
            guard r <= min(out, inFeatures) else {
                throw KDError("lora.r \(r) exceeds the rank of \(linear.name) (\(out)×\(inFeatures)) for PiSSA")
            }
            let scratch = try linear.weight.widened()
            let (u, s, vt) = try BLAS.svd(scratch.data, m: out, n: inFeatures)
            let k = min(out, inFeatures)
            let a = try Tensor(uninitializedShape: [r, inFeatures], on: linear.device)
            let b = try Tensor(uninitializedShape: [out, r], on: linear.device)
            for i in 0..<r {
                let root = (s[i] / settings.scale).squareRoot()
                for j in 0..<inFeatures { a.data[i * inFeatures + j] = root * vt[i * inFeatures + j] }
                for o in 0..<out { b.data[o * r + i] = u[o * k + i] * root }
            }
            try attachPiSSA(linear, a: a, b: b, initialA: try a.clone(), initialB: try b.clone(), settings: settings)
        }
    }

    /// Attaches a PiSSA adapter (current A, B and initial A₀, B₀) and makes the weight the residual,
    /// computed in f32 and held in the weight's dtype (a bf16 residual is rounded, as PEFT's).
    static func attachPiSSA(_ linear: Linear, a: Tensor, b: Tensor, initialA: Tensor, initialB: Tensor,
                            settings: LoRASettings) throws {
        let residual = try linear.weight.widened()
        BLAS.gemm(m: linear.outFeatures, n: linear.inFeatures, k: settings.r, alpha: -settings.scale, a: initialB.data,
                  lda: settings.r, b: initialA.data, ldb: linear.inFeatures, beta: 1, c: residual.data, ldc: linear.inFeatures)
        linear.replaceWeight(try residual.converted(to: linear.weight.dtype))
        let adapter = LoRAAdapter(a: a, b: b, scale: settings.scale, dropout: Float(settings.dropout))
        adapter.initial = (initialA, initialB)
        linear.adapter = adapter
    }

    /// Reattaches a PiSSA run's adapters from a saved (converted) adapter: A' = [A; A₀] and
    /// B' = [B, −B₀]; the weights are the loaded originals, so the residual is recomputed exactly.
    public static func attachPiSSA(savedIn directory: String, to model: some AdaptedModel, settings: LoRASettings) throws {
        let file = try SafetensorsFile(path: (directory as NSString).appendingPathComponent(weightsName))
        let r = settings.r
        for linear in model.linears where settings.targets(linear.name) {
            let (out, inFeatures) = (linear.outFeatures, linear.inFeatures)
            let nameA = key(linear.name, "A"), nameB = key(linear.name, "B")
            guard file.tensors[nameA]?.shape == [2 * r, inFeatures], file.tensors[nameB]?.shape == [out, 2 * r] else {
                throw KDError("\(file.path): '\(nameA)' / '\(nameB)' are missing or are not a PiSSA adapter of rank \(r)")
            }
            let (savedA, savedB) = (try file.load(nameA, on: linear.device), try file.load(nameB, on: linear.device))
            let a = try Tensor(Array(UnsafeBufferPointer(start: savedA.data, count: r * inFeatures)), shape: [r, inFeatures], on: linear.device)
            let a0 = try Tensor(Array(UnsafeBufferPointer(start: savedA.data + r * inFeatures, count: r * inFeatures)),
                                shape: [r, inFeatures], on: linear.device)
            let b = try Tensor.zeros([out, r], on: linear.device), b0 = try Tensor.zeros([out, r], on: linear.device)
            for o in 0..<out {
                for i in 0..<r {
                    b.data[o * r + i] = savedB.data[o * 2 * r + i]
                    b0.data[o * r + i] = -savedB.data[o * 2 * r + r + i]
                }
            }
            try attachPiSSA(linear, a: a, b: b, initialA: a0, initialB: b0, settings: settings)
        }
    }

    // MARK: Saving

    /// Writes the model's adapters in the PEFT layout into `directory` (created if needed). A
    /// PiSSA adapter is written as the plain LoRA that gives the same model on the original
    /// weights, as PEFT converts it: A' = [A; A₀], B' = [B, −B₀], rank and alpha doubled (alpha
    /// times √2 with rank-stabilised scaling), so s' = s.
    /// `adapters` are a model's (`namedAdapters`, or gathered from its stages), in layer order.
    public static func save(_ adapters: [NamedAdapter], settings: LoRASettings, baseModel: String, to directory: String) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let converted = adapters.contains { $0.adapter.initial != nil }
        let rank = converted ? 2 * settings.r : settings.r
        var entries: [SafetensorsWriter.Entry] = []
        for linear in adapters {
            entries.append(.init(name: key(linear.name, "A"), dtype: .f32, shape: [rank, linear.adapter.inFeatures]))
            entries.append(.init(name: key(linear.name, "B"), dtype: .f32, shape: [linear.adapter.outFeatures, rank]))
        }
        let writer = try SafetensorsWriter(path: (directory as NSString).appendingPathComponent(weightsName), entries: entries)
        do {
            for linear in adapters {
                let adapter = linear.adapter
                try writer.write(adapter.a)
                if let (a0, _) = adapter.initial { try writer.write(a0) }
                if let (_, b0) = adapter.initial {
                    let outFeatures = adapter.outFeatures
                    var rows = [Float](repeating: 0, count: outFeatures * rank)
                    for o in 0..<outFeatures {
                        for i in 0..<settings.r {
                            rows[o * rank + i] = adapter.b.data[o * settings.r + i]
                            rows[o * rank + settings.r + i] = -b0.data[o * settings.r + i]
                        }
                    }
                    try rows.withUnsafeBufferPointer { try writer.write($0.baseAddress!, count: rows.count) }
                } else {
                    try writer.write(adapter.b)
                }
            }
            try writer.finish()
        } catch {
            writer.discard()
            throw error
        }
        let alpha = converted ? (settings.useRSLoRA ? settings.alpha * 2.0.squareRoot() : 2 * settings.alpha) : settings.alpha
        let config: [String: Any] = [
            "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": alpha,
            "lora_dropout": settings.dropout, "target_modules": settings.targetModules, "use_rslora": settings.useRSLoRA,
            "bias": "none", "fan_in_fan_out": false, "init_lora_weights": true, "inference_mode": true,
            "base_model_name_or_path": baseModel, "modules_to_save": NSNull(), "use_dora": false,
            "rank_pattern": [String: Any](), "alpha_pattern": [String: Any](),
        ]
        try writeJSON(config, to: (directory as NSString).appendingPathComponent(configName))
    }
}

/// A model, or the part of one that a process holds, whose linear layers adapters attach to.
public protocol AdaptedModel: AnyObject {
    var spec: ModelSpec { get }
    /// Every linear layer held, in layer order (where adapters attach).
    var linears: [Linear] { get }
}

/// A linear layer's adapter under the linear's checkpoint name (`model.layers.0.self_attn.q_proj`).
public struct NamedAdapter {
    public let name: String
    public let adapter: LoRAAdapter

    public init(name: String, adapter: LoRAAdapter) {
        self.name = name
        self.adapter = adapter
    }
}

extension AdaptedModel {
    /// The adapters held, in layer order.
    public var namedAdapters: [NamedAdapter] {
        linears.compactMap { linear in linear.adapter.map { NamedAdapter(name: linear.name, adapter: $0) } }
    }

    /// Runs `body` with every adapter held detached, then puts them back.
    public func withLocalAdaptersDetached<T>(_ body: () throws -> T) rethrows -> T {
        let saved = linears.map(\.adapter)
        for linear in linears { linear.adapter = nil }
        defer { for (linear, adapter) in zip(linears, saved) { linear.adapter = adapter } }
        return try body()
    }
}

extension CausalLM {
    /// Runs `body` with every adapter detached (the base model), upstream's too, then puts them back.
    public func withAdaptersDetached<T>(_ body: () throws -> T) rethrows -> T {
        upstream?.adaptersDetached = true
        defer { upstream?.adaptersDetached = false }
        return try withLocalAdaptersDetached(body)
    }
}
