#!/usr/bin/env python3
"""Makes the distillation-training parity fixtures under Tests/Fixtures/train with torch + PEFT.

Each fixture holds a small random teacher (dense Qwen3 or Qwen3-MoE) and a small dense student
(F32 files, every weight exactly representable in bf16), a PEFT LoRA adapter on all seven
projections with non-zero B (adapter-init/), tokens.jsonl (rows of input_ids with -100 prompt
labels, of different lengths so batches are right-padded), run.yaml (the kd settings; the test
supplies paths), expected.safetensors: for steps 1 and 2 the loss, kl_loss, ce_loss, grad_norm,
every LoRA gradient before clipping and its magnitude (see Magnitudes), and every LoRA tensor
after the two AdamW steps; and torch-step-1/, the reference's state after step 1 in kd's checkpoint layout: adapter_model.safetensors and adapter_config.json as PEFT saves them, and
optimizer.safetensors with AdamW's exp_avg and exp_avg_sq per LoRA matrix (named as kd names its
optimizer slots; metadata step = 1). kd's trainer_state.json (step, data cursor, config hash) is
not written here: the parity test takes it from kd's own step-1 checkpoint of the same run and
resumes from this state, so step 2 is compared from identical parameters and moments.

dense-teacher/ also holds divergences.safetensors: step 1 alone (rows [0, 1], one batch of 2, from
adapter-init/ loaded afresh) under every distill.loss kd offers, at T = 1 and T = 2, with jsd at
beta 0.1, 0.5 and 0.9 (a = 0.8 throughout). Per case `<loss>-T<t>` or `jsd-b<beta>-T<t>` (as
forward_kl-T1, jsd-b0.5-T2): `<case>.metrics` float64 [loss, divergence, kl_loss, ce_loss,
grad_norm (before clipping)], `<case>.grad.<kd name>` every LoRA gradient before clipping and
`<case>.magnitude.<kd name>` its magnitude (see Magnitudes). It is computed after everything else
of the fixture, with the global random state restored afterwards and no draws of its own, so the
other files do not depend on it.

dense-teacher/ also holds on-policy.safetensors: step 1 alone (rows [0, 1], from adapter-init/ loaded
afresh) with every micro-batch on-policy (kd's distill.on_policy at fraction 1), see make_on_policy.
Like divergences.safetensors it is made after everything else of the fixture with the global random
state restored. `--only-on-policy` rewrites that file alone from the fixture already on disk
(teacher/, student/, adapter-init/, tokens.jsonl), for machines on which the rest does not
regenerate byte for byte.

The reference is the KD step written plainly in torch: teacher logits under no_grad, the
student's logits through PEFT, both shifted by one, KL(p_teacher/T || q_student/T) and CE over
the N scored positions of the step, loss = a*T^2*KL + (1-a)*CE, clip_grad_norm_, AdamW. For
divergences.safetensors KL is replaced by the divergence D of the case (see divergence), autograd
giving its gradient; kl_loss stays KL(p || q).

    pip install torch transformers peft safetensors
    python3 Scripts/make_train_fixtures.py [--only-on-policy]
"""
import json
import math
import os
import shutil
import sys

import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import save_file
from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "Fixtures", "train")
VOCAB = 96
COMMON = dict(hidden_act="silu", attention_bias=False, max_position_embeddings=128, attn_implementation="eager",
              vocab_size=VOCAB, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

FIXTURES = [
    dict(name="dense-teacher", batch_size=2, grad_accum_steps=1, student_tied=True,
         teacher=("qwen3", dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, head_dim=12, tie_word_embeddings=False, rms_norm_eps=1e-6))),
    dict(name="moe-teacher", batch_size=1, grad_accum_steps=2, student_tied=False,
         teacher=("qwen3_moe", dict(hidden_size=48, intermediate_size=96, moe_intermediate_size=24, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, head_dim=12, num_experts=8,
                                    num_experts_per_tok=2, norm_topk_prob=True, tie_word_embeddings=False,
                                    rms_norm_eps=1e-6))),
]

