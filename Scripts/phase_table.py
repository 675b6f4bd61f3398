#!/usr/bin/env python3
"""Per-phase time, GFLOP and GFLOP/s of a kd training run, against OpenBLAS sgemm on the same products.

Reads the `phase_ms` of a run's metrics.jsonl (the median over its steps after the first), counts
each phase's floating-point work from the models' config.json and the run's shape, and times
OpenBLAS sgemm alone (Scripts/sgemm_bench.c, best of REPS calls) on every product shape of the
phase. A phase's sgemm rate is its FLOPs over the summed time sgemm takes for its products:

    sgemm GFLOP/s = Σ flops_i / Σ (flops_i / rate_i)

The work counted is the products kd performs (elementwise work is left out): per layer the q, k, v,
o and feed-forward products; attention as kd computes it, every (batch row, head) a full S×S score
product and its product with V (backward: four products, the probabilities recomputed); a MoE
block's router and experts, each expert given the mean number of tokens, T·top_k/experts; a LoRA
adapter's two thin products (backward: four). Backward forms input gradients only (the base
weights are frozen). The head is the scored rows' output projection (the student's: and its
backward). `student_loss` and `optimizer` are elementwise: their rows show time only.

    python3 Scripts/phase_table.py --metrics RUN/metrics.jsonl --teacher DIR --student DIR \
        --batch 1 --seq 512 --lora-r 64 --threads 1 [--recompute layers|attention] [--reps 3]
"""
import argparse
import json
import os
import statistics
import subprocess
import tempfile

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def shapes(config):
    h, heads = config["hidden_size"], config["num_attention_heads"]
    kv, hd = config["num_key_value_heads"], config.get("head_dim") or h // heads
    return h, heads, kv, hd


def linears(config):
    """(name, in, out) of a layer's dense products (a dense layer's MLP, not a MoE block's)."""
    h, heads, kv, hd = shapes(config)
    i = config["intermediate_size"]
    return [("q_proj", h, heads * hd), ("k_proj", h, kv * hd), ("v_proj", h, kv * hd), ("o_proj", heads * hd, h),
            ("gate_proj", h, i), ("up_proj", h, i), ("down_proj", i, h)]


def attention_forward(config, batch, seq, tokens):
    """Products (m, n, k, form, count) of a layer's attention in a forward pass."""
    h, heads, kv, hd = shapes(config)
    return [(tokens, heads * hd, h, "nt", 1), (tokens, kv * hd, h, "nt", 2), (tokens, h, heads * hd, "nt", 1),
            (seq, seq, hd, "nt", batch * heads), (seq, hd, seq, "nn", batch * heads)]


def teacher_layer(config, batch, seq):
    tokens = batch * seq
    h, *_ = shapes(config)
    products = attention_forward(config, batch, seq, tokens)
    experts = config.get("num_experts") or config.get("num_local_experts")
    if experts:
        top_k, size = config["num_experts_per_tok"], config["moe_intermediate_size"]
        m = max(1, round(tokens * top_k / experts))
        products += [(tokens, experts, h, "nt", 1), (m, size, h, "nt", 2 * experts), (m, h, size, "nt", experts)]
    else:
        i = config["intermediate_size"]
        products += [(tokens, i, h, "nt", 2), (tokens, h, i, "nt", 1)]
    return products


def student_forward_layer(config, batch, seq, rank):
    tokens = batch * seq
    products = [(tokens, n, k, "nt", 1) for _, k, n in linears(config)]
    products += attention_forward(config, batch, seq, tokens)[3:]
    for _, k, n in linears(config):
        products += [(tokens, rank, k, "nt", 1), (tokens, n, rank, "nt", 1)]
    return products


def student_recompute_layer(config, batch, seq, rank, mode):
    """A checkpointed layer's second forward: with train.recompute `layers` every product of the
    forward but the down projection's (its output is not read) and its adapter's B; with
    `attention` (the layer kept its products) attention and each adapter's A·x only."""
    tokens = batch * seq
    products = attention_forward(config, batch, seq, tokens)[3:]
    for name, k, n in linears(config):
        products.append((tokens, rank, k, "nt", 1))
        if mode == "layers" and name != "down_proj":
            products += [(tokens, n, k, "nt", 1), (tokens, n, rank, "nt", 1)]
    return products


