#!/usr/bin/env python3
"""Makes Tests/Fixtures/divergence/cached.safetensors: the distillation loss from an offline top-K
teacher cache and its gradient w.r.t. the student logits, by torch autograd in float64.

The teacher, student and labels are those of make_divergence_fixtures.py (generator seed 7, ROWS
positions, VOCAB tokens, f32 values). This is the spec kd implements.

The cache of a row, from the teacher's f32 logits t over the vocabulary V:
    ids[K]     the K ids with the largest t, by descending t (ties: smaller id first), I32
    logits[K]  t at those ids (raw, before temperature), F32
    lse        log sum_v exp(t_v) over the whole row, F32
    tail       log sum_{v not in ids} exp(t_v - lse), summed over the tail directly (not as
               1 - sum), F32; -inf when K = V
    lse_t      log sum_v exp(t_v / T_c) over the whole row, F32, at the cache's temperature T_c
               (the run config's distill.temperature when the cache was made)
    tail_t     log sum_{v not in ids} exp(t_v / T_c - lse_t), a direct masked sum, F32; -inf when K = V
lse, tail, lse_t and tail_t are computed in float64 from the f32 t, then rounded to f32 and stored.
Everything below reads the STORED f32 values, exactly as kd does. The fixture's cache has T_c = 2.

Teacher over K+1 outcomes (the K ids and "the rest") at the training temperature T:
    T == 1:          P_k = exp(logits_k - lse),        P_rest = exp(tail)
    else T == T_c:   P_k = exp(logits_k / T - lse_t),  P_rest = exp(tail_t)  (exact coarse-graining)
    else:            P_k = softmax_k(logits / T) over K, P_rest = 0 (the tempered tail is unknown)
Student: q = softmax(s/T) over V, Q_k = q[ids_k], Q_rest = sum_{v not in ids} q_v (a masked sum,
not 1 - sum Q_k; 0 when K = V). The "rest" outcome is dropped entirely when K = V.
D over the K+1 outcomes, with 0*log 0 = 0:
    forward_kl: sum_j P_j log(P_j/Q_j)
    reverse_kl: sum_j Q_j log(Q_j/P_j)   (T = 1 or T = T_c; infinite when P_rest = 0 < Q_rest)
    jsd(beta):  beta*KL(P||M) + (1-beta)*KL(Q||M), M = beta*P + (1-beta)*Q
kl = forward KL(P||Q) of the same coarse-grained P, Q (whatever D is); ce = -log softmax(s)_label
(T = 1, full vocabulary); over the N scored positions (labels != -100):
    loss = alpha*T^2*mean(D) + (1-alpha)*mean(CE),   gradient = d loss / d s (zero unscored rows)

Tensors: teacher, student (F32 [ROWS, VOCAB]), labels (I64 [ROWS]); per K in KS the cache
"K<k>.ids" (I32 [ROWS, K]), ".logits" (F32 [ROWS, K]), ".lse", ".tail", ".lse_t2", ".tail_t2"
(F32 [ROWS]; the last two at T_c = 2); per case "K<k>.<loss>[_<beta>].T<T>": .loss, .divergence
(mean D), .kl (mean forward KL), .ce (mean CE) (F64 [1]) and .gradient (F64 [ROWS, VOCAB]).
Cases: forward_kl and jsd (beta 0.1, 0.5, 0.9) at T = 1 and at T = 2 renormalised over the K ids
(".T1", ".T2": a cache whose T_c is not 2), reverse_kl at T = 1; and every loss at T = 2 = T_c with
the tempered tail (".T2c").

Checks (the script fails if one does not hold):
 1. K = V equals make_divergence_fixtures.case (the dense definition) within 1e-9 relative when the
    reference is fed the unrounded float64 lse (lse_t for .T2c); with the stored f32 values, T = 1
    and T2c agree within the bound the rounding of lse (lse_t) allows (see check_dense).
 2. T = 1 and T2c: per row, the coarse-grained forward KL is <= the full KL(p||q) at that T (data
    processing): within 1e-12 from the unrounded float64 values, within a slack derived from the
    f32 rounding from the stored ones.
 3. Every stored value is finite, except tail and tail_t2 = -inf for K = V.

    python3 Scripts/make_cached_divergence_fixtures.py
"""
import os
import sys

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_divergence_fixtures import ALPHA, BETAS, ROOT, ROWS, TEMPERATURES, VOCAB, case, divergence, inputs, kl  # noqa: E402

