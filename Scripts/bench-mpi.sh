#!/usr/bin/env bash
# Throughput across MPI ranks (issue 12), run alternately in one session, one core per process
# (mpirun --bind-to core). MODE data: one replica on one core against two replicas as two ranks,
# the same batch per replica. MODE stages: one process running teacher and student in turn on one
# core against a teacher rank and a student rank (devices.ranks [0, 1]) on one core each, the
# teacher working on the next micro-batch while the student trains on this one; MICRO micro-batches
# (grad_accum_steps) of 1 × 256 a step. MODE student: the student's two stages (devices 0 and 1)
# in one process on one core against a rank each (devices.ranks [0, 1]), the first stage running
# the next micro-batch's forward while the second finishes this one (GPipe); MICRO micro-batches of
# 1 × 128 a step, the teacher read from a top-16 cache made first (so only the student runs), and
# a student whose stages carry equal work: Qwen3-0.6B's layer shape, 4 layers (2 a stage) and a
# vocabulary of 1,024, so the output projection and the loss add ~4% to the second stage (at 8,192
# they added ~18%, and stage_busy read 0.64 for the first stage against 0.95 for the second).
# Models otherwise: random bf16 Qwen3-1.7B → Qwen3-0.6B shapes cut to 3 layers each (kd init),
# vocabulary 151,936, LoRA r=16 on all seven projections, 1 × 256 tokens per replica, every
# position scored, activation checkpointing on, run.threads 1 in every process.
# Each process runs STEPS + 1 optimizer steps; the first is not timed. Tokens/s is the step's
# tokens (both replicas' for two) over its time, from the run's metrics.jsonl; the median over
# steps, then the median over ROUNDS alternating runs. bytes_sent is what all ranks sent each
# other per step (the summed LoRA gradients, the totals and the stop check).
# MICRO sets the micro-batches a step in the stages and student modes (default 4).
# Usage: Scripts/bench-mpi.sh [STEPS] [ROUNDS] [data|stages|student] [MICRO]   (defaults 3, 2, data, 4)
set -euo pipefail
steps=${1:-3}
rounds=${2:-2}
mode=${3:-data}
micro=${4:-4}
. "$(dirname "$0")/bench-setup.sh" bench-mpi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl_vader_single_copy_mechanism=none

if [ "$mode" = student ]; then
  vocab=1024 length=128 teacher_layers=1 student_layers=4
  work=$work/student-$vocab
  mkdir -p "$work"
else
  vocab=151936 length=256 teacher_layers=3 student_layers=3
fi
shape=$([ "$mode" = student ] && echo "--set vocab_size=$vocab" || true)
[ -d "$work/teacher" ] || $kd init --preset qwen3-1.7b --set num_hidden_layers=$teacher_layers $shape --dtype bf16 --output "$work/teacher" --seed 1
[ -d "$work/student" ] || $kd init --preset qwen3-0.6b --set num_hidden_layers=$student_layers $shape --dtype bf16 --output "$work/student" --seed 2
python3 - "$work" "$vocab" "$length" <<'PY'
import json, random, sys
random.seed(0)
vocab, length = int(sys.argv[2]), int(sys.argv[3])
with open(f"{sys.argv[1]}/tokens.jsonl", "w") as f:
    for _ in range(8):
        f.write(json.dumps({"input_ids": [random.randrange(min(vocab, 151643)) for _ in range(length)]}) + "\n")
PY

run() {  # ranks round: one JSON line
  local ranks=$1 out="$work/run-$mode-$1-$2"
  local replicas=$([ "$mode" = data ] && echo "$ranks" || echo 1)
  local accum=$([ "$mode" = data ] && echo 1 || echo "$micro")
  local placement=$([ "$mode" != data ] && [ "$ranks" = 2 ] && echo "[0, 1]" || echo null)
  local students=$([ "$mode" = student ] && echo "[0, 1]" || echo "[1]")
  local cache=$([ "$mode" = student ] && echo "$work/cache" || echo null)
  rm -rf "$out"
  cat > "$work/run-$1.yaml" <<YAML
run: {output_dir: $out, seed: 1, threads: 1, data_parallel: $replicas}
devices: {count: 2, ranks: $placement}
teacher: {path: $work/teacher, devices: [0]}
student: {path: $work/student, devices: $students}
lora: {r: 16, alpha: 32, dropout: 0.0}
distill: {alpha: 0.8, temperature: 2.0}
data: {train: $work/tokens.jsonl, format: tokens, shuffle: false, teacher_cache: $cache}
train: {max_steps: $((steps + 1)), batch_size: $replicas, grad_accum_steps: $accum, lr: 1.0e-4, lr_schedule: constant, warmup_steps: 0, activation_checkpointing: true}
checkpoint: {every_steps: 0, keep_last: 1}
YAML
  if [ "$mode" = student ] && [ ! -f "$work/cache/manifest.json" ]; then
    sed 's/teacher_cache: [^,}]*/teacher_cache: null/' "$work/run-$1.yaml" > "$work/cache.yaml"
    $kd teacher-cache --config "$work/cache.yaml" --top-k 16 --output "$work/cache" >/dev/null 2>"$work/cache.log" \
      || { cat "$work/cache.log" >&2; exit 1; }
  fi
  if [ "$ranks" = 1 ]; then
    $kd train --config "$work/run-$1.yaml" >/dev/null 2>"$out.log" || { cat "$out.log" >&2; exit 1; }
  else
    mpirun -n "$ranks" --bind-to core $kd train --config "$work/run-$1.yaml" >/dev/null 2>"$out.log" \
      || { cat "$out.log" >&2; exit 1; }
  fi
  python3 - "$out/metrics.jsonl" "$ranks" <<'PY'
import json, statistics, sys
steps = [json.loads(line) for line in open(sys.argv[1])][1:]
print(json.dumps({"ranks": int(sys.argv[2]), "tokens_per_s": round(statistics.median(s["tokens_per_s"] for s in steps), 2),
                  "step_s": [round(s["tokens"] / s["tokens_per_s"], 3) for s in steps],
                  "bytes_sent": steps[-1]["bytes_sent"]}))
PY
}

results=$work/results-$mode.jsonl
: > "$results"
for round in $(seq "$rounds"); do
  for ranks in 1 2; do run "$ranks" "$round" | tee -a "$results"; done
done
python3 - "$results" "$mode" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
one = statistics.median(r["tokens_per_s"] for r in rows if r["ranks"] == 1)
two = statistics.median(r["tokens_per_s"] for r in rows if r["ranks"] == 2)
sent = [r["bytes_sent"] for r in rows if r["ranks"] == 2][-1]
print(f"| ranks ({sys.argv[2]}) | tokens/s (median) | per run | bytes sent per step |\n|---|---|---|---|")
for n, v in [(1, one), (2, two)]:
    print(f"| {n} | {v:.2f} | {', '.join(str(r['tokens_per_s']) for r in rows if r['ranks'] == n)} | {sent if n == 2 else 0:,} |")
print(f"\n2 ranks / 1: {two / one:.2f}x")
PY