def student_backward_layer(config, batch, seq, rank):
    tokens = batch * seq
    h, heads, kv, hd = shapes(config)
    products = [(tokens, k, n, "nn", 1) for _, k, n in linears(config)]
    # Recomputed probabilities, dV = Pᵀ·dO, dP = dO·Vᵀ, dQ = dS·K, dK = dSᵀ·Q.
    products += [(seq, seq, hd, "nt", batch * heads), (seq, hd, seq, "tn", batch * heads),
                 (seq, seq, hd, "nt", batch * heads), (seq, hd, seq, "nn", batch * heads),
                 (seq, hd, seq, "tn", batch * heads)]
    for _, k, n in linears(config):
        products += [(n, rank, tokens, "tn", 1), (tokens, rank, n, "nn", 1), (rank, k, tokens, "tn", 1),
                     (tokens, k, rank, "nn", 1)]
    return products


def flops(products):
    return sum(2.0 * m * n * k * count for m, n, k, _, count in products)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--metrics", required=True)
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--student", required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--seq", type=int, required=True)
    parser.add_argument("--scored", type=int, help="scored rows per step (default batch·(seq−1))")
    parser.add_argument("--lora-r", type=int, required=True, help="rank, on all seven projections")
    parser.add_argument("--threads", type=int, required=True, help="sgemm's threads (the run's BLAS threads)")
    parser.add_argument("--recompute", choices=["layers", "attention"], default="attention",
                        help="the run's train.recompute (auto: attention when every layer kept its products, as kd plan's "
                             "layers_keeping_products says)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON lines too")
    args = parser.parse_args()

    steps = [json.loads(line) for line in open(args.metrics) if line.strip()]
    steps = steps[1:] or steps  # the first step warms up
    phase_ms = {key: statistics.median(s["phase_ms"].get(key, 0) for s in steps) for key in steps[0]["phase_ms"]}
    teacher = json.load(open(os.path.join(args.teacher, "config.json")))
    student = json.load(open(os.path.join(args.student, "config.json")))
    b, s, r = args.batch, args.seq, args.lora_r
    scored = args.scored or b * (s - 1)
    sh = student["hidden_size"]
    phases = {
        "teacher_forward": teacher_layer(teacher, b, s) * teacher["num_hidden_layers"],
        "teacher_head": [(scored, teacher["vocab_size"], teacher["hidden_size"], "nt", 1)],
        "student_forward": student_forward_layer(student, b, s, r) * student["num_hidden_layers"],
        "student_head": [(scored, student["vocab_size"], sh, "nt", 1), (scored, sh, student["vocab_size"], "nn", 1)],
        "student_loss": [],
        "student_recompute": student_recompute_layer(student, b, s, r, args.recompute) * student["num_hidden_layers"]
        if phase_ms.get("student_recompute") else [],
        "student_backward": student_backward_layer(student, b, s, r) * student["num_hidden_layers"],
        "optimizer": [],
    }

    with tempfile.TemporaryDirectory() as work:
        bench = os.path.join(work, "sgemm_bench")
        source = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sgemm_bench.c")
        subprocess.run(["gcc", "-O2", source, "-o", bench, "-lopenblas"], check=True)
        rates = {}
        for products in phases.values():
            for m, n, k, form, _ in products:
                if (m, n, k, form) not in rates:
                    out = subprocess.run([bench, str(args.threads), str(m), str(n), str(k), str(args.reps), form],
                                         capture_output=True, text=True, check=True).stdout
                    rates[m, n, k, form] = json.loads(out)["gflops_best"]

    print(f"| phase | ms | GFLOP | GFLOP/s | sgemm GFLOP/s, same products ({args.threads} thread(s)) | share of sgemm |")
    print("|---|---|---|---|---|---|")
    for name, products in phases.items():
        ms = phase_ms.get(name, 0)
        work = flops(products)
        row = {"phase": name, "ms": round(ms, 1)}
        if work and ms:
            rate = work / (ms / 1000) / 1e9
            limit = work / sum(2.0 * m * n * k * c / (rates[m, n, k, f] * 1e9) for m, n, k, f, c in products) / 1e9
            row.update(gflop=round(work / 1e9, 1), gflops=round(rate, 1), sgemm_gflops=round(limit, 1),
                       share=round(rate / limit, 2))
            print(f"| {name} | {ms:.0f} | {work / 1e9:.1f} | {rate:.1f} | {limit:.1f} | {rate / limit:.0%} |")
        else:
            print(f"| {name} | {ms:.0f} | — | — | — | — |")
        if args.json:
            print(json.dumps(row))


if __name__ == "__main__":
    main()
