#!/usr/bin/env python3
"""Makes the forward-parity fixtures under Tests/Fixtures/forward with transformers.

Each fixture is a small random Qwen3 or Qwen3-MoE checkpoint saved by `save_pretrained` (every
weight exactly representable in bf16, stored as F32 except dense-bf16's BF16), a tokens.jsonl
with a right-padded batch, and expected.safetensors holding transformers' fp32 logits [B, S, V]
and the attention mask. Run from the repository root:

    pip install torch transformers safetensors
    python3 Scripts/make_forward_fixtures.py
"""
import json
import os
import shutil

import torch
from safetensors.torch import save_file
from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM

ROOT = os.path.join(os.path.dirname(__file__), "..", "Tests", "Fixtures", "forward")

COMMON = dict(hidden_act="silu", attention_bias=False, max_position_embeddings=256, attn_implementation="eager")

FIXTURES = [
    # name, architecture, config, save options
    ("dense-tied-gqa", "qwen3",
     dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
          num_key_value_heads=2, head_dim=16, tie_word_embeddings=True, rms_norm_eps=1e-6,
          rope_parameters={"rope_type": "default", "rope_theta": 10000.0}), {}),
    ("dense-mqa-headdim-sharded", "qwen3",
     dict(vocab_size=160, hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=4,
          num_key_value_heads=1, head_dim=24, tie_word_embeddings=False, rms_norm_eps=1e-5,
          rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}), dict(max_shard_size="40KB")),
    ("dense-bf16", "qwen3",
     dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
          num_key_value_heads=4, head_dim=16, tie_word_embeddings=False, rms_norm_eps=1e-6,
          rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}), dict(bf16=True)),
    ("moe-8x2", "qwen3_moe",
     dict(vocab_size=128, hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=3,
          num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=8, num_experts_per_tok=2,
          norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[1], tie_word_embeddings=False,
          rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
     dict(published_config=True)),
]

# A batch of three rows; the second is shorter and right-padded.
LENGTHS = [9, 5, 9]


def round_to_bf16(param):
    """Rounds an f32 parameter in place to the nearest bf16 value, kept as f32.

    kd can hold frozen base weights in bf16 (student.dtype: bf16, --dtype bf16). With every base
    weight exactly representable in bf16, narrowing f32 -> bf16 is exact, so the same fixture and
    the same transformers reference check kd with f32- and with bf16-held weights. The rounding
    happens before anything is computed from the weights, so the reference logits are of the
    rounded model. (dense-bf16, saved as BF16, is unchanged by it: round-to-nearest-even twice is
    once.)"""
    param.copy_(param.to(torch.bfloat16).to(torch.float32))


def randomise(model, generator):
    """Replaces every weight with values large enough that each part of the model matters, each
    exactly representable in bf16."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1 + 0.3 * torch.randn(param.shape, generator=generator))
            elif "embed_tokens" in name:
                param.copy_(torch.randn(param.shape, generator=generator))
            else:
                fan_in = param.shape[-1]
                param.copy_(torch.randn(param.shape, generator=generator) * (1.5 / fan_in ** 0.5))
            round_to_bf16(param)


def published_style(config_path):
    """Rewrites a transformers-5 config.json in the key style of the published Qwen3 files."""
    with open(config_path) as f:
        config = json.load(f)
    rope = config.pop("rope_parameters")
    config["rope_theta"] = rope["rope_theta"]
    config["rope_scaling"] = None
    config["torch_dtype"] = config.pop("dtype", "float32")
    if "num_local_experts" in config:
        config["num_experts"] = config.pop("num_local_experts")
    with open(config_path, "w") as f:
        json.dump(config, f, indent=2)


def main():
    torch.manual_seed(0)
    if os.path.isdir(ROOT):
        shutil.rmtree(ROOT)
    for index, (name, arch, config_args, options) in enumerate(FIXTURES):
        generator = torch.Generator().manual_seed(1000 + index)
        if arch == "qwen3":
            model = Qwen3ForCausalLM(Qwen3Config(**config_args, **COMMON))
        else:
            model = Qwen3MoeForCausalLM(Qwen3MoeConfig(**config_args, **COMMON))
        randomise(model, generator)
        if model.config.tie_word_embeddings:
            model.tie_weights()
        model.eval()
        out = os.path.join(ROOT, name)
        os.makedirs(out)
        if options.get("bf16"):
            # kd widens the bf16 weights to f32; the reference is torch's f32 compute on the same
            # weights, loaded back from the file (so the rotary buffers are fresh f32, as kd's are).
            model.to(torch.bfloat16).save_pretrained(out)
            cls = type(model)
            model = cls.from_pretrained(out, dtype=torch.float32, attn_implementation="eager").eval()
        else:
            model.save_pretrained(out, max_shard_size=options.get("max_shard_size", "50GB"))
        if options.get("published_config"):
            published_style(os.path.join(out, "config.json"))

        vocab = config_args["vocab_size"]
        rows = [torch.randint(0, vocab, (n,), generator=generator).tolist() for n in LENGTHS]
        seq = max(LENGTHS)
        input_ids = torch.zeros(len(rows), seq, dtype=torch.long)
        mask = torch.zeros(len(rows), seq, dtype=torch.long)
        for r, row in enumerate(rows):
            input_ids[r, : len(row)] = torch.tensor(row)
            mask[r, : len(row)] = 1
        with torch.no_grad():
            logits = model(input_ids=input_ids, attention_mask=mask).logits.float()
        with open(os.path.join(out, "tokens.jsonl"), "w") as f:
            for row in rows:
                f.write(json.dumps({"input_ids": row}) + "\n")
        save_file({"logits": logits.contiguous(), "attention_mask": mask}, os.path.join(out, "expected.safetensors"))
        print(f"{name}: logits {tuple(logits.shape)}, files {sorted(os.listdir(out))}")


if __name__ == "__main__":
    main()