SETTINGS = dict(alpha=0.8, temperature=2.0, lr=1e-2, weight_decay=0.01, betas=(0.9, 0.999), eps=1e-8, max_grad_norm=0.5,
                r=4, lora_alpha=8)

# Four rows: a prompt of -100 labels, then scored tokens. Steps take rows [0, 1] and [2, 3].
LENGTHS = [(3, 11), (2, 7), (4, 9), (1, 12)]


def round_to_bf16(param):
    """Rounds an f32 base-model parameter in place to the nearest bf16 value, kept as f32.

    kd can hold frozen base weights in bf16 (student.dtype: bf16, --dtype bf16). With every
    teacher and student weight exactly representable in bf16, narrowing f32 -> bf16 is exact, so
    the same fixture and the same torch reference check kd with f32- and with bf16-held weights.
    The rounding happens right after randomisation, before anything is computed from the weights.
    The LoRA adapter (adapter-init/, torch-step-1/) is trained in f32 and is not rounded."""
    param.copy_(param.to(torch.bfloat16).to(torch.float32))


def randomise(model, generator, scale):
    """Replaces every base-model weight with random values, each exactly representable in bf16."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1 + 0.2 * torch.randn(param.shape, generator=generator))
            elif "embed_tokens" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * (scale / param.shape[-1] ** 0.5))
            round_to_bf16(param)


def divergence(kind, log_p, log_q, beta):
    """D per position, from the log-probabilities of teacher (p) and student (q) at the temperature:
    forward_kl KL(p || q), reverse_kl KL(q || p), jsd beta*KL(p || m) + (1-beta)*KL(q || m) with
    m = beta*p + (1-beta)*q, log m = logsumexp(log beta + log p, log(1-beta) + log q)."""
    p, q = log_p.exp(), log_q.exp()
    if kind == "forward_kl":
        return (p * (log_p - log_q)).sum(-1)
    if kind == "reverse_kl":
        return (q * (log_q - log_p)).sum(-1)
    assert kind == "jsd" and 0 < beta < 1
    log_m = torch.logsumexp(torch.stack([log_p + math.log(beta), log_q + math.log(1 - beta)]), dim=0)
    return beta * (p * (log_p - log_m)).sum(-1) + (1 - beta) * (q * (log_q - log_m)).sum(-1)


def divergence_loss(teacher_logits, student_logits, labels, n, alpha, temperature, kind, beta):
    """As kd_loss with D in place of KL: sums over the scored positions of one micro-batch, divided by
    the step's N; returns loss, divergence, kl (forward, whatever D is) and ce."""
    t = teacher_logits[:, :-1]
    s = student_logits[:, :-1]
    target = labels[:, 1:]
    mask = target != -100
    log_p = F.log_softmax(t[mask] / temperature, dim=-1)
    log_q = F.log_softmax(s[mask] / temperature, dim=-1)
    d = divergence(kind, log_p, log_q, beta).sum() / n
    kl = divergence("forward_kl", log_p, log_q, beta).sum() / n
    ce = F.cross_entropy(s[mask], target[mask], reduction="sum") / n
    return alpha * temperature ** 2 * d + (1 - alpha) * ce, d, kl, ce


def kd_loss(teacher_logits, student_logits, labels, n, alpha, temperature):
    """The seed's loss (forward KL): loss, kl and ce of divergence_loss."""
    loss, _, kl, ce = divergence_loss(teacher_logits, student_logits, labels, n, alpha, temperature, "forward_kl", None)
    return loss, kl, ce


# (distill.loss, T, jsd beta or None) of divergences.safetensors.
DIVERGENCE_CASES = ([(kind, t, None) for kind in ["forward_kl", "reverse_kl"] for t in [1, 2]]
                    + [("jsd", t, beta) for beta in [0.1, 0.5, 0.9] for t in [1, 2]])


