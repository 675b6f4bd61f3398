#!/usr/bin/env bash
# Teacher forward at the real MoE shape (issue 14, benchmark 1): kd forward against transformers on
# random bf16 Qwen3-30B-A3B-shaped checkpoints from kd init (hidden 2048, 32/4 heads, head_dim 128,
# 128 experts, top-8, moe_intermediate 768, vocabulary 151,936) cut to 3 layers and to 1 layer, on
# random token ids in batches of 1 × 512 and 4 × 256, at 1 and 2 threads.
#   kd:    `kd forward --threads T --json`, weights held as stored (bf16), one process per run; its
#          forward_s is the first and only forward of the process, load excluded (the checkpoint's
#          files are read into the page cache first, so what is left of a warm-up is kd mapping
#          them: minor page faults, a fraction of a second); layers_s and head_s split it.
#   torch: AutoModelForCausalLM.from_pretrained(dtype=float32), torch.set_num_threads(T),
#          torch.no_grad(), use_cache=False, one process per run: load, one warm-up forward, then the
#          timed forward: model.model (the layers, as kd's layers_s) then model.lm_head (all
#          logits, as kd computes; head_s), the same work as one model(...) call.
# Each repetition runs kd then torch on the 1-layer then the 3-layer model, so the two alternate and
# share the host's noise; every process ends before the next starts (the 3-layer model is 2.49 G
# parameters, the 1-layer one 1.25 G: 5.0 GB in bf16 for kd, 10 GB in f32 for torch, whose peak RSS,
# ~19.5 GB, is set by from_pretrained while it loads). One MoE layer's time is the difference of the
# 3- and 1-layer medians of layers_s, halved; with few repetitions on a busy host it can come out
# meaningless.
# Prints a JSON line per run, a JSON line of medians per configuration, and a markdown table;
# the runs are also kept in runs/bench-real-shapes/runs.jsonl.
# Needs: pip install torch transformers. Usage: Scripts/bench-real-shapes.sh [REPS]
set -euo pipefail
reps=${1:-3}
. "$(dirname "$0")/bench-setup.sh" bench-real-shapes
for layers in 1 3; do
  [ -d "$work/moe-$layers" ] || $kd init --preset qwen3-30b-a3b --set num_hidden_layers=$layers --dtype bf16 \
    --output "$work/moe-$layers" --seed 1 >/dev/null
done
python3 - "$work" <<'PY'
import json, random, sys
random.seed(0)
for rows, length in [(1, 512), (4, 256)]:
    with open(f"{sys.argv[1]}/tokens-{rows}x{length}.jsonl", "w") as f:
        for _ in range(rows):
            f.write(json.dumps({"input_ids": [random.randrange(151643) for _ in range(length)]}) + "\n")
PY

