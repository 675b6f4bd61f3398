#!/usr/bin/env python3
"""The same knowledge-distillation step as kd, in PyTorch + PEFT, for the benchmark.

Loads the teacher and student that kd init wrote (in f32), puts a PEFT LoRA on the student (rank r,
alpha 2r, dropout 0.05, all seven projections, as the kd run), optionally turns on the student's
activation checkpointing (transformers' gradient_checkpointing_enable, as kd's
train.activation_checkpointing), and times optimizer steps on the same token rows: teacher logits
under no_grad, student logits, KL at temperature T and CE over the scored positions, backward,
clip_grad_norm_, AdamW. The first step is a warm-up and is not timed. Prints one JSON line: the
median step time, each timed step, the process's peak RSS, the peak RSS after loading (the peak is
read and then reset once both models are loaded, when /proc/self/clear_refs allows it: the reset
clears getrusage's ru_maxrss too, so the process's peak is the larger of the two readings) and the
pages the system swapped out while the process ran.

    python3 Scripts/bench_train_torch.py --teacher DIR --student DIR --tokens FILE --threads N --steps K \
        [--batch-size B] [--r R] [--checkpointing]
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM


def swapped_out_pages():
    """Pages the whole system has swapped out since boot (/proc/vmstat pswpout)."""
    for line in open("/proc/vmstat"):
        name, value = line.split()
        if name == "pswpout":
            return int(value)
    return 0


def resident_peak_mib():
    """This process's peak resident set since it started or since the last reset (VmHWM)."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024)
    raise RuntimeError("no VmHWM in /proc/self/status")


def reset_resident_peak():
    """Sets VmHWM (and ru_maxrss) back to the current resident set (Linux 4.0+); False when not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def main():
    swapped_at_start = swapped_out_pages()
    parser = argparse.ArgumentParser()
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--student", required=True)
    parser.add_argument("--tokens", required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--r", type=int, default=16)
    parser.add_argument("--alpha", type=float, default=0.8)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--checkpointing", action="store_true",
                        help="recompute each student layer in the backward (gradient_checkpointing_enable)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    teacher = AutoModelForCausalLM.from_pretrained(args.teacher, dtype=torch.float32).eval()
    student = AutoModelForCausalLM.from_pretrained(args.student, dtype=torch.float32)
    if args.checkpointing:
        # In transformers 5: every decoder layer, use_reentrant=False (so the adapters inside get
        # their gradients although the base is frozen; the assert after the first backward checks it).
        student.gradient_checkpointing_enable()
    lora = LoraConfig(r=args.r, lora_alpha=2 * args.r, lora_dropout=0.05, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(student, lora)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)

    rows = [json.loads(line) for line in open(args.tokens)][: args.batch_size]
    ids = torch.tensor([r["input_ids"] for r in rows])
    labels = torch.tensor([r.get("labels", r["input_ids"]) for r in rows])
    mask = torch.ones_like(ids)
    tokens = int(mask.sum())
    loading_peak = resident_peak_mib()
    peak_reset = reset_resident_peak()

    times = []
    for step in range(args.steps + 1):
        start = time.perf_counter()
        with torch.no_grad():
            teacher_logits = teacher(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1]
        student_logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1]
        target = labels[:, 1:]
        scored = target != -100
        n = scored.sum()
        t, s = teacher_logits[scored], student_logits[scored]
        kl = (F.softmax(t / args.temperature, -1)
              * (F.log_softmax(t / args.temperature, -1) - F.log_softmax(s / args.temperature, -1))).sum() / n
        ce = F.cross_entropy(s, target[scored], reduction="sum") / n
        loss = args.alpha * args.temperature ** 2 * kl + (1 - args.alpha) * ce
        loss.backward()
        if step == 0:  # with checkpointing wrongly set up, the layers' adapters would get no gradient
            assert all(p.grad is not None for p in params), "a LoRA parameter got no gradient"
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step > 0:  # the first step warms up allocators and kernels
            times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    print(json.dumps({"impl": "torch", "threads": args.threads, "tokens": tokens, "step_s_median": round(seconds, 4),
                      "tokens_per_s": round(tokens / seconds, 1), "step_s": [round(t, 3) for t in times],
                      "checkpointing": args.checkpointing, "lora_r": args.r,
                      "peak_rss_mib": max(loading_peak, resident_peak_mib()),
                      "peak_rss_after_load_mib": resident_peak_mib() if peak_reset else None,
                      "swapped_out_pages": swapped_out_pages() - swapped_at_start}))


if __name__ == "__main__":
    main()