def divergence_case_key(kind, temperature, beta):
    return f"{kind}-T{temperature}" if beta is None else f"{kind}-b{beta}-T{temperature}"


def make_divergences(out, teacher, rows, micro):
    """divergences.safetensors: step 1 under every case of DIVERGENCE_CASES, each from adapter-init/
    loaded afresh. No random draws (PEFT's LoRA initialisation, overwritten by the loaded adapter,
    draws from the global generator, which is restored afterwards)."""
    rng = torch.get_rng_state()
    expected = {}
    step_rows = rows[0:2]
    batches = [pad(step_rows[i:i + micro]) for i in range(0, len(step_rows), micro)]
    n = sum(int((labels[:, 1:] != -100).sum()) for _, labels, _ in batches)
    with torch.no_grad():
        teacher_logits = [teacher(input_ids=ids, attention_mask=mask).logits for ids, _, mask in batches]
    for kind, temperature, beta in DIVERGENCE_CASES:
        case = divergence_case_key(kind, temperature, beta)
        model = PeftModel.from_pretrained(
            Qwen3ForCausalLM.from_pretrained(os.path.join(out, "student"), attn_implementation="eager"),
            os.path.join(out, "adapter-init"), is_trainable=True)
        model.train()
        params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        magnitudes = Magnitudes(model)
        totals = [0.0, 0.0, 0.0, 0.0]
        for (ids, labels, mask), t_logits in zip(batches, teacher_logits):
            student_logits = model(input_ids=ids, attention_mask=mask).logits
            terms = divergence_loss(t_logits, student_logits, labels, n, SETTINGS["alpha"], float(temperature), kind, beta)
            terms[0].backward()
            totals = [total + term.item() for total, term in zip(totals, terms)]
        for name, p in params:
            expected[f"{case}.grad.{kd_key(name)}"] = p.grad.detach().clone()
        for key, magnitude in magnitudes.of(params).items():
            expected[f"{case}.magnitude.{key}"] = magnitude
        grad_norm = torch.nn.utils.clip_grad_norm_([p for _, p in params], SETTINGS["max_grad_norm"]).item()
        loss, d, kl, ce = totals
        expected[f"{case}.metrics"] = torch.tensor([loss, d, kl, ce, grad_norm], dtype=torch.float64)
        print(f"divergence {case}: loss {loss:.6f} divergence {d:.6f} kl {kl:.6f} ce {ce:.6f} "
              f"grad_norm {grad_norm:.6f} N {n}")
    save_file({k: v.contiguous() for k, v in expected.items()}, os.path.join(out, "divergences.safetensors"))
    torch.set_rng_state(rng)


# on-policy.safetensors: the continuation length and the one case (distill.loss jsd, beta 0.5, T = 2).
ON_POLICY = dict(max_new_tokens=6, kind="jsd", beta=0.5, temperature=2.0)


def eos_ids(student_dir):
    """The student's stop ids: eos_token_id of config.json and generation_config.json (null, an id or a list)."""
    ids = set()
    for file in ["config.json", "generation_config.json"]:
        path = os.path.join(student_dir, file)
        if os.path.exists(path):
            with open(path) as f:
                eos = json.load(f).get("eos_token_id")
            ids.update([] if eos is None else [eos] if isinstance(eos, int) else eos)
    return ids


def greedy(model, prompt, max_new_tokens, stop):
    """The prompt's greedy continuation by `model` (in eval mode): each new token the first index of the
    largest logit at the last position of a full forward of the un-padded row so far (no cache), at most
    max_new_tokens, ending after a stop id (which is kept). Returns the new ids and, per token, the gap
    between the largest logit and the next (how far a kd logit may be off before its argmax changes)."""
    ids, gaps = list(prompt), []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long)).logits[0, -1]
            best = int((logits == logits.max()).nonzero()[0])
            top2 = logits.topk(2).values
            gaps.append((top2[0] - top2[1]).item())
            ids.append(best)
            if best in stop:
                break
    return ids[len(prompt):], gaps


