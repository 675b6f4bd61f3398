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
# Needs: pip install torch transformers peft. Usage: Scripts/bench-train.sh [STEPS] [dtype|cache]
set -euo pipefail
steps=${1:-5}
mode=${2:-dtype}
. "$(dirname "$0")/bench-setup.sh" bench-train
dpkg -s libjemalloc2 >/dev/null 2>&1 || apt-get install -y -qq libjemalloc2 >/dev/null
jemalloc=$(ls /usr/lib/x86_64-linux-gnu/libjemalloc.so.2 2>/dev/null || true)

make_models() {  # name teacher-overrides student-overrides
  local name=$1
  [ -d "$work/$name-teacher" ] || $kd init --preset "$4" $2 --dtype bf16 --output "$work/$name-teacher" --seed 1
  [ -d "$work/$name-student" ] || $kd init --preset "$5" $3 --dtype bf16 --output "$work/$name-student" --seed 2
}
make_models small \
  "--set num_hidden_layers=8 --set hidden_size=512 --set intermediate_size=1536 --set num_attention_heads=8 --set num_key_value_heads=4 --set head_dim=64 --set tie_word_embeddings=false" \
  "--set num_hidden_layers=4 --set hidden_size=256 --set intermediate_size=768 --set num_attention_heads=4 --set num_key_value_heads=2 --set head_dim=64 --set tie_word_embeddings=false" \
  qwen3-0.6b qwen3-0.6b
make_models qwen3 "--set num_hidden_layers=3" "--set num_hidden_layers=3" qwen3-1.7b qwen3-0.6b

python3 - "$work" <<'PY'
import json, random, sys
random.seed(0)
for name, rows, length in [("small", 4, 128), ("qwen3", 1, 256)]:
    with open(f"{sys.argv[1]}/{name}-tokens.jsonl", "w") as f:
        for _ in range(rows):
            f.write(json.dumps({"input_ids": [random.randrange(151643) for _ in range(length)]}) + "\n")
PY

write_config() {  # name batch threads dtype [teacher cache directory]: $work/NAME.yaml
  local name=$1 batch=$2 threads=$3 dtype=$4 cache=${5:-} out="$work/run-$1-$3"
  rm -rf "$out"
  cat > "$work/$name.yaml" <<YAML
run: {output_dir: $out, seed: 1, threads: $threads}
devices: {count: 2}
teacher: {path: $work/$name-teacher, devices: [0], dtype: $dtype}
student: {path: $work/$name-student, devices: [1], dtype: $dtype}
lora: {r: 16, alpha: 32, dropout: 0.05}
data: {train: $work/$name-tokens.jsonl, format: tokens, shuffle: false, teacher_cache: ${cache:-null}}
train: {max_steps: $((steps + 1)), batch_size: $batch, lr: 1.0e-4, lr_schedule: constant, warmup_steps: 0}
checkpoint: {every_steps: 0, keep_last: 1}
YAML
}

kd_run() {  # name batch threads dtype [teacher cache directory]
  local name=$1 threads=$3 dtype=$4 cache=${5:-}
  write_config "$@"
  python3 - "$kd" "$work/$name.yaml" "$threads" "$dtype" "$cache" <<'PY'
import json, resource, statistics, subprocess, sys
kd, config, threads, dtype, cache = sys.argv[1:6]
lines = subprocess.run([kd, "train", "--config", config, "--json"], capture_output=True, text=True, check=True).stdout.splitlines()
steps = [json.loads(l) for l in lines][1:]  # the first step warms up
tokens_per_s = statistics.median(s["tokens_per_s"] for s in steps)
print(json.dumps({"impl": "kd", "held": "bf16" if dtype == "auto" else dtype, "teacher": cache or "live", "threads": int(threads), "tokens": steps[0]["tokens"],
                  "step_s_median": round(steps[0]["tokens"] / tokens_per_s, 4), "tokens_per_s": round(tokens_per_s, 1),
                  "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)}))
PY
}

torch_run() {  # name batch threads [preload]
  local name=$1 batch=$2 threads=$3 preload=${4:-}
  LD_PRELOAD=$preload python3 Scripts/bench_train_torch.py --teacher "$work/$name-teacher" --student "$work/$name-student" \
    --tokens "$work/$name-tokens.jsonl" --threads "$threads" --steps "$steps" --batch-size "$batch" 2>/dev/null \
    | python3 -c "import json,sys; r=json.loads(sys.stdin.read()); r['impl']='torch' + ('+jemalloc' if '$preload' else ''); print(json.dumps(r))"
}

for shape in "small 4" "qwen3 1"; do
  set -- $shape
  if [ "$mode" = cache ]; then
    write_config "$1" "$2" 2 auto
    for k in 16 64 256; do
      [ -f "$work/cache-$1-k$k/manifest.json" ] && grep -q '"complete" : true' "$work/cache-$1-k$k/manifest.json" \
        || $kd teacher-cache --config "$work/$1.yaml" --top-k $k --output "$work/cache-$1-k$k" 2>/dev/null \
        | python3 -c "import json,sys; r=json.load(sys.stdin); print(json.dumps({'cache': r['output'], 'top_k': r['top_k'], 'bytes_per_token': round(r['bytes_per_token'], 1), 'seconds': round(r['seconds'], 2)}))"
    done
  fi
  for threads in 1 2; do
    echo "# $1, $threads thread(s)"
    if [ "$mode" = cache ]; then
      kd_run "$1" "$2" "$threads" auto
      for k in 16 64 256; do kd_run "$1" "$2" "$threads" auto "$work/cache-$1-k$k"; done
      continue
    fi
    kd_run "$1" "$2" "$threads" auto
    kd_run "$1" "$2" "$threads" f32
    torch_run "$1" "$2" "$threads"
    [ -n "$jemalloc" ] && torch_run "$1" "$2" "$threads" "$jemalloc"
  done
done