kd_run() {  # layers shape threads
  cat "$work/moe-$1"/*.safetensors >/dev/null
  $kd forward --model "$work/moe-$1" --tokens "$work/tokens-$2.jsonl" --output "$work/logits.safetensors" \
    --threads "$3" --json 2>>"$work/kd.log" \
    | python3 -c "
import json, sys
r = json.loads(sys.stdin.read())
print(json.dumps({'impl': 'kd', 'layers': $1, 'shape': '$2', 'threads': $3, 'forward_s': round(r['forward_s'], 3),
  'layers_s': round(r['layers_s'], 3), 'head_s': round(r['head_s'], 3),
  'load_s': round(r['load_s'], 2), 'peak_rss_mib': round(r['peak_rss_bytes'] / 2**20)}))"
  rm -f "$work/logits.safetensors"
}

torch_run() {  # layers shape threads
  python3 - "$work/moe-$1" "$work/tokens-$2.jsonl" "$3" "$1" "$2" 2>>"$work/torch.log" <<'PY'
import json, resource, sys, time
import torch
from transformers import AutoModelForCausalLM
model_dir, tokens, threads, layers, shape = sys.argv[1:6]
torch.set_num_threads(int(threads))
start = time.perf_counter()
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
load = time.perf_counter() - start
ids = torch.tensor([json.loads(line)["input_ids"] for line in open(tokens)])
mask = torch.ones_like(ids)
times = []
with torch.no_grad():
    for _ in range(2):  # the first call warms up allocators and kernels
        start = time.perf_counter()
        hidden = model.model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        middle = time.perf_counter()
        logits = model.lm_head(hidden)
        times.append((time.perf_counter() - start, middle - start, time.perf_counter() - middle))
        assert logits.shape == (*ids.shape, model.config.vocab_size), logits.shape
        del logits, hidden
print(json.dumps({"impl": "torch", "layers": int(layers), "shape": shape, "threads": int(threads),
                  "forward_s": round(times[1][0], 3), "layers_s": round(times[1][1], 3), "head_s": round(times[1][2], 3),
                  "warmup_s": round(times[0][0], 3), "load_s": round(load, 2),
                  "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))
PY
}

: > "$work/runs.jsonl"
for shape in 1x512 4x256; do
  for threads in 1 2; do
    for r in $(seq "$reps"); do
      for layers in 1 3; do
        kd_run $layers $shape $threads | tee -a "$work/runs.jsonl"
        torch_run $layers $shape $threads | tee -a "$work/runs.jsonl"
      done
    done
  done
done

python3 - "$work/runs.jsonl" <<'PY'
import json, statistics, sys
runs = [json.loads(line) for line in open(sys.argv[1])]
keys = sorted({(r["shape"], r["threads"]) for r in runs}, key=lambda k: (k[0] != "1x512", k[1]))
def median(impl, shape, threads, layers, field="forward_s"):
    return statistics.median(r[field] for r in runs
                             if (r["impl"], r["shape"], r["threads"], r["layers"]) == (impl, shape, threads, layers))
rows = []
for shape, threads in keys:
    b, s = map(int, shape.split("x"))
    m = {(impl, layers): median(impl, shape, threads, layers) for impl in ("kd", "torch") for layers in (1, 3)}
    body = {(impl, layers): median(impl, shape, threads, layers, "layers_s") for impl in ("kd", "torch") for layers in (1, 3)}
    head = {impl: median(impl, shape, threads, 3, "head_s") for impl in ("kd", "torch")}
    layer = {impl: (body[impl, 3] - body[impl, 1]) / 2 for impl in ("kd", "torch")}
    for impl in ("kd", "torch"):
        print(json.dumps({"impl": impl, "shape": shape, "threads": threads, "reps": sum(
            1 for r in runs if (r["impl"], r["shape"], r["threads"], r["layers"]) == (impl, shape, threads, 3)),
            "forward_s_median_1_layer": m[impl, 1], "forward_s_median_3_layers": m[impl, 3],
            "tokens_per_s_3_layers": round(b * s / m[impl, 3], 1), "moe_layer_s": round(layer[impl], 3),
            "head_s_median_3_layers": head[impl], "layers_s_median_3_layers": body[impl, 3],
            "load_s_median_3_layers": median(impl, shape, threads, 3, "load_s"),
            "peak_rss_mib_3_layers": max(r["peak_rss_mib"] for r in runs
                                          if (r["impl"], r["shape"], r["threads"], r["layers"]) == (impl, shape, threads, 3))}))
    rows.append(f"| {b} × {s} | {threads} | {m['kd', 3]:.2f} | {m['torch', 3]:.2f} | {b * s / m['kd', 3]:.0f} "
                f"| {m['torch', 3] / m['kd', 3]:.2f}× | {head['kd']:.2f} | {head['torch']:.2f} | {layer['kd']:.2f} | {layer['torch']:.2f} "
                + (f"| {layer['torch'] / layer['kd']:.2f}× |" if layer["kd"] > 0 and layer["torch"] > 0 else "| n/a (noise) |"))
print()
print("3-layer Qwen3-30B-A3B shape, forward s = median; head = the output projection's s; per MoE layer = the layers' s, (3-layer − 1-layer) / 2")
print()
print("| shape | threads | kd forward s | torch forward s | kd tokens/s | speed-up | kd head s | torch head s | kd s / MoE layer | torch s / MoE layer | layer speed-up |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
print("\n".join(rows))
PY
