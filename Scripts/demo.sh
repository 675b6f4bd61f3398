#!/usr/bin/env bash
# Sets up the machine, builds kd, and runs the demo on HumanEval (a few minutes on 2 cores):
#   1. a small random Qwen3 teacher (kd init) is given something to teach: a LoRA trained on the
#      data (Configs/demo-teacher.yaml) and merged into it (kd export);
#   2. a student made of the teacher's embedding, first layer and head (kd init --from) is
#      distilled from it (Configs/demo.yaml);
#   3. the held-out KL to the teacher and top-1 agreement, base vs distilled, are printed.
set -euo pipefail
cd "$(dirname "$0")/.."
Scripts/setup.sh
swift build -c release
kd=.build/release/kd
demo=runs/demo
mkdir -p "$demo"
gunzip -c Configs/data/humaneval.jsonl.gz > "$demo/humaneval.jsonl"
head -n 144 "$demo/humaneval.jsonl" > "$demo/humaneval-train.jsonl"
tail -n 20 "$demo/humaneval.jsonl" > "$demo/humaneval-eval.jsonl"

# Qwen3 shapes scaled down, with the real Qwen3 vocabulary and tokenizer.
$kd init --preset qwen3-0.6b --set num_hidden_layers=4 --set hidden_size=256 --set intermediate_size=768 \
  --set num_attention_heads=4 --set num_key_value_heads=2 --set head_dim=64 --set initializer_range=0.1 --set tie_word_embeddings=false \
  --tokenizer Configs/tokenizer/qwen3 --output "$demo/teacher-base" --force
$kd data --config Configs/demo-teacher.yaml --stats > /dev/null 2>&1

echo "== 1. tuning the teacher on the data" >&2
rm -rf "$demo/teacher-tuning"
$kd train --config Configs/demo-teacher.yaml > "$demo/teacher-tuning.jsonl"
$kd export --model "$demo/teacher-base" --adapter "$demo/teacher-tuning/final_model" --output "$demo/teacher" --force

echo "== 2. distilling it into a one-layer student" >&2
$kd init --from "$demo/teacher" --set num_hidden_layers=1 --output "$demo/student" --force
rm -rf "$demo/run"
$kd train --config Configs/demo.yaml > "$demo/run.jsonl"