def make_on_policy(out, teacher, rows, micro):
    """on-policy.safetensors: step 1 (rows [0, 1]) with every micro-batch on-policy, from adapter-init/
    loaded afresh. Each row's prompt (its tokens before the first scored label) is continued greedily by
    the student with the adapter (eval mode); the new rows are prompt + continuation with -100 labels
    over the prompt, padded as pad does. The loss is a*T^2*D over the continuation's positions (jsd,
    beta 0.5, T = 2), divided by their count N, with no cross-entropy term; kl_loss is the forward KL
    (reported only), ce_loss 0. Keys as a case of divergences.safetensors under on-policy-jsd-b0.5-T2,
    plus on-policy.sequences (the padded ids) and on-policy.scored ([N]). No random draws of its own
    (PEFT's LoRA initialisation, overwritten by the loaded adapter, draws from the global generator,
    which is restored afterwards)."""
    rng = torch.get_rng_state()
    kind, beta, temperature = ON_POLICY["kind"], ON_POLICY["beta"], ON_POLICY["temperature"]
    case = "on-policy-" + divergence_case_key(kind, int(temperature), beta)
    model = PeftModel.from_pretrained(
        Qwen3ForCausalLM.from_pretrained(os.path.join(out, "student"), attn_implementation="eager"),
        os.path.join(out, "adapter-init"), is_trainable=True)
    model.eval()
    stop = eos_ids(os.path.join(out, "student"))
    sampled = []
    for index, row in enumerate(rows[0:2]):
        first = next(i for i, label in enumerate(row["labels"]) if label != -100)
        assert first >= 1, "a prompt needs at least one token"
        prompt = row["input_ids"][:first]
        generated, gaps = greedy(model, prompt, ON_POLICY["max_new_tokens"], stop)
        assert all(0 <= t < VOCAB for t in generated)
        print(f"on-policy row {index}: prompt {prompt} -> {generated} (top-2 logit gaps "
              f"{', '.join(f'{g:.4f}' for g in gaps)})")
        sampled.append({"input_ids": prompt + generated, "labels": [-100] * len(prompt) + generated})

    model.train()
    params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    magnitudes = Magnitudes(model)  # after sampling, so only the training forwards are recorded
    batches = [pad(sampled[i:i + micro]) for i in range(0, len(sampled), micro)]
    n = sum(int((labels[:, 1:] != -100).sum()) for _, labels, _ in batches)
    totals = [0.0, 0.0, 0.0]
    for ids, labels, mask in batches:
        with torch.no_grad():
            teacher_logits = teacher(input_ids=ids, attention_mask=mask).logits
        student_logits = model(input_ids=ids, attention_mask=mask).logits
        scored = labels[:, 1:] != -100
        log_p = F.log_softmax(teacher_logits[:, :-1][scored] / temperature, dim=-1)
        log_q = F.log_softmax(student_logits[:, :-1][scored] / temperature, dim=-1)
        d = divergence(kind, log_p, log_q, beta).sum() / n
        kl = divergence("forward_kl", log_p, log_q, beta).sum() / n
        loss = SETTINGS["alpha"] * temperature ** 2 * d
        loss.backward()
        totals = [total + term.item() for total, term in zip(totals, [loss, d, kl])]
    expected = {}
    for name, p in params:
        expected[f"{case}.grad.{kd_key(name)}"] = p.grad.detach().clone()
    for key, magnitude in magnitudes.of(params).items():
        expected[f"{case}.magnitude.{key}"] = magnitude
    grad_norm = torch.nn.utils.clip_grad_norm_([p for _, p in params], SETTINGS["max_grad_norm"]).item()
    loss, d, kl = totals
    expected[f"{case}.metrics"] = torch.tensor([loss, d, kl, 0.0, grad_norm], dtype=torch.float64)
    sequences = pad(sampled)[0]
    expected["on-policy.sequences"] = sequences
    expected["on-policy.scored"] = torch.tensor([n], dtype=torch.long)
    print(f"{case}: loss {loss:.6f} divergence {d:.6f} kl {kl:.6f} ce 0 grad_norm {grad_norm:.6f} N {n}")
    save_file({k: v.contiguous() for k, v in expected.items()}, os.path.join(out, "on-policy.safetensors"))
    torch.set_rng_state(rng)


