#!/usr/bin/env bash
# Encoding throughput of kd's tokenizer beside the Hugging Face `tokenizers` library (one thread),
# on the whole HumanEval text (prompts, solutions, tests) repeated 10 times, in the same run.
# Needs: pip install tokenizers. Usage: Scripts/bench-tokenizer.sh [REPS]
set -euo pipefail
reps=${1:-3}
. "$(dirname "$0")/bench-setup.sh" bench-tokenizer
python3 - "$work/corpus.jsonl" <<'PY'
import gzip, json, sys
texts = []
with gzip.open("../shared/datasets/HumanEval.jsonl.gz", "rt") as f:
    for line in f:
        r = json.loads(line)
        texts += [r["prompt"], r["canonical_solution"], r["test"]]
with open(sys.argv[1], "w") as out:
    for _ in range(10):
        for t in texts:
            out.write(json.dumps({"text": t}) + "\n")
PY
tok=Configs/tokenizer/qwen3
for r in $(seq "$reps"); do
  echo -n "kd         "; $kd tokenize --tokenizer $tok --stats < "$work/corpus.jsonl" 2>&1 >/dev/null
  RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false python3 - "$tok/tokenizer.json" "$work/corpus.jsonl" <<'PY'
import json, sys, time
from tokenizers import Tokenizer
t0 = time.perf_counter()
tok = Tokenizer.from_file(sys.argv[1])
load = time.perf_counter() - t0
texts = [json.loads(l)["text"] for l in open(sys.argv[2])]
n = sum(len(t.encode()) for t in texts)
t0 = time.perf_counter()
ids = [tok.encode(t, add_special_tokens=False).ids for t in texts]
enc = time.perf_counter() - t0
print(f"tokenizers {len(texts)} texts, {n} bytes, {sum(map(len, ids))} tokens; load {load:.3f} s, encode {enc:.3f} s, {n / enc / 1e6:.2f} MB/s")
PY
done
