import Foundation
import KDCore

/// `config.json` of a dense Qwen3 checkpoint (`model_type: qwen3`), keys as published.
public struct Qwen3Configuration: ModelConfiguration {
    public static let modelType = "qwen3"

    var vocabSize: Int
    var hiddenSize: Int
    var intermediateSize: Int
    var numHiddenLayers: Int
    var numAttentionHeads: Int
    var numKeyValueHeads: Int?
    var headDim: Int?
    var rmsNormEps: Double?
    var ropeTheta: Double?
    var ropeParameters: RopeParameters?
    var ropeScaling: RopeParameters?
    var tieWordEmbeddings: Bool?
    var hiddenAct: String?
    var attentionBias: Bool?
    var useSlidingWindow: Bool?
    var bosTokenId: Int?
    var eosTokenId: TokenIDList?
    var torchDtype: String?
    var dtype: String?

    enum CodingKeys: String, CodingKey {
        case vocabSize = "vocab_size"
        case hiddenSize = "hidden_size"
        case intermediateSize = "intermediate_size"
        case numHiddenLayers = "num_hidden_layers"
        case numAttentionHeads = "num_attention_heads"
        case numKeyValueHeads = "num_key_value_heads"
        case headDim = "head_dim"
        case rmsNormEps = "rms_norm_eps"
        case ropeTheta = "rope_theta"
        case ropeParameters = "rope_parameters"
        case ropeScaling = "rope_scaling"
        case tieWordEmbeddings = "tie_word_embeddings"
        case hiddenAct = "hidden_act"
        case attentionBias = "attention_bias"
        case useSlidingWindow = "use_sliding_window"
        case bosTokenId = "bos_token_id"
        case eosTokenId = "eos_token_id"
        case torchDtype = "torch_dtype"
        case dtype
    }

    /// The shape shared with Qwen3-MoE, whose configuration only changes the feed-forward blocks.
    func baseSpec(modelType: String, feedForward: [FeedForwardKind]) throws -> ModelSpec {
        try AttentionSettings.check(hiddenAct: hiddenAct, attentionBias: attentionBias, useSlidingWindow: useSlidingWindow)
        return ModelSpec(
            modelType: modelType,
            vocabSize: vocabSize,
            hiddenSize: hiddenSize,
            numLayers: numHiddenLayers,
            numHeads: numAttentionHeads,
            numKVHeads: numKeyValueHeads ?? numAttentionHeads,
            headDim: headDim ?? hiddenSize / max(1, numAttentionHeads),
            rmsNormEps: Float(rmsNormEps ?? 1e-6),
            ropeTheta: try AttentionSettings.ropeTheta(ropeTheta, parameters: ropeParameters, scaling: ropeScaling),
            tieWordEmbeddings: tieWordEmbeddings ?? false,
            feedForward: feedForward,
            bosTokenID: bosTokenId,
            eosTokenIDs: eosTokenId?.ids ?? [],
            declaredDType: torchDtype ?? dtype)
    }

    public func spec() throws -> ModelSpec {
        try ModelSpec.checkLayerCount(numHiddenLayers)
        return try baseSpec(
            modelType: Self.modelType,
            feedForward: Array(repeating: .dense(intermediateSize: intermediateSize), count: numHiddenLayers))
    }
}
