#!/usr/bin/env bash
# Sets up the machine, builds kd, makes a small random Qwen3 and Qwen3-MoE, and runs them
# sharded over devices.
set -euo pipefail
cd "$(dirname "$0")/.."
Scripts/setup.sh
swift build -c release
kd=.build/release/kd
out=runs/demo
mkdir -p "$out"
$kd init --preset qwen3-0.6b --set num_hidden_layers=4 --output "$out/qwen3-small" --dtype bf16 --force
$kd init --preset qwen3-30b-a3b --set num_hidden_layers=2 --set num_experts=16 --set hidden_size=512 \
  --set num_attention_heads=8 --set num_key_value_heads=2 --output "$out/qwen3-moe-small" --force
$kd inspect --model "$out/qwen3-small"
$kd inspect --model "$out/qwen3-moe-small"
python3 -c 'import json, random; random.seed(0); print(json.dumps({"input_ids": [random.randrange(151643) for _ in range(128)]})); print(json.dumps({"input_ids": [random.randrange(151643) for _ in range(64)]}))' > "$out/tokens.jsonl"
$kd forward --model "$out/qwen3-small" --tokens "$out/tokens.jsonl" --output "$out/logits.safetensors" --devices 0,1
$kd forward --model "$out/qwen3-moe-small" --tokens "$out/tokens.jsonl" --output "$out/moe-logits.safetensors" --devices 0,1,2
