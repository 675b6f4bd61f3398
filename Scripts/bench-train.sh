#!/usr/bin/env bash
# The same KD training step in kd and in PyTorch + PEFT, in one run, at 1 and 2 threads, on two
# shape sets (random bf16 checkpoints from kd init, vocabulary 151,936, LoRA r=16 on all seven
# projections, every position scored). kd runs with the frozen weights held as bf16 (as stored) and
# widened to f32 (teacher.dtype / student.dtype f32), PyTorch in f32:
#   small:  teacher hidden 512 × 8 layers, student hidden 256 × 4 layers, batch 4 × 128
#   qwen3:  Qwen3-1.7B → Qwen3-0.6B shapes (3 layers each, to fit the run in minutes), batch 1 × 256
# PyTorch runs with glibc malloc and with jemalloc preloaded; the faster figure is the one to beat.
# With MODE `cache`, kd alone instead: the live teacher against offline teacher caches (kd
# teacher-cache, K = 16, 64, 256; the cache's bytes per token are printed as it is made).
# With MODE `real` (issue 14, benchmark 2), the step at the student's real width instead: student
# Qwen3-8B cut to 4 layers (hidden 4096, 32/8 heads, intermediate 12288; 2.02 G parameters with the
# embedding and the untied lm_head), teacher Qwen3-30B-A3B cut to 1 layer (hidden 2048, 32/4 heads,
# head_dim 128, 128 experts, top-8, moe_intermediate 768; 1.25 G parameters), batch 1 × 512, LoRA
# r=64 alpha 128 on all seven projections, activation checkpointing on in both (kd's
# train.activation_checkpointing, run twice: train.recompute layers, recomputing whole layers as
# transformers does, and auto, which keeps the layers' products where they fit (here: all) and
# recomputes only norms, rope and attention; transformers' gradient_checkpointing_enable, and for
# reference PyTorch without checkpointing too), the same loss
# (alpha 0.8, T 2) and AdamW. kd holds the weights as stored (bf16; ~6 GB peak RSS), PyTorch in
# f32: ~13 GB of weights, and its resident set reaches ~17 GB both while from_pretrained loads and
# while it trains, so run nothing else large beside it (each run is one process, and only one runs
# at a time; pages the host swapped out during a run are reported). A step is ~4 TFLOP (the two
# output projections over 151,936 words are a third of it); on 2 cores of a ~2 GHz Zen 1 shared
# with other work, the mode took 80 min with STEPS = 3. A markdown table ends it.
# In every mode a process runs STEPS + 1 optimizer steps and the first is not timed (kd's step
# times are read from its metrics.jsonl, PyTorch's from perf_counter around each step; neither
# includes loading); the median of the rest is reported with the process's peak RSS.
# Needs: pip install torch transformers peft.
# THREADS lists the thread counts to run (default "1 2").
# Usage: Scripts/bench-train.sh [STEPS] [dtype|cache|real] [THREADS] (STEPS: 5, or 3 with real)
set -euo pipefail
mode=${2:-dtype}
thread_counts=${3:-1 2}
steps=${1:-$([ "$mode" = real ] && echo 3 || echo 5)}
. "$(dirname "$0")/bench-setup.sh" bench-train
dpkg -s libjemalloc2 >/dev/null 2>&1 || apt-get install -y -qq libjemalloc2 >/dev/null
jemalloc=$(ls /usr/lib/x86_64-linux-gnu/libjemalloc.so.2 2>/dev/null || true)
lora_r=$([ "$mode" = real ] && echo 64 || echo 16)  # alpha is 2r on both sides

make_models() {  # name teacher-overrides student-overrides teacher-preset student-preset
  local name=$1
  [ -d "$work/$name-teacher" ] || $kd init --preset "$4" $2 --dtype bf16 --output "$work/$name-teacher" --seed 1
  [ -d "$work/$name-student" ] || $kd init --preset "$5" $3 --dtype bf16 --output "$work/$name-student" --seed 2
}
if [ "$mode" = real ]; then
  make_models real "--set num_hidden_layers=1" "--set num_hidden_layers=4" qwen3-30b-a3b qwen3-8b
  shapes=("real 1")
