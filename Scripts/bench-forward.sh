#!/usr/bin/env bash
# kd forward throughput on a random Qwen3-0.6B (batch 1 × 256 tokens) at 1 and 2 BLAS threads,
# beside OpenBLAS sgemm GFLOP/s measured in the same run, with load time and peak RSS.
# Usage: Scripts/bench-forward.sh [REPS]
set -euo pipefail
reps=${1:-3}
. "$(dirname "$0")/bench-setup.sh" bench-forward
[ -d "$work/qwen3-0.6b" ] || $kd init --preset qwen3-0.6b --dtype bf16 --output "$work/qwen3-0.6b"
gcc -O2 Scripts/sgemm_bench.c -o "$work/sgemm_bench" -lopenblas
python3 -c 'import json, random; random.seed(0); print(json.dumps({"input_ids": [random.randrange(151643) for _ in range(256)]}))' > "$work/tokens.jsonl"
# FLOPs of one forward pass: 2·(linear weights incl. lm_head)·tokens plus attention as computed
# (two S×S×head_dim products per head and layer).
flops=$(python3 -c 'L,H,I,V,h,kv,d,S=28,1024,3072,151936,16,8,128,256; lin=L*(H*d*(2*h+2*kv)+3*H*I)+V*H; print(2*lin*S + L*h*2*2*S*S*d)')
for threads in 1 2; do
  for shape in "256 2048 1024" "256 3072 1024" "256 1024 3072" "256 151936 1024"; do
    "$work/sgemm_bench" $threads $shape 10
  done
  for r in $(seq "$reps"); do
    $kd forward --model "$work/qwen3-0.6b" --tokens "$work/tokens.jsonl" --output "$work/logits.safetensors" \
      --threads $threads --json 2>/dev/null
  done | python3 -c "
import json, sys, statistics
runs = [json.loads(l) for l in sys.stdin]
fwd = statistics.median(r['forward_s'] for r in runs)
print(json.dumps({'threads': $threads, 'runs': len(runs), 'forward_s_median': round(fwd, 3),
  'tokens_per_s_median': round(256 / fwd, 1), 'model_gflops': round($flops / fwd * 1e-9, 1),
  'load_s_median': round(statistics.median(r['load_s'] for r in runs), 2),
  'peak_rss_mib': round(max(r['peak_rss_bytes'] for r in runs) / 2**20)}))"
done
