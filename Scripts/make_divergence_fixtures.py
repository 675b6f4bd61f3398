#!/usr/bin/env python3
"""Makes Tests/Fixtures/divergence/expected.safetensors: the distillation loss of every
`distill.loss` and its gradient w.r.t. the student logits, by torch autograd in float64.

For random teacher and student logits (ROWS positions, VOCAB tokens; the values are f32 numbers,
so kd's f32 kernel reads exactly the same inputs) and labels with -100 (unscored) positions:
    p = softmax(teacher/T), q = softmax(student/T), N = scored positions
    forward_kl: D = KL(p||q)   reverse_kl: D = KL(q||p)
    jsd(beta):  D = beta*KL(p||m) + (1-beta)*KL(q||m), m = beta*p + (1-beta)*q
    loss = alpha*T^2*mean(D) + (1-alpha)*mean(CE)   over the N scored positions
written plainly from these definitions (no shortcut of kd's kernel), then loss.backward().

Tensors: teacher, student (F32 [ROWS, VOCAB]), labels (I64 [ROWS]); per case
"<loss>[_<beta>].T<T>": .loss, .divergence (mean D), .kl (mean forward KL), .ce (mean CE)
(F64 [1]) and .gradient (F64 [ROWS, VOCAB], zero on unscored rows).

When trl is installed (pip install trl), jsd's mean D is checked against TRL's
GKDTrainer.generalized_jsd_loss (whose beta is this beta: mixture beta*p + (1-beta)*q, weights
beta on KL(p||m)); the script fails if they differ by more than 1e-12.

    python3 Scripts/make_divergence_fixtures.py
"""
import os
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import torch
from safetensors.torch import save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "Fixtures", "divergence")
ROWS, VOCAB, ALPHA = 7, 50, 0.8
TEMPERATURES = [1.0, 2.0]
BETAS = [0.1, 0.5, 0.9]


def kl(log_a, log_b):
    """Sum over the last axis of a*(log a - log b), with 0*log 0 = 0."""
    a = log_a.exp()
    return torch.where(a > 0, a * (log_a - log_b), torch.zeros_like(a)).sum(-1)


def divergence(name, beta, log_p, log_q):
    if name == "forward_kl":
        return kl(log_p, log_q)
    if name == "reverse_kl":
        return kl(log_q, log_p)
    m = beta * log_p.exp() + (1 - beta) * log_q.exp()
    log_m = m.log()
    return beta * kl(log_p, log_m) + (1 - beta) * kl(log_q, log_m)


def case(teacher, student, labels, name, beta, temperature):
    s = student.clone().requires_grad_(True)
    scored = labels != -100
    n = scored.sum()
    log_p = torch.log_softmax(teacher / temperature, dim=-1)
    log_q = torch.log_softmax(s / temperature, dim=-1)
    d = divergence(name, beta, log_p, log_q)[scored].sum() / n
    forward = kl(log_p, log_q)[scored].sum() / n
    ce = torch.nn.functional.cross_entropy(s[scored], labels[scored], reduction="sum") / n
    loss = ALPHA * temperature**2 * d + (1 - ALPHA) * ce
    loss.backward()
    return dict(loss=loss.detach(), divergence=d.detach(), kl=forward.detach(), ce=ce.detach(), gradient=s.grad)


def check_trl(teacher, student, labels, beta, temperature, mean_d):
    try:
        from trl.experimental.gkd.gkd_trainer import GKDTrainer
    except ImportError:
        try:
            from trl import GKDTrainer
        except ImportError:
            print("trl is not installed: jsd not cross-checked against GKDTrainer.generalized_jsd_loss")
            return
    theirs = GKDTrainer.generalized_jsd_loss(student[None], teacher[None], labels=labels[None], beta=beta,
                                             temperature=temperature, reduction="batchmean")
    difference = abs(theirs.item() - mean_d.item())
    assert difference <= 1e-12, f"jsd beta={beta} T={temperature}: TRL {theirs.item()} vs {mean_d.item()}"
    print(f"jsd beta={beta} T={temperature}: TRL generalized_jsd_loss agrees ({difference:.1e})")


def inputs():
    """The random teacher and student logits (f32 values, held in float64 for the reference) and
    the labels, two of them -100 (also read by make_cached_divergence_fixtures.py)."""
    generator = torch.Generator().manual_seed(7)
    teacher = (torch.randn(ROWS, VOCAB, generator=generator) * 3).float().double()
    student = (torch.randn(ROWS, VOCAB, generator=generator) * 3).float().double()
    labels = torch.randint(0, VOCAB, (ROWS,), generator=generator)
    labels[1] = -100
    labels[4] = -100
    labels[6] = VOCAB - 1
    return teacher, student, labels


def main():
    teacher, student, labels = inputs()
    tensors = {"teacher": teacher.float(), "student": student.float(), "labels": labels.to(torch.int64)}
    for temperature in TEMPERATURES:
        for name, beta in [("forward_kl", None), ("reverse_kl", None)] + [("jsd", b) for b in BETAS]:
            key = f"{name}{'' if beta is None else f'_{beta}'}.T{temperature:g}"
            values = case(teacher, student, labels, name, beta, temperature)
            for field, value in values.items():
                tensors[f"{key}.{field}"] = value.reshape(-1 if field != "gradient" else value.shape).to(torch.float64).contiguous()
            if name == "jsd":
                check_trl(teacher, student, labels, beta, temperature, values["divergence"])
    os.makedirs(ROOT, exist_ok=True)
    save_file(tensors, os.path.join(ROOT, "expected.safetensors"))
    print(f"wrote {len(tensors)} tensors to {os.path.relpath(ROOT)}/expected.safetensors")


if __name__ == "__main__":
    main()
