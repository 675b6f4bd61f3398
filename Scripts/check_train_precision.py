#!/usr/bin/env python3
"""Measures how far kd's and torch-f32's training gradients are from a float64 run.

The train parity test compares kd against a float32 torch + PEFT reference, and at step 2 (after
an AdamW step) at twice the tolerance, because two f32 implementations then differ by the sum of
their errors. This script backs that up: it reruns each committed fixture under
Tests/Fixtures/train in float64 and prints the worst error of torch-f32 (expected.safetensors)
and of kd (`kd train --save-gradients`), in units of the tolerance 1e-6 + 1e-4|g|.

    pip install torch transformers peft safetensors
    swift build -c release && python3 Scripts/check_train_precision.py
"""
import importlib.util
import json
import os
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


def kd_gradients(directory, output):
    subprocess.run([os.path.join(ROOT, ".build/release/kd"), "train", "--config", f"{directory}/run.yaml",
                    "--save-gradients", "--json", "--set", f"run.output_dir={output}",
                    "--set", f"teacher.path={directory}/teacher", "--set", f"student.path={directory}/student",
                    "--set", f"lora.init_from={directory}/adapter-init", "--set", f"data.train={directory}/tokens.jsonl"],
                   check=True, capture_output=True)
    return [load_file(f"{output}/gradients/step-{step}.safetensors") for step in (1, 2)]


def check(fixture):
    directory = os.path.join(ROOT, "Tests/Fixtures/train", fixture["name"])
    settings = fixtures.SETTINGS
    # The grouped expert matmul has no float64 kernel; the eager loop does.
    extra = {"experts_implementation": "eager"} if fixture["teacher"][0] == "qwen3_moe" else {}
    teacher = AutoModelForCausalLM.from_pretrained(f"{directory}/teacher", attn_implementation="eager",
                                                   dtype=torch.float64, **extra).eval()
    student = AutoModelForCausalLM.from_pretrained(f"{directory}/student", attn_implementation="eager", dtype=torch.float64)
    model = PeftModel.from_pretrained(student, f"{directory}/adapter-init", is_trainable=True).double()
    model.train()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([p for _, p in params], lr=settings["lr"], betas=settings["betas"], eps=settings["eps"],
                                  weight_decay=settings["weight_decay"])
    rows = [json.loads(line) for line in open(f"{directory}/tokens.jsonl")]
    expected = load_file(f"{directory}/expected.safetensors")
    with tempfile.TemporaryDirectory() as scratch:
        kd = kd_gradients(directory, f"{scratch}/run")
    micro = fixture["batch_size"]
    for step, step_rows in enumerate([rows[0:2], rows[2:4]], start=1):
        batches = [fixtures.pad(step_rows[i:i + micro]) for i in range(0, len(step_rows), micro)]
        n = sum(int((labels[:, 1:] != -100).sum()) for _, labels, _ in batches)
        for ids, labels, mask in batches:
            with torch.no_grad():
                teacher_logits = teacher(input_ids=ids, attention_mask=mask).logits
            student_logits = model(input_ids=ids, attention_mask=mask).logits
            loss, _, _ = fixtures.kd_loss(teacher_logits, student_logits, labels, n, settings["alpha"],
                                          settings["temperature"])
            loss.backward()
        worst_torch = worst_kd = 0.0
        for name, p in params:
            exact, key = p.grad.detach(), fixtures.kd_key(name)
            tolerance = 1e-6 + 1e-4 * exact.abs()
            worst_torch = max(worst_torch, ((expected[f"step{step}.grad.{key}"].double() - exact).abs() / tolerance).max().item())
            worst_kd = max(worst_kd, ((kd[step - 1][key].double() - exact).abs() / tolerance).max().item())
        print(f"{fixture['name']} step {step}: worst error vs float64 / tolerance: torch-f32 {worst_torch:.2f}, kd {worst_kd:.2f}")
        torch.nn.utils.clip_grad_norm_([p for _, p in params], settings["max_grad_norm"])
        optimizer.step()
        optimizer.zero_grad()


if __name__ == "__main__":
    for fixture in fixtures.FIXTURES:
        check(fixture)