KS = [1, 7, VOCAB]
CACHE_TEMPERATURE = 2.0  # T_c: the distill.temperature the fixture's cache was made at
TEMPERED = [("forward_kl", None), ("reverse_kl", None)] + [("jsd", b) for b in BETAS]  # the .T2c cases


def tail_mask(ids):
    """True at the ids NOT in the cache, per row."""
    mask = torch.ones(ids.shape[0], VOCAB, dtype=torch.bool)
    return mask.scatter(-1, ids.long(), False)


def log_tail(scaled, lse, ids):
    """log sum_{v not in ids} exp(scaled_v - lse), a direct masked sum; log 0 = -inf when K = V."""
    terms = torch.where(tail_mask(ids), (scaled - lse[:, None]).exp(), torch.zeros_like(scaled))
    return terms.sum(-1).log()


def make_cache(teacher, k):
    """The stored cache (f32 / i32 tensors) and its unrounded float64 lse, lse_t2, tail_t2."""
    # A stable descending sort keeps equal logits in id order: ties go to the smaller id.
    ids = torch.sort(teacher, dim=-1, descending=True, stable=True).indices[:, :k]
    logits = teacher.gather(-1, ids)
    lse = torch.logsumexp(teacher, dim=-1)
    tail = log_tail(teacher, lse, ids)
    tempered = teacher / CACHE_TEMPERATURE
    lse_t = torch.logsumexp(tempered, dim=-1)
    tail_t = log_tail(tempered, lse_t, ids)
    cache = dict(ids=ids.to(torch.int32), logits=logits.float(), lse=lse.float(), tail=tail.float(),
                 lse_t2=lse_t.float(), tail_t2=tail_t.float())
    return cache, dict(lse=lse, lse_t2=lse_t, tail_t2=tail_t)


def cached_case(cache, student, labels, name, beta, temperature, tempered=False, exact=None):
    """The reference from the stored cache. tempered: the cache has T_c = temperature, so its lse_t2 and
    tail_t2 apply (the .T2c cases). exact: float64 values that replace stored ones (checks 1, 2)."""
    cache = {**cache, **(exact or {})}
    ids = cache["ids"].long()
    logits = cache["logits"].double()
    lse = cache["lse"].double()
    tail = cache["tail"].double()
    dense = ids.shape[1] == VOCAB
    if temperature == 1:
        log_p_k = logits - lse[:, None]
        log_p_rest = tail
    elif tempered:
        assert temperature == CACHE_TEMPERATURE, f"the cache's tempered tail is at T={CACHE_TEMPERATURE:g}"
        log_p_k = logits / temperature - cache["lse_t2"].double()[:, None]
        log_p_rest = cache["tail_t2"].double()
    else:
        log_p_k = torch.log_softmax(logits / temperature, dim=-1)
        log_p_rest = torch.full_like(tail, -torch.inf)

    s = student.clone().requires_grad_(True)
    scored = labels != -100
    n = scored.sum()
    log_q = torch.log_softmax(s / temperature, dim=-1)
    q = log_q.exp()
    log_q_k = log_q.gather(-1, ids)
    q_rest = torch.where(tail_mask(ids), q, torch.zeros_like(q)).sum(-1)
    if dense:
        log_p, log_q_coarse = log_p_k, log_q_k
    else:
        log_p = torch.cat([log_p_k, log_p_rest[:, None]], dim=-1)
        log_q_coarse = torch.cat([log_q_k, q_rest.log()[:, None]], dim=-1)

    d = divergence(name, beta, log_p, log_q_coarse)[scored].sum() / n
    forward_rows = kl(log_p, log_q_coarse)
    forward = forward_rows[scored].sum() / n
    ce = torch.nn.functional.cross_entropy(s[scored], labels[scored], reduction="sum") / n
    loss = ALPHA * temperature**2 * d + (1 - ALPHA) * ce
    loss.backward()
    values = dict(loss=loss.detach(), divergence=d.detach(), kl=forward.detach(), ce=ce.detach(), gradient=s.grad)
    return values, forward_rows.detach()


def relative(a, b):
    """max |a - b| / max |b| over a field."""
    return ((a - b).abs().max() / b.abs().max()).item()