def pad(rows):
    length = max(len(r["input_ids"]) for r in rows)
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    labels = torch.full((len(rows), length), -100, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n] = torch.tensor(r["input_ids"])
        labels[i, :n] = torch.tensor(r["labels"])
        mask[i, :n] = 1
    return ids, labels, mask


def kd_key(name):
    return name.replace(".default", "")


def kd_slot(name):
    """kd's optimizer slot of a PEFT parameter: base_model.model.<linear>.lora_A.default.weight -> <linear>.lora_A."""
    return kd_key(name).removeprefix("base_model.model.").removesuffix(".weight")


class Magnitudes:
    """The magnitude of every LoRA gradient element: the sum of the absolute values of the terms whose
    sum it is. With s the scaling, X the adapter's inputs [tokens, in] and G = s·dY the gradient
    reaching lora_B's output [tokens, out], grad A = (Bᵀ Gᵀ) X and grad B = Gᵀ (X Aᵀ), so the
    magnitudes are (|B|ᵀ |G|ᵀ) |X| and |G|ᵀ (|X| |A|ᵀ), summed over the step's micro-batches. A sum
    of non-negative terms has no cancellation, so f32 gives it to a relative n·2⁻²⁴."""

    def __init__(self, model):
        self.inputs, self.output_gradients = {}, {}
        for name, module in model.named_modules():
            if name.endswith(".lora_A.default"):
                module.register_forward_hook(
                    lambda _, args, __, key=name.removesuffix(".lora_A.default"):
                    self.inputs.setdefault(key, []).append(args[0].detach().reshape(-1, args[0].shape[-1])))
            elif name.endswith(".lora_B.default"):
                module.register_full_backward_hook(
                    lambda _, __, grads, key=name.removesuffix(".lora_B.default"):
                    self.output_gradients.setdefault(key, []).append(grads[0].detach().reshape(-1, grads[0].shape[-1])))

    def clear(self):
        self.inputs.clear()
        self.output_gradients.clear()

    def of(self, params):
        """The magnitudes of the step's gradients by PEFT key, checking that the signed sums are the gradients."""
        weights = dict(params)
        result = {}
        for name, p in params:
            key = name.split(".lora_")[0]
            a, b = weights[key + ".lora_A.default.weight"].detach(), weights[key + ".lora_B.default.weight"].detach()
            x, g = torch.cat(self.inputs[key]), torch.cat(self.output_gradients[key])
            if ".lora_A." in name:
                signed, magnitude = (b.T @ g.T) @ x, (b.abs().T @ g.abs().T) @ x.abs()
            else:
                signed, magnitude = g.T @ (x @ a.T), g.abs().T @ (x.abs() @ a.abs().T)
            assert ((signed - p.grad).abs() <= 1e-4 * magnitude + 1e-12).all(), f"{name}: the terms do not sum to the gradient"
            result[kd_key(name)] = magnitude.contiguous()
        return result


def settled(config_path):
    """Makes a PEFT adapter_config.json reproducible: target_modules sorted (PEFT writes them in a
    set's order, which changes from run to run) and without the generating machine's student path
    (as adapter-init/, whose student was not loaded from a path, has none)."""
    with open(config_path) as f:
        config = json.load(f)
    config["base_model_name_or_path"] = None
    config["target_modules"] = sorted(config["target_modules"])
    with open(config_path, "w") as f:
        f.write(json.dumps(config, indent=2, sort_keys=True))


