#!/usr/bin/env python3
"""Replays the fault campaign's examples (the hardening issue's list) against a built kd and prints
one row per case: exit status, how it ended (exit or signal), `kd: error:` lines, seconds, and the first
error line (cut). Every case should end with exit 1 (64 for usage errors) and exactly one
`kd: error:` line, in well under the 20 s bound, or succeed (exit 0, no error) where the input is
valid.

    swift build -c release && python3 Scripts/fault_replay.py [--kd .build/release/kd]
"""
import argparse
import json
import os
import shutil
import struct
import subprocess
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FIXTURE = os.path.join(ROOT, "Tests/Fixtures/forward/dense-tied-gqa")
TRAIN = os.path.join(ROOT, "Tests/Fixtures/train/dense-teacher")


def run(kd, args, stdin=None, timeout=20, shell_prefix=None):
    command = [kd] + args
    if shell_prefix:
        command = ["/bin/sh", "-c", shell_prefix + ' exec "$0" "$@"'] + command
    start = time.time()
    try:
        p = subprocess.run(command, input=stdin, capture_output=True, timeout=timeout)
        status = p.returncode
        ended = f"signal {-status}" if status < 0 else f"exit {status}"
        err = p.stderr.decode(errors="replace")
    except subprocess.TimeoutExpired:
        ended, err = "TIMEOUT", ""
    errors = [l for l in err.split("\n") if l.startswith("kd: error:")]
    return ended, len(errors), time.time() - start, errors[0] if errors else ""


def safetensors(path, header, data, length=None):
    body = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(body) if length is None else length) + body + data)