def check_dense(key, exact, stored, dense, delta, temperature):
    """Check 1 for one K = V case.

    exact (unrounded lse) must equal the dense definition within 1e-9 relative: the two differ only
    by float64 rounding in a different order of operations.

    stored (f32 lse, T = 1; f32 lse_t, T2c) scales every P_k by exp(d), d = lse64 - lse32 of its row,
    so |d| <= half an f32 ulp of lse. To first order in d, D and kl move by at most |d|*(1 + D_row)
    (forward KL: d*(1 + KL); reverse KL: -d; jsd: beta*d*KL(P||M)), the mean CE not at all, the loss
    by alpha*T^2 times D's move, and a gradient entry by at most alpha*T*|d|*|q_v - P_v|/N <=
    alpha*T*|d|. With m = max(1, alpha*T^2) and twice that for the second order:
    |stored - dense| <= 2*m*max|d|*(1 + |dense|), entry by entry.
    """
    worst_exact = max(relative(exact[f], dense[f]) for f in dense)
    assert worst_exact <= 1e-9, f"{key}: cached (unrounded lse) vs dense differ by {worst_exact:.1e} relative"
    bound = 2 * max(1.0, ALPHA * temperature**2) * delta * (1 + max(dense[f].abs().max().item() for f in dense))
    worst_stored = max((stored[f] - dense[f]).abs().max().item() for f in dense)
    assert worst_stored <= bound, f"{key}: cached (f32 lse) vs dense differ by {worst_stored:.1e} > {bound:.1e}"
    return worst_exact, worst_stored, bound


