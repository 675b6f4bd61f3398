#!/usr/bin/env python3
"""Measures how far kd's and torch-f32's training gradients are from a float64 run.

The train parity test (Tests/KDCommandTests/TrainParityTests.swift) compares kd against the float32
torch + PEFT reference of make_train_fixtures.py, each step from identical state: step 1 from the
fixture's initial adapter, step 2 resumed from the reference's own state after step 1
(torch-step-1/). This script reruns each committed fixture under Tests/Fixtures/train in float64
from the same states (the float32 step-1 state widened exactly) and prints the worst error of
torch-f32 (expected.safetensors) and of kd (`kd train --save-gradients`, run as the test runs it)
against float64, and of kd against torch-f32 (what the test checks), in units of the test's
tolerance 1e-6 + 1e-4·m (m: the magnitude of a gradient element's terms, stored in
expected.safetensors), and, for comparison, of the elementwise 1e-6 + 1e-4·|g|.

Run on an AVX2 host (OpenBLAS Haswell kernels; torch 2.13 CPU) it printed
    dense-teacher step 1: ... 1e-4·m: torch-f32 0.03, kd 0.02, kd-torch 0.01 | 1e-4·|g|: torch-f32 1.97, kd 1.38, kd-torch 0.59
    dense-teacher step 2: ... 1e-4·m: torch-f32 0.03, kd 0.04, kd-torch 0.04 | 1e-4·|g|: torch-f32 1.81, kd 1.86, kd-torch 2.36
    moe-teacher step 1:   ... 1e-4·m: torch-f32 0.01, kd 0.02, kd-torch 0.02 | 1e-4·|g|: torch-f32 0.17, kd 0.16, kd-torch 0.34
    moe-teacher step 2:   ... 1e-4·m: torch-f32 0.04, kd 0.01, kd-torch 0.04 | 1e-4·|g|: torch-f32 0.53, kd 0.26, kd-torch 0.34
so relative to |g| even torch-f32 misses float64 by up to 2x on small elements of large sums, while
relative to the magnitude of their terms both f32 implementations are within 4% of the tolerance.

    pip install torch transformers peft safetensors
    swift build -c release && python3 Scripts/check_train_precision.py
"""
import importlib.util
import json
import os
import shutil
import subprocess
import tempfile

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
spec = importlib.util.spec_from_file_location("fixtures", os.path.join(HERE, "make_train_fixtures.py"))
fixtures = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fixtures)


def kd_train(directory, output, *extra):
    subprocess.run([os.path.join(ROOT, ".build/release/kd"), "train", "--config", f"{directory}/run.yaml",
                    "--save-gradients", "--json", "--set", f"run.output_dir={output}",
                    "--set", f"teacher.path={directory}/teacher", "--set", f"student.path={directory}/student",
                    "--set", f"lora.init_from={directory}/adapter-init", "--set", f"data.train={directory}/tokens.jsonl",
                    *extra], check=True, capture_output=True)


def kd_gradients(directory, scratch):
    """kd's step-1 gradients from the initial adapter and step-2 gradients from torch's step-1 state."""
    kd_train(directory, f"{scratch}/first", "--set", "train.max_steps=1")
    state = f"{scratch}/torch-step-1"
    shutil.copytree(f"{directory}/torch-step-1", state)
    shutil.copy(f"{scratch}/first/checkpoint-1/trainer_state.json", state)
    kd_train(directory, f"{scratch}/second", "--resume", state)
    return [load_file(f"{scratch}/first/gradients/step-1.safetensors"),
            load_file(f"{scratch}/second/gradients/step-2.safetensors")]


def check(fixture):
    directory = os.path.join(ROOT, "Tests/Fixtures/train", fixture["name"])
    # The grouped expert matmul has no float64 kernel; the eager loop does.
    extra = {"experts_implementation": "eager"} if fixture["teacher"][0] == "qwen3_moe" else {}
    teacher = AutoModelForCausalLM.from_pretrained(f"{directory}/teacher", attn_implementation="eager",
                                                   dtype=torch.float64, **extra).eval()
    student = AutoModelForCausalLM.from_pretrained(f"{directory}/student", attn_implementation="eager", dtype=torch.float64)
    model = PeftModel.from_pretrained(student, f"{directory}/adapter-init", is_trainable=True).double()
    model.train()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    torch_state = load_file(f"{directory}/torch-step-1/adapter_model.safetensors")
    rows = [json.loads(line) for line in open(f"{directory}/tokens.jsonl")]
    expected = load_file(f"{directory}/expected.safetensors")
    with tempfile.TemporaryDirectory() as scratch:
        kd = kd_gradients(directory, scratch)
    micro = fixture["batch_size"]
    for step, step_rows in enumerate([rows[0:2], rows[2:4]], start=1):
        if step == 2:  # from the reference's f32 state after step 1, exactly
            with torch.no_grad():
                for name, p in params:
                    p.copy_(torch_state[fixtures.kd_key(name)].double())
        for _, p in params:
            p.grad = None
        batches = [fixtures.pad(step_rows[i:i + micro]) for i in range(0, len(step_rows), micro)]
        n = sum(int((labels[:, 1:] != -100).sum()) for _, labels, _ in batches)
        for ids, labels, mask in batches:
            with torch.no_grad():
                teacher_logits = teacher(input_ids=ids, attention_mask=mask).logits
            student_logits = model(input_ids=ids, attention_mask=mask).logits
            loss, _, _ = fixtures.kd_loss(teacher_logits, student_logits, labels, n, fixtures.SETTINGS["alpha"],
                                          fixtures.SETTINGS["temperature"])
            loss.backward()
        worst = {}
        for name, p in params:
            exact, key = p.grad.detach(), fixtures.kd_key(name)
            reference, mine = expected[f"step{step}.grad.{key}"].double(), kd[step - 1][key].double()
            for unit, size in [("m", expected[f"step{step}.magnitude.{key}"].double()), ("|g|", exact.abs())]:
                tolerance = 1e-6 + 1e-4 * size
                for who, error in [("torch-f32", reference - exact), ("kd", mine - exact), ("kd-torch", mine - reference)]:
                    worst[unit, who] = max(worst.get((unit, who), 0.0), (error.abs() / tolerance).max().item())
        print(f"{fixture['name']} step {step}: worst error / tolerance (vs float64; kd-torch: kd vs torch-f32): " + " | ".join(
            f"1e-4·{unit}: " + ", ".join(f"{who} {worst[unit, who]:.2f}" for who in ("torch-f32", "kd", "kd-torch"))
            for unit in ("m", "|g|")))


if __name__ == "__main__":
    for fixture in fixtures.FIXTURES:
        check(fixture)
