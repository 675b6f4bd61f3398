import Foundation
import KDCore

/// The published `config.json` of the Qwen3 checkpoints kd is built for, so that `kd init
/// --preset` makes real-shape models and `kd plan` needs no download.
public enum Presets {
    public static let configs: [String: String] = [
        "qwen3-0.6b": #"""
{
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "eos_token_id": 151645,
  "head_dim": 128,
  "hidden_act": "silu",
  "initializer_range": 0.02,
  "max_position_embeddings": 40960,
  "rms_norm_eps": 1e-06,
  "rope_scaling": null,
  "rope_theta": 1000000.0,
  "sliding_window": null,
  "torch_dtype": "bfloat16",
  "use_cache": true,
  "use_sliding_window": false,
  "vocab_size": 151936,
  "architectures": [
    "Qwen3ForCausalLM"
  ],
  "model_type": "qwen3",
  "hidden_size": 1024,
  "intermediate_size": 3072,
  "num_hidden_layers": 28,
  "num_attention_heads": 16,
  "num_key_value_heads": 8,
  "max_window_layers": 28,
  "tie_word_embeddings": true
}
"""#,
        "qwen3-1.7b": #"""
{
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "eos_token_id": 151645,
  "head_dim": 128,
  "hidden_act": "silu",
  "initializer_range": 0.02,
  "max_position_embeddings": 40960,
  "rms_norm_eps": 1e-06,
  "rope_scaling": null,
  "rope_theta": 1000000.0,
  "sliding_window": null,
  "torch_dtype": "bfloat16",
  "use_cache": true,
  "use_sliding_window": false,
  "vocab_size": 151936,
  "architectures": [
    "Qwen3ForCausalLM"
  ],
  "model_type": "qwen3",
  "hidden_size": 2048,
  "intermediate_size": 6144,
  "num_hidden_layers": 28,
  "num_attention_heads": 16,
  "num_key_value_heads": 8,
  "max_window_layers": 28,
  "tie_word_embeddings": true
}
"""#,
        "qwen3-8b": #"""
{
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "eos_token_id": 151645,
  "head_dim": 128,
  "hidden_act": "silu",
  "initializer_range": 0.02,
  "max_position_embeddings": 40960,
  "rms_norm_eps": 1e-06,
  "rope_scaling": null,
  "rope_theta": 1000000.0,
  "sliding_window": null,
  "torch_dtype": "bfloat16",
  "use_cache": true,
  "use_sliding_window": false,
  "vocab_size": 151936,
  "architectures": [
    "Qwen3ForCausalLM"
  ],
  "model_type": "qwen3",
  "hidden_size": 4096,
  "intermediate_size": 12288,
  "num_hidden_layers": 36,
  "num_attention_heads": 32,
  "num_key_value_heads": 8,
  "max_window_layers": 36,
  "tie_word_embeddings": false
}
"""#,
        "qwen3-30b-a3b": #"""
{
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "eos_token_id": 151645,
  "head_dim": 128,
  "hidden_act": "silu",
  "initializer_range": 0.02,
  "max_position_embeddings": 40960,
  "rms_norm_eps": 1e-06,
  "rope_scaling": null,
  "rope_theta": 1000000.0,
  "sliding_window": null,
  "torch_dtype": "bfloat16",
  "use_cache": true,
  "use_sliding_window": false,
  "vocab_size": 151936,
  "architectures": [
    "Qwen3MoeForCausalLM"
  ],
  "model_type": "qwen3_moe",
  "hidden_size": 2048,
  "intermediate_size": 6144,
  "moe_intermediate_size": 768,
  "num_experts": 128,
  "num_experts_per_tok": 8,
  "norm_topk_prob": true,
  "decoder_sparse_step": 1,
  "mlp_only_layers": [],
  "output_router_logits": false,
  "router_aux_loss_coef": 0.001,
  "num_hidden_layers": 48,
  "num_attention_heads": 32,
  "num_key_value_heads": 4,
  "max_window_layers": 48,
  "tie_word_embeddings": false
}
"""#,
    ]

    public static var names: [String] { configs.keys.sorted() }

    /// The preset's config.json as a JSON object.
    public static func config(_ name: String) throws -> [String: Any] {
        guard let text = configs[name.lowercased()] else {
            throw KDError("unknown preset '\(name)' (presets: \(names.joined(separator: ", ")))")
        }
        return try JSONSerialization.jsonObject(with: Data(text.utf8)) as! [String: Any]
    }
}