def main():
    teacher, student, labels = inputs()
    existing = os.path.join(ROOT, "expected.safetensors")
    if os.path.exists(existing):
        previous = load_file(existing)
        assert torch.equal(previous["teacher"], teacher.float()) and torch.equal(previous["student"], student.float()) \
            and torch.equal(previous["labels"], labels), "inputs differ from expected.safetensors"
        print("teacher, student, labels: identical to expected.safetensors")
    tensors = {"teacher": teacher.float(), "student": student.float(), "labels": labels.to(torch.int64)}
    full_kl = kl(torch.log_softmax(teacher, dim=-1), torch.log_softmax(student, dim=-1))
    full_kl_t = kl(torch.log_softmax(teacher / CACHE_TEMPERATURE, dim=-1), torch.log_softmax(student / CACHE_TEMPERATURE, dim=-1))
    scored = labels != -100
    cases = [(name, None, t) for name in ("forward_kl",) for t in TEMPERATURES] + [("reverse_kl", None, 1.0)] \
        + [("jsd", b, t) for b in BETAS for t in TEMPERATURES]

    for k in KS:
        cache, exact64 = make_cache(teacher, k)
        lse64 = exact64["lse"]
        ids = cache["ids"].long()
        rows_logits = teacher.gather(-1, ids)
        assert all((rows_logits[r, i] > rows_logits[r, i + 1]) or
                   (rows_logits[r, i] == rows_logits[r, i + 1] and ids[r, i] < ids[r, i + 1])
                   for r in range(ROWS) for i in range(k - 1)), f"K{k}: ids not in (-logit, id) order"
        for field, value in cache.items():
            tensors[f"K{k}.{field}"] = value.contiguous()
        mass = (cache["logits"].double() - cache["lse"].double()[:, None]).exp().sum(-1) + cache["tail"].double().exp()
        print(f"K{k}: stored teacher mass at T=1 is 1 within {(mass - 1).abs().max().item():.1e}")
        delta = (lse64 - cache["lse"].double()).abs().max().item()

        for name, beta, temperature in cases:
            key = f"K{k}.{name}{'' if beta is None else f'_{beta}'}.T{temperature:g}"
            values, forward_rows = cached_case(cache, student, labels, name, beta, temperature)
            for field, value in values.items():
                assert torch.isfinite(value).all(), f"{key}.{field}: not finite"  # check 3
                tensors[f"{key}.{field}"] = value.reshape(-1 if field != "gradient" else value.shape).to(torch.float64).contiguous()

            if name == "forward_kl" and temperature == 1:  # check 2 (kl is the same whatever D is)
                # The stored f32 lse scales P by exp(d) as in check_dense: allow 2*max|d|*(1 + KL_row).
                slack = 2 * delta * (1 + full_kl)
                excess = (forward_rows - full_kl)[scored]
                assert (excess <= slack[scored]).all(), f"{key}: coarse KL exceeds the full KL by {excess.max().item():.1e}"
                exact_rows = cached_case(cache, student, labels, name, beta, temperature, exact=dict(lse=lse64))[1]
                exact_excess = (exact_rows - full_kl)[scored].max().item()
                assert exact_excess <= 1e-12, f"{key}: coarse KL (unrounded lse) exceeds the full KL by {exact_excess:.1e}"
                print(f"K{k} T=1: coarse KL <= full KL on every scored row; max (coarse - full) "
                      f"{exact_excess:+.1e} (unrounded lse), {excess.max().item():+.1e} (stored lse, "
                      f"slack {slack[scored].max().item():.1e})")

            if k == VOCAB:  # check 1
                dense = case(teacher, student, labels, name, beta, temperature)
                exact = cached_case(cache, student, labels, name, beta, temperature, exact=dict(lse=lse64))[0]
                worst_exact, worst_stored, bound = check_dense(key, exact, values, dense, delta, temperature)
                print(f"{key}: = dense within {worst_exact:.1e} relative (unrounded lse); "
                      f"{worst_stored:.1e} absolute with the stored lse (bound {bound:.1e})")

        t = CACHE_TEMPERATURE
        mass_t = (cache["logits"].double() / t - cache["lse_t2"].double()[:, None]).exp().sum(-1) \
            + cache["tail_t2"].double().exp()
        print(f"K{k}: stored teacher mass at T_c={t:g} is 1 within {(mass_t - 1).abs().max().item():.1e}")
        delta_t = (exact64["lse_t2"] - cache["lse_t2"].double()).abs().max().item()
        finite_tail = torch.isfinite(exact64["tail_t2"])
        delta_tail = (exact64["tail_t2"] - cache["tail_t2"].double())[finite_tail].abs().max().item() if k < VOCAB else 0.0
        for name, beta in TEMPERED:
            key = f"K{k}.{name}{'' if beta is None else f'_{beta}'}.T{t:g}c"
            values, forward_rows = cached_case(cache, student, labels, name, beta, t, tempered=True)
            for field, value in values.items():
                assert torch.isfinite(value).all(), f"{key}.{field}: not finite"  # check 3
                tensors[f"{key}.{field}"] = value.reshape(-1 if field != "gradient" else value.shape).to(torch.float64).contiguous()

            if name == "forward_kl":  # check 2 at T = T_c
                # Rounding shifts log P_j by d_j, |d_j| <= delta (lse_t2 for every id, tail_t2 for the rest).
                # To first order KL moves by sum_j P_j d_j (1 + log(P_j/Q_j)), at most
                # delta*(1 + sum_j P_j |log(P_j/Q_j)|) <= delta*(3 + KL) (the terms with P_j < Q_j add at most
                # 2*sum (Q_j - P_j) <= 2); coarse KL <= full KL, and twice that for the second order.
                delta_both = max(delta_t, delta_tail)
                slack = 2 * delta_both * (3 + full_kl_t)
                excess = (forward_rows - full_kl_t)[scored]
                assert (excess <= slack[scored]).all(), f"{key}: coarse KL exceeds the full KL by {excess.max().item():.1e}"
                exact_rows = cached_case(cache, student, labels, name, beta, t, tempered=True, exact=exact64)[1]
                exact_excess = (exact_rows - full_kl_t)[scored].max().item()
                assert exact_excess <= 1e-12, f"{key}: coarse KL (unrounded) exceeds the full KL by {exact_excess:.1e}"
                print(f"K{k} T2c: coarse KL <= full KL on every scored row; max (coarse - full) "
                      f"{exact_excess:+.1e} (unrounded lse_t2, tail_t2), {excess.max().item():+.1e} (stored, "
                      f"slack {slack[scored].max().item():.1e})")

            if k == VOCAB:  # check 1 at T = T_c
                dense = case(teacher, student, labels, name, beta, t)
                exact = cached_case(cache, student, labels, name, beta, t, tempered=True, exact=exact64)[0]
                worst_exact, worst_stored, bound = check_dense(key, exact, values, dense, delta_t, t)
                print(f"{key}: = dense within {worst_exact:.1e} relative (unrounded lse_t2); "
                      f"{worst_stored:.1e} absolute with the stored lse_t2 (bound {bound:.1e})")

    for key, value in tensors.items():  # check 3
        if key in (f"K{VOCAB}.tail", f"K{VOCAB}.tail_t2"):
            assert torch.isneginf(value).all(), f"{key}: not -inf"
        elif value.is_floating_point():
            assert torch.isfinite(value).all(), f"{key}: not finite"
    print(f"every value finite (K{VOCAB}.tail, K{VOCAB}.tail_t2 = -inf by definition)")
    os.makedirs(ROOT, exist_ok=True)
    save_file(tensors, os.path.join(ROOT, "cached.safetensors"))
    print(f"wrote {len(tensors)} tensors to {os.path.relpath(ROOT)}/cached.safetensors")


if __name__ == "__main__":
    main()