def model_with(work, name, edit, source=FIXTURE):
    d = os.path.join(work, name)
    shutil.copytree(source, d)
    edit(d)
    return d


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--kd", default=os.path.join(ROOT, ".build/release/kd"))
    kd = parser.parse_args().kd
    work = tempfile.mkdtemp(prefix="kd-faults-")
    cases = []

    def case(name, args, **kw):
        cases.append((name, args, kw))

    tokens = os.path.join(FIXTURE, "tokens.jsonl")
    out = os.path.join(work, "out.safetensors")

    # safetensors headers
    def header_length(value):
        def edit(d):
            p = os.path.join(d, "model.safetensors")
            data = bytearray(open(p, "rb").read())
            data[0:8] = struct.pack("<Q", value)
            open(p, "wb").write(data)
        return edit
    for label, value in [("2^63", 1 << 63), ("2^64-1", (1 << 64) - 1), ("flipped byte", None), ("one byte short", -1)]:
        def edit(d, value=value):
            p = os.path.join(d, "model.safetensors")
            data = bytearray(open(p, "rb").read())
            n = struct.unpack("<Q", bytes(data[0:8]))[0]
            new = n ^ (1 << 40) if value is None else (n - 1 if value == -1 else value)
            data[0:8] = struct.pack("<Q", new)
            open(p, "wb").write(data)
        case(f"safetensors header length {label}", ["forward", "--model", model_with(work, "h" + str(len(cases)), edit),
                                                     "--tokens", tokens, "--output", out])

    def offsets_edit(shift):
        def edit(d):
            p = os.path.join(d, "model.safetensors")
            data = open(p, "rb").read()
            n = struct.unpack("<Q", data[:8])[0]
            header = json.loads(data[8:8 + n])
            name = sorted(k for k in header if k != "__metadata__")[0]
            begin, end = header[name]["data_offsets"]
            header[name]["data_offsets"] = shift(begin, end)
            safetensors(p, header, data[8 + n:])
        return edit
    case("data_offsets ending near Int.max", ["forward", "--model", model_with(work, "o1", offsets_edit(
        lambda b, e: [b, (1 << 63) - 1])), "--tokens", tokens, "--output", out])
    case("overlapping data_offsets", ["forward", "--model", model_with(work, "o2", offsets_edit(
        lambda b, e: [b + 4, e + 4])), "--tokens", tokens, "--output", out])

    # config.json
    def config_edit(key, value):
        def edit(d):
            p = os.path.join(d, "config.json")
            c = json.load(open(p))
            c[key] = value
            json.dump(c, open(p, "w"))
        return edit
    for key, value in [("num_hidden_layers", 1 << 31), ("num_hidden_layers", (1 << 63) - 1), ("hidden_size", 1 << 62),
                       ("num_experts", 1 << 40), ("vocab_size", 1 << 62)]:
        source = os.path.join(ROOT, "Tests/Fixtures/forward/moe-8x2") if key == "num_experts" else FIXTURE
        case(f"config.json {key} {value}", ["inspect", "--model", model_with(work, f"c{len(cases)}", config_edit(key, value), source)])
    case("kd init intermediate_size -1", ["init", "--preset", "qwen3-0.6b", "--set", "intermediate_size=-1",
                                          "--output", os.path.join(work, "init")])

    # tokenizer.json
    tok_src = json.load(open(os.path.join(ROOT, "Configs/tokenizer/qwen3/tokenizer.json")))
    for label, value in [("negative id", -5), ("Int64.max id", (1 << 63) - 1), ("id 2e9", 2_000_000_000)]:
        d = os.path.join(work, f"tok{len(cases)}")
        os.makedirs(d)
        t = dict(tok_src)
        t["added_tokens"] = list(tok_src["added_tokens"]) + [{"id": value, "content": "<zz>", "special": True}]
        json.dump(t, open(os.path.join(d, "tokenizer.json"), "w"))
        case(f"tokenizer.json {label}", ["tokenize", "--tokenizer", d], stdin=b'{"text": "hi"}\n')
    qwen = os.path.join(ROOT, "Configs/tokenizer/qwen3")
    case("BPE: 80 KB of 'a'", ["tokenize", "--tokenizer", qwen], stdin=json.dumps({"text": "a" * 80_000}).encode() + b"\n")
    case("BPE: 40k combining marks", ["tokenize", "--tokenizer", qwen],
         stdin=json.dumps({"text": "e" + "\u0301" * 40_000}).encode() + b"\n")

    # run YAML
    models = f"teacher: {{path: {TRAIN}/teacher, devices: [0]}}\nstudent: {{path: {TRAIN}/student, devices: [1]}}\n"
    for yaml in ["devices: {count: 1e12}", "devices: {count: 1000000000000}", "lora: {r: 9223372036854775807}",
                 "lora: {r: 1000000}", "devices: {memory_per_device: 1e30GiB}", "train: {weight_decay: -1}",
                 "train: {adam_eps: .inf}", "run: {output_dir: null}", "train: {batch_size: 9223372036854775807}"]:
        case(f"run YAML {yaml}", ["plan", "--config", "-"], stdin=(models + yaml + "\n").encode())
    case("run YAML with a UTF-8 BOM", ["config", "--config", "-"], stdin="\ufefflora: {r: 8}\n".encode())
    case("data.train naming a directory", ["data", "--config", "-", "--stats"],
         stdin=(models + f"data: {{train: {work}, format: tokens}}\n").encode())

    # data
    big = os.path.join(work, "bigid.jsonl")
    open(big, "w").write('{"input_ids": [1, 4294967301, 2]}\n')
    case("token id 2^32+5", ["data", "--config", "-", "--stats"], stdin=(models + f"data: {{train: {big}}}\n").encode())
    oov = os.path.join(work, "oov.jsonl")
    open(oov, "w").write('{"input_ids": [1, 2, 3]}\n' * 50 + '{"input_ids": [1, 99999, 2]}\n')
    case("out-of-vocabulary id at line 51", ["data", "--config", "-", "--stats"], stdin=(models + f"data: {{train: {oov}}}\n").encode())
    long_row = os.path.join(work, "long.jsonl")
    open(long_row, "w").write(json.dumps({"input_ids": [5] * 100_000}) + "\n")
    case("kd forward, one 100k-token row", ["forward", "--model", FIXTURE, "--tokens", long_row, "--output", out])
    case("kd generate --max-new-tokens 1e9", ["generate", "--model", FIXTURE, "--prompt-ids", "1,2", "--max-new-tokens", "1000000000"])

    # outputs
    precious = os.path.join(work, "precious")
    os.makedirs(os.path.join(precious, "deep"))
    open(os.path.join(precious, "deep", "keep.txt"), "w").write("keep")
    case("kd forward --output naming a directory", ["forward", "--model", FIXTURE, "--tokens", tokens, "--output", precious])
    case("kd init --force --output /", ["init", "--preset", "qwen3-0.6b", "--config-only", "--force", "--output", "/"])
    case("kd init --force over a user directory", ["init", "--preset", "qwen3-0.6b", "--config-only", "--force",
                                                   "--output", precious])
    fifo_model = model_with(work, "fifo", lambda d: (os.remove(os.path.join(d, "model.safetensors")),
                                                     os.mkfifo(os.path.join(d, "model.safetensors"))))
    case("FIFO as model.safetensors", ["inspect", "--model", fifo_model])

    # arguments
    case("unknown flag", ["train", "--config", "x", "--bogus"])
    case("--temperature -1", ["generate", "--model", FIXTURE, "--prompt-ids", "1", "--temperature", "-1"])
    case("overflowing integer", ["forward", "--model", FIXTURE, "--tokens", tokens, "--output", out,
                                 "--batch-rows", "99999999999999999999"])

    # checkpoint under a file-size limit
    run_dir = os.path.join(work, "run")
    train_args = ["train", "--config", f"{TRAIN}/run.yaml", "--set", f"run.output_dir={run_dir}",
                  "--set", f"teacher.path={TRAIN}/teacher", "--set", f"student.path={TRAIN}/student",
                  "--set", f"lora.init_from={TRAIN}/adapter-init", "--set", f"data.train={TRAIN}/tokens.jsonl"]
    case("kd train under ulimit -f 16 (8 KiB)", train_args, shell_prefix="ulimit -f 16;")

    print(f"{'case':46} {'ended':10} {'errors':>6} {'s':>6}  error line")
    bad = 0
    for name, args, kw in cases:
        ended, lines, seconds, first = run(kd, args, **kw)
        ok = (ended == "exit 0" and lines == 0 or ended in ("exit 1", "exit 64") and lines == 1) and seconds < 20
        bad += not ok
        print(f"{name[:46]:46} {ended:10} {lines:6} {seconds:6.2f}  {first[:110]}{'' if ok else '   <-- NOT CLEAN'}")
    print(f"{len(cases)} cases, {bad} not clean")
    assert os.path.exists(os.path.join(precious, "deep", "keep.txt")), "a user directory was touched"
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
