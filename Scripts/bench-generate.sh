#!/usr/bin/env bash
# Greedy decoding throughput on one random bf16 Qwen3-0.6B checkpoint (kd init --preset qwen3-0.6b
# --dtype bf16), in the same run, at 1 and 2 threads: kd generate with the weights held as bf16
# (--dtype auto) and widened to f32 (--dtype f32), and transformers' generate in f32; a 32-token
# prompt, 64 new tokens. Decoding reads every weight once per token, so beside the figures it
# prints the bytes a token reads in each dtype and the read bandwidth of this machine (one
# stream per thread, Scripts/bandwidth_bench.c): their ratio is the memory-bound limit.
# Needs: pip install torch transformers.
# Usage: Scripts/bench-generate.sh [REPS]
set -euo pipefail
reps=${1:-3}
. "$(dirname "$0")/bench-setup.sh" bench-generate
model="$work/qwen3-0.6b-bf16"
[ -d "$model" ] || $kd init --preset qwen3-0.6b --dtype bf16 --output "$model"
gcc -O3 -march=haswell Scripts/bandwidth_bench.c -o "$work/bandwidth_bench" -lpthread
prompt=$(python3 -c 'import random; random.seed(1); print(",".join(str(random.randrange(151643)) for _ in range(32)))')
# Weight bytes one decoded token reads: every matrix once (the tied head is the embedding).
python3 - "$model/config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
H, I, L, V = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
h, kv, d = c["num_attention_heads"], c["num_key_value_heads"], c.get("head_dim", H // c["num_attention_heads"])
matrices = L * (H * d * (2 * h + 2 * kv) + 3 * H * I) + V * H
print(json.dumps({"weight_elements_per_token": matrices, "bytes_per_token_f32": 4 * matrices, "bytes_per_token_bf16": 2 * matrices}))
PY
for threads in 1 2; do
  "$work/bandwidth_bench" $threads
  for r in $(seq "$reps"); do
    for dtype in f32 auto; do
      $kd generate --model "$model" --prompt-ids "$prompt" --max-new-tokens 64 --threads $threads --dtype $dtype --json 2>/dev/null \
        | python3 -c "import json,sys; r=json.load(sys.stdin); print(json.dumps({'impl': 'kd', 'held': '$dtype'.replace('auto', 'bf16'), 'threads': $threads, 'new_tokens': len(r['ids']), 'decode_tokens_per_s': round(r['tokens_per_s'], 2), 'prefill_s': round(r['prefill_s'], 3)}))"
    done
    python3 - "$model" "$prompt" "$threads" <<'PY' 2>/dev/null
import json, sys, time
import torch
from transformers import AutoModelForCausalLM
path, prompt, threads = sys.argv[1], [int(x) for x in sys.argv[2].split(",")], int(sys.argv[3])
torch.set_num_threads(threads)
model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
ids = torch.tensor([prompt])
class Clock:  # time each generated token
    def __init__(self): self.stamps = []
    def __call__(self, input_ids, scores):
        self.stamps.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool)
clock = Clock()
with torch.no_grad():
    start = time.perf_counter()
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=64,
                         min_new_tokens=64, stopping_criteria=[clock], pad_token_id=0)
new = out.shape[1] - len(prompt)
decode = (clock.stamps[-1] - clock.stamps[0]) / max(1, len(clock.stamps) - 1)
print(json.dumps({"impl": "transformers", "held": "f32", "threads": threads, "new_tokens": new,
                  "decode_tokens_per_s": round(1 / decode, 2), "prefill_s": round(clock.stamps[0] - start, 3)}))
PY
  done
done
