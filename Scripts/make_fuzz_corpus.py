#!/usr/bin/env python3
"""Makes the small synthetic fuzz seeds under Tests/Fixtures/fuzz-corpus (the other seeds are the
committed fixtures themselves; see Sources/KDFuzzSupport/FuzzSeeds.swift).

- tokenizer/*.json: byte-level BPE tokenizers with the Qwen2 pipeline (taken from
  Configs/tokenizer/qwen3/tokenizer.json) but a 256-byte vocabulary plus a few merges and added
  tokens, so a parse takes microseconds instead of the real file's second.
- safetensors/*.safetensors: every dtype kd knows, an empty tensor, metadata, an unaligned f32.
- trainer-state/*.json: a checkpoint's trainer_state.json.
- jsonl/*.jsonl: one file per data format (the first record decides the format).
- run-yaml/*: run configs in block and flow style; the part after the separator line holds
  `--set` overrides, one per line.

    python3 Scripts/make_fuzz_corpus.py
"""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
OUT = os.path.join(ROOT, "Tests", "Fixtures", "fuzz-corpus")
SEPARATOR = "\n@@kd-fuzz-part@@\n"


def write(relative, data):
    path = os.path.join(OUT, relative)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def byte_to_unicode():
    printable = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    mapped = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            mapped.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, mapped)}


def tokenizers():
    with open(os.path.join(ROOT, "Configs", "tokenizer", "qwen3", "tokenizer.json")) as f:
        qwen = json.load(f)
    table = byte_to_unicode()
    vocab = {table[b]: b for b in range(256)}
    merges = []
    for left, right in [("h", "e"), ("l", "l"), ("he", "ll"), ("hell", "o"), ("Ġ", "w"), ("o", "r"),
                        ("Ġw", "or"), ("l", "d"), ("Ġwor", "ld"), ("Ġ", "Ġ"), ("ĠĠ", "ĠĠ")]:
        vocab.setdefault(left + right, len(vocab))
        merges.append(f"{left} {right}")
    added = [{"id": len(vocab) + i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": i < 2}
             for i, c in enumerate(["<|endoftext|>", "<|im_start|>", "<think>"])]
    model = dict(qwen["model"])
    model["vocab"] = vocab
    model["merges"] = merges
    small = {k: v for k, v in qwen.items() if k not in ("model", "added_tokens")}
    small["added_tokens"] = added
    small["model"] = model
    write("tokenizer/small-bpe.json", json.dumps(small, ensure_ascii=False, indent=1))
    model = dict(model)
    model["merges"] = [m.split(" ") for m in merges]
    small["model"] = model
    write("tokenizer/small-bpe-pair-merges.json", json.dumps(small, ensure_ascii=False))


def safetensors(name, tensors, metadata=None, pad_first=0):
    header = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    data = b""
    for tname, dtype, shape, raw in tensors:
        header[tname] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((pad_first - len(text)) % 8 if pad_first == 0 else pad_first)
    write(f"safetensors/{name}.safetensors", struct.pack("<Q", len(text)) + text + data)


def safetensors_seeds():
    f32 = struct.pack("<4f", 1.0, -2.0, 0.5, 3.25)
    safetensors("every-dtype", [
        ("w.f32", "F32", [2, 2], f32),
        ("w.bf16", "BF16", [3], struct.pack("<3H", 0x3F80, 0xC000, 0x7F80)),
        ("w.f16", "F16", [2], struct.pack("<2H", 0x3C00, 0xFC00)),
        ("w.f64", "F64", [1], struct.pack("<d", 1.5)),
        ("ids.i64", "I64", [2], struct.pack("<2q", 7, -1)),
        ("ids.i32", "I32", [1, 1], struct.pack("<i", 3)),
        ("mask.u8", "U8", [2], b"\x01\x00"),
        ("mask.bool", "BOOL", [1], b"\x01"),
        ("empty", "F32", [0, 4], b""),
        ("scalar", "F32", [], struct.pack("<f", 2.0)),
    ], metadata={"format": "pt"})
    # A 2-byte tensor first leaves the f32 one unaligned (the copying load path).
    safetensors("unaligned-f32", [
        ("pad", "BF16", [1], struct.pack("<H", 0x3F80)),
        ("matrix", "F32", [2, 3], struct.pack("<6f", 1, 2, 3, 4, 5, 6)),
    ])
    write("safetensors/empty-header.safetensors", struct.pack("<Q", 2) + b"{}")


def trainer_state():
    state = {
        "config_hash": "9f2c4be1d07a3e55", "cursor": {"epoch": 1, "index": 2}, "kd_version": "0.1.0",
        "rng": "keyed(seed, step, micro_batch, module)", "seed": 7,
        "scheduler": {"last_lr": 0.00995, "max_steps": 50, "peak_lr": 0.01, "schedule": "cosine", "warmup_steps": 5},
        "shapes": {"lora.r": "4", "student.layers": "2", "student.hidden_size": "32"}, "step": 3,
    }
    write("trainer-state/trainer_state.json", json.dumps(state, indent=2, sort_keys=True))


def jsonl():
    records = {
        "chat": {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                              {"role": "assistant", "content": "Hello world"}]},
        "prompt-response": {"prompt": "Say hi", "response": "hello"},
        "instruction-output": {"instruction": "Count", "input": "1 2", "output": "3"},
        "gsm8k": {"question": "2 + 2?", "answer": "2 + 2 = 4\n#### 4"},
        "humaneval": {"task_id": "HumanEval/0", "prompt": "def f(x):\n", "canonical_solution": "    return x\n",
                      "test": "assert f(1) == 1", "entry_point": "f"},
        "tokens": {"input_ids": [1, 2, 3, 4], "labels": [-100, -100, 3, 4]},
    }
    for name, record in records.items():
        write(f"jsonl/{name}.jsonl", json.dumps(record) + "\n" + json.dumps(record, indent=None) + "\n")


def run_yaml():
    block = """run:
  output_dir: runs/fuzz
  seed: 7
  threads: 2
devices:
  count: 2
  memory_per_device: 512MiB
teacher:
  path: models/teacher
  devices: [0]
student:
  path: models/student
  devices: [1]
lora:
  r: 8
  alpha: 16
  target_modules: [q_proj, v_proj]
  init: gaussian
distill: {alpha: 0.5, temperature: 1.5, chunk_tokens: 64}
data: {train: train.jsonl, format: chat, max_seq_len: 128, on_bad_record: skip}
train: {max_steps: 10, batch_size: 2, lr: 1.0e-4, lr_schedule: linear}
checkpoint: {every_steps: 5, keep_last: 1}
log: {every_steps: 1}
"""
    overrides = "train.max_steps=3\ndevices.memory_per_device=1GiB\nlora.target_modules=[q_proj]\nrun.threads=null"
    write("run-yaml/block-with-overrides.yaml", block + SEPARATOR.lstrip("\n") + overrides)
    flow = json.dumps({"run": {"seed": 1}, "devices": {"count": 3}, "teacher": {"devices": [0, 1]},
                       "student": {"devices": [2]}, "lora": {"r": 2, "use_rslora": True}})
    write("run-yaml/json-style.yaml", flow + "\n")


if __name__ == "__main__":
    tokenizers()
    safetensors_seeds()
    trainer_state()
    jsonl()
    run_yaml()
