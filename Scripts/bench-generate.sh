#!/usr/bin/env bash
# Greedy decoding throughput of kd generate and of transformers' generate on the same random
# Qwen3-0.6B checkpoint (kd init --preset qwen3-0.6b, f32 weights), in the same run, at 1 and 2
# threads: a 32-token prompt, 64 new tokens. Needs: pip install torch transformers.
# Usage: Scripts/bench-generate.sh [REPS]
set -euo pipefail
reps=${1:-3}
. "$(dirname "$0")/bench-setup.sh" bench-generate
[ -d "$work/qwen3-0.6b" ] || $kd init --preset qwen3-0.6b --output "$work/qwen3-0.6b"
prompt=$(python3 -c 'import random; random.seed(1); print(",".join(str(random.randrange(151643)) for _ in range(32)))')
for threads in 1 2; do
  for r in $(seq "$reps"); do
    $kd generate --model "$work/qwen3-0.6b" --prompt-ids "$prompt" --max-new-tokens 64 --threads $threads --json 2>/dev/null \
      | python3 -c "import json,sys; r=json.load(sys.stdin); print(json.dumps({'impl': 'kd', 'threads': $threads, 'new_tokens': len(r['ids']), 'decode_tokens_per_s': round(r['tokens_per_s'], 2), 'prefill_s': round(r['prefill_s'], 3)}))"
    python3 - "$work/qwen3-0.6b" "$prompt" "$threads" <<'PY' 2>/dev/null
import json, sys, time
import torch
from transformers import AutoModelForCausalLM
path, prompt, threads = sys.argv[1], [int(x) for x in sys.argv[2].split(",")], int(sys.argv[3])
torch.set_num_threads(threads)
model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
ids = torch.tensor([prompt])
times = []
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
print(json.dumps({"impl": "transformers", "threads": threads, "new_tokens": new, "decode_tokens_per_s": round(1 / decode, 2),
                  "prefill_s": round(clock.stamps[0] - start, 3)}))
PY
  done
done