else
  make_models small \
    "--set num_hidden_layers=8 --set hidden_size=512 --set intermediate_size=1536 --set num_attention_heads=8 --set num_key_value_heads=4 --set head_dim=64 --set tie_word_embeddings=false" \
    "--set num_hidden_layers=4 --set hidden_size=256 --set intermediate_size=768 --set num_attention_heads=4 --set num_key_value_heads=2 --set head_dim=64 --set tie_word_embeddings=false" \
    qwen3-0.6b qwen3-0.6b
  make_models qwen3 "--set num_hidden_layers=3" "--set num_hidden_layers=3" qwen3-1.7b qwen3-0.6b
  shapes=("small 4" "qwen3 1")
fi

python3 - "$work" <<'PY'
import json, random, sys
random.seed(0)
for name, rows, length in [("small", 4, 128), ("qwen3", 1, 256), ("real", 1, 512)]:
    with open(f"{sys.argv[1]}/{name}-tokens.jsonl", "w") as f:
        for _ in range(rows):
            f.write(json.dumps({"input_ids": [random.randrange(151643) for _ in range(length)]}) + "\n")
PY

write_config() {  # name batch threads dtype [teacher cache directory] [train.recompute]: $work/NAME.yaml
  local name=$1 batch=$2 threads=$3 dtype=$4 cache=${5:-} recompute=${6:-auto} out="$work/run-$1-$3${6:+-$6}"
  rm -rf "$out"
  cat > "$work/$name.yaml" <<YAML
run: {output_dir: $out, seed: 1, threads: $threads}
devices: {count: 2}
teacher: {path: $work/$name-teacher, devices: [0], dtype: $dtype}
student: {path: $work/$name-student, devices: [1], dtype: $dtype}
lora: {r: $lora_r, alpha: $((2 * lora_r)), dropout: 0.05}
distill: {alpha: 0.8, temperature: 2.0}
data: {train: $work/$name-tokens.jsonl, format: tokens, shuffle: false, teacher_cache: ${cache:-null}}
train: {max_steps: $((steps + 1)), batch_size: $batch, lr: 1.0e-4, lr_schedule: constant, warmup_steps: 0, activation_checkpointing: true, recompute: $recompute}
checkpoint: {every_steps: 0, keep_last: 1}
YAML
}

