#!/usr/bin/env python3
"""Makes Tests/Fixtures/generation/expected.jsonl: transformers' greedy generate
(do_sample=False) on the committed forward and training fixtures, dense and MoE, with and
without a PEFT adapter. Each line: {"model", "adapter", "prompt", "max_new_tokens", "ids"} with
paths relative to Tests/Fixtures and ids the generated tokens only.

    pip install torch transformers peft
    python3 Scripts/make_generation_fixtures.py
"""
import json
import os

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "Fixtures")
CASES = [
    ("forward/dense-tied-gqa", None, [[3, 17, 42, 8, 99], [5]]),
    ("forward/dense-mqa-headdim-sharded", None, [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]]),
    ("forward/moe-8x2", None, [[3, 17, 42, 8, 99], [120, 7]]),
    ("train/dense-teacher/student", "train/dense-teacher/adapter-init", [[9, 33, 2, 7], [50]]),
    ("train/moe-teacher/teacher", None, [[11, 12, 13]]),
]
NEW_TOKENS = 12


def main():
    out = os.path.join(FIXTURES, "generation")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "expected.jsonl"), "w") as f:
        for model_path, adapter, prompts in CASES:
            model = AutoModelForCausalLM.from_pretrained(os.path.join(FIXTURES, model_path), dtype=torch.float32,
                                                         attn_implementation="eager")
            if adapter:
                model = PeftModel.from_pretrained(model, os.path.join(FIXTURES, adapter))
            model.eval()
            for prompt in prompts:
                ids = torch.tensor([prompt])
                with torch.no_grad():
                    generated = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                               max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, pad_token_id=0)
                new = generated[0, len(prompt):].tolist()
                f.write(json.dumps({"model": model_path, "adapter": adapter, "prompt": prompt,
                                    "max_new_tokens": NEW_TOKENS, "ids": new}) + "\n")
                print(model_path, adapter is not None, prompt, new)


if __name__ == "__main__":
    main()
