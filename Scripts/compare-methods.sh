#!/usr/bin/env bash
# The distillation methods side by side on the demo task (Configs/demo.yaml: the same tuned teacher,
# one-layer student, HumanEval data, 60 steps and seed for each): off-policy forward KL, reverse KL
# and JSD (beta 0.5), on-policy JSD (half the micro-batches sampled by the student, 64 new tokens at
# temperature 1), and forward KL from an offline top-K teacher cache (K = 16 and 64). Every student
# is then scored by kd eval against the live teacher on the held-out problems (KL at the run's
# temperature T = 2, top-1 agreement, CE). Prints one markdown table; the runs are in runs/methods/.
# Scripts/demo.sh makes the models first if they are missing.
# Usage: Scripts/compare-methods.sh
set -euo pipefail
cd "$(dirname "$0")/.."
demo=runs/demo
[ -d "$demo/teacher" ] && [ -d "$demo/student" ] || Scripts/demo.sh
swift build -c release >/dev/null
kd=.build/release/kd
out=runs/methods
mkdir -p "$out"
config=Configs/demo.yaml

run() {  # name, extra kd train arguments...
  local name=$1; shift
  rm -rf "$out/$name"
  $kd train --config $config --set run.output_dir="$out/$name" "$@" > "$out/$name.jsonl" 2> "$out/$name.log"
  $kd eval --config $config --set run.output_dir="$out/$name" --no-tasks > "$out/$name.eval.json" 2>> "$out/$name.log"
}

run forward_kl
run reverse_kl --set distill.loss=reverse_kl
run jsd --set distill.loss=jsd --set distill.jsd_beta=0.5
run on_policy_jsd --set distill.loss=jsd --set distill.jsd_beta=0.5 --set distill.on_policy.fraction=0.5 \
  --set distill.on_policy.max_new_tokens=64 --set distill.on_policy.temperature=1
for k in 16 64; do
  rm -rf "$out/cache-k$k"
  $kd teacher-cache --config $config --top-k $k --output "$out/cache-k$k" > "$out/cache-k$k.json" 2> "$out/cache-k$k.log"
  run cache_k$k --set data.teacher_cache="$out/cache-k$k"
done

python3 - "$out" <<'PY'
import json, os, sys
out = sys.argv[1]
rows = [("forward_kl", "off-policy forward KL (live teacher)"), ("reverse_kl", "off-policy reverse KL"),
        ("jsd", "off-policy JSD, beta 0.5"), ("on_policy_jsd", "on-policy JSD, lambda 0.5"),
        ("cache_k16", "forward KL from a top-16 cache"), ("cache_k64", "forward KL from a top-64 cache")]
base = json.load(open(os.path.join(out, "forward_kl.eval.json")))["held_out"]["base"]
print("| method | held-out KL to teacher | top-1 agreement | student CE | train wall time (s) | of which sampling (s) | cache (s, bytes/token) |")
print("| --- | --- | --- | --- | --- | --- | --- |")
print(f"| base student (no adapter) | {base['kl']:.4f} | {100 * base['top1_agreement']:.1f}% | {base['ce']:.3f} | | | |")
for name, label in rows:
    held = json.load(open(os.path.join(out, f"{name}.eval.json")))["held_out"]["distilled"]
    steps = [json.loads(line) for line in open(os.path.join(out, f"{name}.jsonl"))]
    wall = steps[-1]["elapsed_s"]
    sampling = sum(s.get("generation_ms", 0) for s in steps) / 1000
    cache = ""
    if name.startswith("cache_k"):
        k = name[len("cache_k"):]
        summary = json.load(open(os.path.join(out, f"cache-k{k}.json")))
        seconds = summary["seconds"]
        cache = f"{seconds:.1f} s, {summary['bytes_per_token']:.0f} B"
    print(f"| {label} | {held['kl']:.4f} | {100 * held['top1_agreement']:.1f}% | {held['ce']:.3f} | {wall:.1f} | "
          f"{sampling:.1f} | {cache} |")
PY