kd_run() {  # name batch threads dtype [teacher cache directory] [train.recompute]
  local name=$1 threads=$3 dtype=$4 cache=${5:-} recompute=${6:-}
  write_config "$@"
  python3 - "$kd" "$work/$name.yaml" "$threads" "$dtype" "$cache" "$work/run-$1-$3${recompute:+-$recompute}/metrics.jsonl" "${recompute:-auto}" <<'PY'
import json, resource, statistics, subprocess, sys
kd, config, threads, dtype, cache, metrics, recompute = sys.argv[1:8]
def swapped_out_pages():  # pages the whole system has swapped out since boot
    return next(int(l.split()[1]) for l in open("/proc/vmstat") if l.startswith("pswpout "))
swapped = swapped_out_pages()
run = subprocess.run([kd, "train", "--config", config], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
if run.returncode != 0:
    sys.exit(f"kd train --config {config} failed ({run.returncode}): {run.stderr}")
steps = [json.loads(line) for line in open(metrics)][1:]  # the first step warms up
seconds = [s["tokens"] / s["tokens_per_s"] for s in steps]  # each step's time as kd measured it (load excluded)
print(json.dumps({"impl": "kd", "held": "bf16" if dtype == "auto" else dtype, "teacher": cache or "live", "recompute": recompute,
                  "threads": int(threads), "tokens": steps[0]["tokens"],
                  "step_s_median": round(statistics.median(seconds), 4), "tokens_per_s": round(steps[0]["tokens"] / statistics.median(seconds), 1),
                  "step_s": [round(s, 3) for s in seconds],
                  "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
                  "swapped_out_pages": swapped_out_pages() - swapped}))
PY
}

torch_run() {  # name batch threads [preload] [checkpointing: on (default in real mode) or off]
  local name=$1 batch=$2 threads=$3 preload=${4:-} checkpointing=${5:-$([ "$mode" = real ] && echo on || echo off)}
  LD_PRELOAD=$preload python3 Scripts/bench_train_torch.py --teacher "$work/$name-teacher" --student "$work/$name-student" \
    --tokens "$work/$name-tokens.jsonl" --threads "$threads" --steps "$steps" --batch-size "$batch" --r "$lora_r" \
    $([ "$checkpointing" = on ] && echo --checkpointing) 2>/dev/null \
    | python3 -c "import json,sys; r=json.loads(sys.stdin.read()); r['impl']='torch' + ('+jemalloc' if '$preload' else ''); print(json.dumps(r))"
}

runs=$work/runs-$mode.jsonl
: > "$runs"
for shape in "${shapes[@]}"; do
  set -- $shape
  if [ "$mode" = cache ]; then
    write_config "$1" "$2" 2 auto
    for k in 16 64 256; do
      [ -f "$work/cache-$1-k$k/manifest.json" ] && grep -q '"complete" : true' "$work/cache-$1-k$k/manifest.json" \
        || $kd teacher-cache --config "$work/$1.yaml" --top-k $k --output "$work/cache-$1-k$k" 2>/dev/null \
        | python3 -c "import json,sys; r=json.load(sys.stdin); print(json.dumps({'cache': r['output'], 'top_k': r['top_k'], 'bytes_per_token': round(r['bytes_per_token'], 1), 'seconds': round(r['seconds'], 2)}))"
    done
  fi
  for threads in $thread_counts; do
    echo "# $1, $threads thread(s)"
    if [ "$mode" = cache ]; then
      kd_run "$1" "$2" "$threads" auto | tee -a "$runs"
      for k in 16 64 256; do kd_run "$1" "$2" "$threads" auto "$work/cache-$1-k$k" | tee -a "$runs"; done
      continue
    fi
    if [ "$mode" = real ]; then
      # Recomputing whole layers as transformers does, and keeping the layers' products (auto: here they fit).
      kd_run "$1" "$2" "$threads" auto "" layers | tee -a "$runs"
      kd_run "$1" "$2" "$threads" auto "" auto | tee -a "$runs"
    else
      kd_run "$1" "$2" "$threads" auto | tee -a "$runs"
      kd_run "$1" "$2" "$threads" f32 | tee -a "$runs"
    fi
    torch_run "$1" "$2" "$threads" | tee -a "$runs"
    [ -n "$jemalloc" ] && torch_run "$1" "$2" "$threads" "$jemalloc" | tee -a "$runs"
    # For reference, PyTorch recomputing nothing (glibc).
    [ "$mode" = real ] && torch_run "$1" "$2" "$threads" "" off | tee -a "$runs"
  done
done

if [ "$mode" = real ]; then python3 - "$runs" "$steps" <<'PY'
import json, sys
runs = [json.loads(line) for line in open(sys.argv[1])]
print(f"\nQwen3-30B-A3B (1 layer) → Qwen3-8B (4 layers), batch 1 × 512, LoRA r=64, checkpointing on; "
      f"median of {sys.argv[2]} steps after a warm-up step; kd holds bf16, PyTorch f32\n")
print("| threads | kd s/step, recompute: auto (keeps products) | kd s/step, recompute: layers | torch s/step (best allocator) "
      "| speed-up (auto) | speed-up (layers) | kd peak RSS (auto, layers) | torch peak RSS | torch peak RSS after load |")
print("|---|---|---|---|---|---|---|---|---|")
for threads in sorted({r["threads"] for r in runs}):
    kd = {r["recompute"]: r for r in runs if r["impl"] == "kd" and r["threads"] == threads}
    torch = min((r for r in runs if r["impl"].startswith("torch") and r["threads"] == threads and r["checkpointing"]),
                key=lambda r: r["step_s_median"])
    plain = next((r for r in runs if r["impl"] == "torch" and r["threads"] == threads and not r["checkpointing"]), None)
    after_load = f"{torch['peak_rss_after_load_mib']:,} MiB" if torch["peak_rss_after_load_mib"] is not None else "n/a"
    auto, layers = kd["auto"], kd["layers"]
    print(f"| {threads} | {auto['step_s_median']:.1f} | {layers['step_s_median']:.1f} | {torch['step_s_median']:.1f} ({torch['impl']}) "
          f"| {torch['step_s_median'] / auto['step_s_median']:.2f}× | {torch['step_s_median'] / layers['step_s_median']:.2f}× "
          f"| {auto['peak_rss_mib']:,}, {layers['peak_rss_mib']:,} MiB | {torch['peak_rss_mib']:,} MiB | {after_load} |")
    if plain:
        print(f"|   | PyTorch without checkpointing: {plain['step_s_median']:.1f} s/step, kd (auto) "
              f"{plain['step_s_median'] / auto['step_s_median']:.2f}× that, its peak RSS {plain['peak_rss_mib']:,} MiB | | | | | | | |")
swapped = [r for r in runs if r["swapped_out_pages"]]
if swapped:
    print(f"\nthe host swapped during {len(swapped)} run(s): " + ", ".join(f"{r['impl']} at {r['threads']} thread(s)" for r in swapped))
PY
fi