def save_state(peft_model, optimizer, params, step, directory):
    """The reference's adapter and AdamW moments after `step` steps, in kd's checkpoint layout."""
    peft_model.save_pretrained(directory)
    os.remove(os.path.join(directory, "README.md"))  # PEFT's model card; kd does not read it
    settled(os.path.join(directory, "adapter_config.json"))
    moments = {}
    for name, p in params:
        state = optimizer.state[p]
        assert int(state["step"]) == step
        moments[kd_slot(name) + ".exp_avg"] = state["exp_avg"].detach().clone().contiguous()
        moments[kd_slot(name) + ".exp_avg_sq"] = state["exp_avg_sq"].detach().clone().contiguous()
    save_file(moments, os.path.join(directory, "optimizer.safetensors"), metadata={"step": str(step)})


def make(index, fixture):
    out = os.path.join(ROOT, fixture["name"])
    os.makedirs(out)
    generator = torch.Generator().manual_seed(2000 + index)
    kind, teacher_args = fixture["teacher"]
    if kind == "qwen3":
        teacher = Qwen3ForCausalLM(Qwen3Config(**teacher_args, **COMMON))
    else:
        teacher = Qwen3MoeForCausalLM(Qwen3MoeConfig(**teacher_args, **COMMON))
    randomise(teacher, generator, 1.0)
    teacher.eval()
    teacher.save_pretrained(os.path.join(out, "teacher"))

    student = Qwen3ForCausalLM(Qwen3Config(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
        head_dim=8, tie_word_embeddings=fixture["student_tied"], rms_norm_eps=1e-6, **COMMON))
    randomise(student, generator, 1.0)
    if fixture["student_tied"]:
        student.tie_weights()
    student.save_pretrained(os.path.join(out, "student"))

    lora = LoraConfig(r=SETTINGS["r"], lora_alpha=SETTINGS["lora_alpha"], lora_dropout=0.0, target_modules=TARGETS,
                      task_type="CAUSAL_LM")
    peft_model = get_peft_model(student, lora)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:  # non-zero B, so every gradient is informative
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    peft_model.save_pretrained(os.path.join(out, "adapter-init"))
    settled(os.path.join(out, "adapter-init", "adapter_config.json"))
    peft_model = PeftModel.from_pretrained(
        Qwen3ForCausalLM.from_pretrained(os.path.join(out, "student"), attn_implementation="eager"),
        os.path.join(out, "adapter-init"), is_trainable=True)
    peft_model.train()

    rows = []
    for prompt, total in LENGTHS:
        ids = torch.randint(0, VOCAB, (total,), generator=generator).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    with open(os.path.join(out, "tokens.jsonl"), "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")

    # PEFT's logits for base + adapter on all four rows, for kd forward --adapter and kd export.
    ids, _, mask = pad(rows)
    peft_model.eval()
    with torch.no_grad():
        save_file({"logits": peft_model(input_ids=ids, attention_mask=mask).logits.contiguous(), "attention_mask": mask},
                  os.path.join(out, "adapter-logits.safetensors"))
    peft_model.train()

    params = [(n, p) for n, p in peft_model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([p for _, p in params], lr=SETTINGS["lr"], betas=SETTINGS["betas"],
                                  eps=SETTINGS["eps"], weight_decay=SETTINGS["weight_decay"])
    expected = {}
    magnitudes = Magnitudes(peft_model)
    micro = fixture["batch_size"]
    for step, step_rows in enumerate([rows[0:2], rows[2:4]], start=1):
        batches = [pad(step_rows[i:i + micro]) for i in range(0, len(step_rows), micro)]
        n = sum(int((labels[:, 1:] != -100).sum()) for _, labels, _ in batches)
        total_loss = total_kl = total_ce = 0.0
        magnitudes.clear()
        for ids, labels, mask in batches:
            with torch.no_grad():
                teacher_logits = teacher(input_ids=ids, attention_mask=mask).logits
            student_logits = peft_model(input_ids=ids, attention_mask=mask).logits
            loss, kl, ce = kd_loss(teacher_logits, student_logits, labels, n, SETTINGS["alpha"], SETTINGS["temperature"])
            loss.backward()
            total_loss += loss.item()
            total_kl += kl.item()
            total_ce += ce.item()
        for name, p in params:
            expected[f"step{step}.grad.{kd_key(name)}"] = p.grad.detach().clone()
        for key, magnitude in magnitudes.of(params).items():
            expected[f"step{step}.magnitude.{key}"] = magnitude
        grad_norm = torch.nn.utils.clip_grad_norm_([p for _, p in params], SETTINGS["max_grad_norm"])
        assert grad_norm > SETTINGS["max_grad_norm"], "clipping must be active"
        optimizer.step()
        optimizer.zero_grad()
        if step == 1:
            save_state(peft_model, optimizer, params, step, os.path.join(out, "torch-step-1"))
        expected[f"step{step}.metrics"] = torch.tensor([total_loss, total_kl, total_ce, grad_norm.item()], dtype=torch.float64)
        print(f"{fixture['name']} step {step}: loss {total_loss:.6f} kl {total_kl:.6f} ce {total_ce:.6f} "
              f"grad_norm {grad_norm.item():.6f} N {n}")
    for name, p in params:
        expected[f"final.{kd_key(name)}"] = p.detach().clone()
    save_file({k: v.contiguous() for k, v in expected.items()}, os.path.join(out, "expected.safetensors"))
    if fixture["name"] == "dense-teacher":
        make_divergences(out, teacher, rows, micro)
        make_on_policy(out, teacher, rows, micro)

    with open(os.path.join(out, "run.yaml"), "w") as f:
        f.write(f"""# kd settings matching the torch reference; the test supplies the paths.
run: {{seed: 7}}
devices: {{count: 2}}
teacher: {{devices: [0]}}
student: {{devices: [1]}}
lora: {{r: {SETTINGS['r']}, alpha: {SETTINGS['lora_alpha']}, dropout: 0.0}}
distill: {{alpha: {SETTINGS['alpha']}, temperature: {SETTINGS['temperature']}}}
data: {{format: tokens, shuffle: false}}
train: {{max_steps: 2, batch_size: {fixture['batch_size']}, grad_accum_steps: {fixture['grad_accum_steps']}, lr: {SETTINGS['lr']}, lr_schedule: constant, warmup_steps: 0, weight_decay: {SETTINGS['weight_decay']}, max_grad_norm: {SETTINGS['max_grad_norm']}}}
checkpoint: {{every_steps: 1, keep_last: 2}}
""")


def only_on_policy():
    """Rewrites dense-teacher/on-policy.safetensors alone from the fixture on disk."""
    fixture = FIXTURES[0]
    assert fixture["name"] == "dense-teacher"
    out = os.path.join(ROOT, fixture["name"])
    teacher = Qwen3ForCausalLM.from_pretrained(os.path.join(out, "teacher"), attn_implementation="eager")
    teacher.eval()
    with open(os.path.join(out, "tokens.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    make_on_policy(out, teacher, rows, fixture["batch_size"])


def main():
    if sys.argv[1:] == ["--only-on-policy"]:
        only_on_policy()
        return
    if sys.argv[1:]:
        sys.exit(f"make_train_fixtures.py: unknown arguments {sys.argv[1:]} (only --only-on-policy)")
    torch.manual_seed(0)
    if os.path.isdir(ROOT):
        shutil.rmtree(ROOT)
    for index, fixture in enumerate(FIXTURES):
        make(index, fixture)


if __name__ == "__main__":
    main()
