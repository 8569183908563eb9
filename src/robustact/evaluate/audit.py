"""The gradient-masking audit: table-level checks and :func:`run_audit`.

Table-level checks read a :class:`~robustact.evaluate.table.ResultsTable` whose
``meta["attacks"][key]["role"]`` says what each attack is for (``ROLES``): the *standard* attacks
give the reported figure; every other role is a second opinion on the same points. Everything is
judged **per sample** (AUDIT.md): "extra broken" means a sample that is clean-correct, that no
standard attack broke at ε, and that the compared attack broke. Such points answer the first of
the audit's two questions, *is the reported number complete?* (a protocol gap, already folded
into the worst case); they count as evidence for the second, *is there gradient masking?*, only
through an exact binomial test against the disagreement sound attacks show on healthy models
(:func:`~robustact.evaluate.check_base.gap_test`), never on a one-sample floor.

:func:`run_audit` runs them with the model-level checks (:mod:`robustact.evaluate.checks`,
:mod:`robustact.evaluate.attack_checks`) and judges all of them by AUDIT.md's verdict
(:mod:`robustact.evaluate.verdict`; re-exported here with :class:`AuditReport`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from robustact.attacks.base import Attack
from robustact.core.budget import check_budget
from robustact.evaluate.attack_checks import (
    binarization_on_reported_robust,
    check_transfer_mismatch,
    random_search_beyond_black_box,
)
from robustact.evaluate.check_base import (
    ADAPTIVE_GAP_RATE,
    HEALTHY_GAP_RATE,
    CheckResult,
    beyond_noise,
    gap_test,
    noise_floor,
    pct,
)
from robustact.evaluate.checks import MODEL_CHECKS
from robustact.evaluate.samples import Samples, main_eps, rows_at, standard_robust
from robustact.evaluate.summary import worst_case
from robustact.evaluate.table import ResultsTable
from robustact.evaluate.verdict import VERDICTS, AuditReport, Verdict, verdict

__all__ = [
    "AUDIT_VERSION",
    "AuditReport",
    "Verdict",
    "VERDICTS",
    "TABLE_CHECKS",
    "run_audit",
    "verdict",
    "check_silent_success",
    "check_incomplete_optimization",
    "check_convergence",
    "check_transfer",
    "check_unbounded",
    "check_monotone_eps",
    "check_single_step",
    "check_black_box",
    "check_random_search_table",
    "check_loss_choice",
    "check_adaptive",
    "check_worst_case",
    "check_label_only",
]

#: What the checks measure, versioned: bumped when a check records a new number (not when a
#: threshold on stored numbers changes: those are re-judged). The calibration zoo re-runs the
#: audit, not the attacks, of a cell whose key differs only in it. 1: the issue-20 audit;
#: 2: C4 counts vanishing (non-zero, ≤ 1e-6 of the largest) gradient coordinates; 3: C4 records
#: its count of exactly-zero gradients (it fires on 2 samples or more, never on one); 4: the gap
#: checks count as candidates only the survivors a screen (``max_points``) attacked; 5: random
#: search (C17) leaves to the black-box screen the samples it attacked.
AUDIT_VERSION = 5
#: C10's threshold on the stall statistic (IoAF I4).
STALL_THRESHOLD = 0.05
#: An L∞ budget this large lets every image become uniform grey: accuracy must be at chance.
LINF_CHANCE_EPS = 0.5
#: C15/C16's extra noise floor, as a share of the points the standard attacks left robust.
#: Measured: Square after APGD-100 broke 2 of 85 survivors (2.4 %) of the undefended digits
#: LeNet-5 at ε = 0.1, and 1 of 86, 1 of 57 on the JumpReLU and differential models; on masked
#: models the wins are far larger (SPLASH under the quick protocol 7 of 90, 7.8 %; sigmoid
#: T = 100 66 of 96 AutoAttack survivors on MNIST). AUDIT.md: a gap of a few points between
#: sound attacks is normal for adversarially trained models.
GENERIC_SURVIVOR_NOISE = 0.05


def _noise_floor(n: int, survivors: int | None = None) -> float:
    """AUDIT.md's floor (:func:`~robustact.evaluate.check_base.noise_floor`); with ``survivors``
    (the points reported robust) also ``GENERIC_SURVIVOR_NOISE`` of them, for the checks whose
    attacks differ from the standard ones on a few per cent of the survivors anyway."""
    floor = noise_floor(n)
    return floor if survivors is None else max(floor, GENERIC_SURVIVOR_NOISE * survivors)


def _na(cid: str, name: str, why: str, kind: str = "attack") -> CheckResult:
    return CheckResult(cid, name, None, {}, f"not applicable: {why}.", kind=kind)


def _extra_break(table: ResultsTable, role: str, cid: str, name: str, eps: float | None, *,
                 what: str, rate: float | None = HEALTHY_GAP_RATE) -> CheckResult:
    """Shared shape of C11/C15–C20/C25: does ``role`` break points the standard attacks left
    robust at ε? Two answers, kept apart:

    - **completeness**: any such point is a protocol gap; the reported worst case already
      counts it (every attack's breaks are folded in), and the check "fires" to report it;
    - **masking**: only when the gap is more than the disagreement that sound attacks show on
      healthy models (:func:`~robustact.evaluate.check_base.gap_test`: an exact binomial test
      of the extra breaks among the candidates against ``rate``) is it evidence of masking
      (``breaks_points``). Never on a one-sample floor. ``rate=None``: a completeness
      question only (C19).
    """
    keys = table.attacks(role)
    if not keys:
        return _na(cid, name, f"the table has no {role.replace('_', '-')} attack")
    e = main_eps(table, eps)
    s = Samples.of(table)
    robust = standard_robust(table, s, e)
    if robust is None:
        return _na(cid, name, f"no standard attack at ε = {e:g} to compare with")
    rows = rows_at(table, keys, e)
    if len(rows) == 0:
        return _na(cid, name, f"the {role.replace('_', '-')} attack has no rows at ε = {e:g}")
    broken, attacked = s.broken(rows)
    # A screen (an entry with max_points) attacked a sample of the survivors: the points it
    # left out, robust under every attack, are no candidates (no-op without a screen: every
    # entry then attacks every point still robust at its turn).
    any_broken, _ = s.broken(rows_at(table, table.attacks(), e))
    robust = robust & ~(s.clean_correct & ~any_broken & ~attacked)
    extra = broken & robust
    n, k, cand = len(s.ids), int(extra.sum()), int(robust.sum())
    significant, pv = gap_test(k, cand, rate) if rate is not None else (False, None)
    acc_std = float(robust.sum()) / n
    acc_with = float((robust & ~broken).sum()) / n
    numbers = {"eps": e, "attacks": keys, "n": n, "standard_robust": cand,
               "attacked": int(attacked.sum()), "extra_broken": k,
               "extra_samples": s.ids[extra][:20].tolist(),
               "robust_accuracy_standard": acc_std, "robust_accuracy_with": acc_with,
               "healthy_rate": rate, "p_value": pv}
    ev = (f"{', '.join(keys)} ({what}) broke {k} of the {cand} points the standard attacks "
          f"left robust at ε = {e:g} (robust accuracy {pct(acc_std)} → {pct(acc_with)}, "
          f"n = {n})")
    if significant:
        ev += (f": far more than the {pct(rate)} that sound attacks disagree on for healthy "
               f"models (p = {pv:.2g}): the standard attacks are being misled.")
    elif k and rate is None:
        ev += (": a protocol gap, already in the reported worst case (losses disagree on "
               "healthy models too; saturation itself is C5's).")
    elif k:
        ev += (f": a protocol gap, already in the reported worst case; within the "
               f"disagreement of sound attacks on healthy models ({pct(rate)}, p = {pv:.2g}), "
               "so not a masking sign on its own.")
    else:
        ev += "."
    return CheckResult(cid, name, k > 0, numbers, ev, kind="gap", breaks_points=significant)


# -- the table-level checks ---------------------------------------------------------------------

def check_silent_success(table: ResultsTable, *, eps: float | None = None) -> CheckResult:
    """C9: some iterate was adversarial but the returned point is not → return the best iterate."""
    rows = table.where(table["silent"] & ~table["success"])
    per = {a: int((rows["attack"] == a).sum()) for a in table.attacks()}
    per = {a: c for a, c in per.items() if c}
    k = len(rows)
    ev = (f"{k} rows ({', '.join(f'{a}: {c}' for a, c in per.items())}) had an adversarial "
          "iterate but returned a non-adversarial point: return the best iterate."
          if k else "no attack lost an adversarial iterate.")
    return CheckResult("C9", "silent success", k > 0, {"silent_rows": k, "per_attack": per}, ev)


def check_incomplete_optimization(table: ResultsTable, *, eps: float | None = None,
                                  threshold: float = STALL_THRESHOLD) -> CheckResult:
    """C10: on failed, attacked rows with a loss trace, the stall statistic > ``threshold``
    means the loss was still improving when the attack stopped; fires beyond noise.

    Only rows at the main ε of samples the evaluation finally reports robust count: a stalled
    attack on a point that another attack (or a smaller ε) broke changes no reported number.
    A stalled point that the convergence attack (C11: more steps and restarts, ``thorough``)
    then attacked without breaking it, and without stalling itself, is answered: "give the
    attack more steps" is exactly what C11 did. The noise floor counts the points reported
    robust like C15/C16's (``GENERIC_SURVIVOR_NOISE``); measured: APGD-CE (100 steps) was
    still improving on 13 of the 876 points an adversarially trained MNIST CNN kept (1.5 %).
    """
    e = main_eps(table, eps)
    ids, robust = worst_case(table, e)
    st = table["stall"]
    rows = table.where(np.isfinite(st) & ~table["skipped"] & ~table["success"]
                       & np.isclose(table["eps"], e, rtol=0, atol=1e-12)
                       & np.isin(table["sample"], ids[robust]))
    if len(rows) == 0:
        return _na("C10", "incomplete optimization",
                   "no failed attack with a loss trace on a point reported robust",
                   kind="diagnostic")
    over = rows["stall"] > threshold
    n = len(table.samples())
    stalled = np.unique(rows["sample"][over])
    conv = rows.where(np.isin(rows["attack"], table.attacks("convergence")) & ~over)
    answered = np.intersect1d(stalled, conv["sample"])
    k = len(stalled) - len(answered)
    per = {a: int(over[rows["attack"] == a].sum()) for a in rows.attacks()}
    # as for the generic second opinions: a few per cent of the points a sound evaluation
    # reports robust are still improving at the last step
    floor = _noise_floor(n, int(robust.sum()))
    fired = k > floor
    ev = (f"{len(stalled)} of {n} points had a failed attack whose loss was still improving "
          f"(stall > {threshold:g}; "
          f"{', '.join(f'{a}: {c}' for a, c in per.items() if c) or 'none'})")
    if len(answered):
        ev += (f"; the convergence attack (more steps and restarts) then failed on "
               f"{len(answered)} of them without stalling, leaving {k}")
    ev += (": give the attacks more steps or larger steps." if fired else
           f": within noise (at most {floor:.3g} of the {int(robust.sum())} points reported "
           "robust)." if k else ".")
    return CheckResult("C10", "incomplete optimization", fired,
                       {"samples_stalled": int(len(stalled)), "answered_by_convergence":
                        int(len(answered)), "n": n, "noise_threshold": floor,
                        "per_attack": per, "max_stall": float(rows["stall"].max())}, ev)


def check_convergence(table: ResultsTable, *, eps: float | None = None) -> CheckResult:
    """C11: the standard attack with more steps and restarts, on survivors."""
    return _extra_break(table, "convergence", "C11", "convergence", eps,
                        what="more steps and restarts")


def check_transfer(table: ResultsTable, *, eps: float | None = None) -> CheckResult:
    """C18: adversarials crafted on the undefended twin break points the white-box attacks
    did not (per sample: transfer robust accuracy below white-box)."""
    return _extra_break(table, "transfer", "C18", "transfer from the base model", eps,
                        what="transfer from the undefended twin", rate=ADAPTIVE_GAP_RATE)


def check_unbounded(table: ResultsTable, *, eps: float | None = None) -> CheckResult:
    """C13: an unbounded attack must break every clean-correct point; fires below 100 %."""
    keys = table.attacks("unbounded")
    if not keys:
        return _na("C13", "unbounded attack", "the table has no unbounded attack",
                   kind="diagnostic")
    rows = rows_at(table, keys, None)
    rows = rows.where(rows["clean_correct"] & ~rows["skipped"])
    s = Samples.of(rows) if len(rows) else None
    if s is None:
        return _na("C13", "unbounded attack", "the unbounded attack ran on no clean-correct point",
                   kind="diagnostic")
    broken, _ = s.broken(rows)
    n, k = len(s.ids), int(broken.sum())
    fired = k < n
    ev = (f"the unbounded attack ({', '.join(keys)}) broke {k} of {n} correctly classified "
          f"points ({pct(k / n)})" +
          (": below 100 %, so the loss or the attack is broken." if fired else "."))
    return CheckResult("C13", "unbounded attack", fired,
                       {"success_rate": k / n, "failed": n - k, "n": n}, ev)


def check_monotone_eps(table: ResultsTable, *, eps: float | None = None,
                       num_classes: int | None = None) -> CheckResult:
    """C14: robust accuracy of the standard attacks over the table's ε grid must not rise with ε
    (aggregate: any rise; per sample: broken at a smaller ε yet robust at a larger one, beyond
    noise), and must fall to chance at a very large ε (L∞ ≥ 0.5: every image can become grey)."""
    std = table.attacks("standard")
    rows = rows_at(table, std, None)
    rows = rows.where(np.isfinite(rows["eps"]))
    grid = np.unique(rows["eps"])
    if len(grid) < 2:
        return _na("C14", "monotone in ε", "the standard attacks ran at fewer than two ε",
                   kind="diagnostic")
    s = Samples.of(table)
    n = len(s.ids)
    robust, present, accs = [], [], []
    for e in grid:
        r = rows_at(rows, std, float(e))
        b, _ = s.broken(r)
        p = s.present(r)
        robust.append(s.clean_correct & ~b & p)
        present.append(p)
        accs.append(float(robust[-1].sum()) / max(1, int(p.sum())))
    rises = [(float(grid[i]), float(grid[i + 1])) for i in range(len(grid) - 1)
             if accs[i + 1] > accs[i]]
    # per sample: broken (not robust, clean-correct) at ε_i, robust at some ε_j > ε_i
    nonmono = np.zeros(n, dtype=bool)
    for i in range(len(grid)):
        broken_i = s.clean_correct & present[i] & ~robust[i]
        for j in range(i + 1, len(grid)):
            nonmono |= broken_i & robust[j]
    k = int(nonmono.sum())
    e_main = float(eps) if eps is not None else float(grid[-1])
    main_i = int(np.argmin(np.abs(grid - e_main)))
    smaller_broke = np.zeros(n, dtype=bool)
    for i in range(main_i):
        smaller_broke |= s.clean_correct & present[i] & ~robust[i]
    missed_at_main = int((smaller_broke & robust[main_i]).sum())
    labels = table["label"]
    kk = num_classes or int(table.meta.get("num_classes", 0)) or int(labels.max()) + 1
    majority = float(np.bincount(labels, minlength=kk).max()) / len(labels)
    norms = set(rows["norm"].tolist())
    above_chance = bool(norms == {"linf"} and grid[-1] >= LINF_CHANCE_EPS
                        and accs[-1] - majority > max(1.0 / n, 0.005))
    fired = bool(rises) or beyond_noise(k, n) or above_chance
    numbers = {"eps_grid": grid.tolist(), "robust_accuracy": accs, "rises": rises,
               "samples_non_monotone": k, "missed_at_eps": missed_at_main,
               "chance": majority, "above_chance_at_large_eps": above_chance}
    parts = [f"robust accuracy over ε {', '.join(f'{e:g}' for e in grid)}: "
             f"{', '.join(pct(a) for a in accs)}"]
    if rises:
        parts.append(f"it rises with ε ({'; '.join(f'{a:g} → {b:g}' for a, b in rises)})")
    if k:
        parts.append(f"{k} points broken at a smaller ε survive a larger one")
    if above_chance:
        parts.append(f"at ε = {grid[-1]:g} it stays above chance ({pct(majority)})")
    ev = "; ".join(parts) + (": the attack is not finding what exists." if fired else ".")
    # a diagnostic of the attack: a rise with ε says the attack fails, not by how much
    return CheckResult("C14", "monotone in ε, chance at large ε", fired, numbers, ev)


def check_single_step(table: ResultsTable, *, eps: float | None = None) -> CheckResult:
    """C15: FGSM breaks points the iterative standard attacks did not (any per-sample win: a
    note within noise, confirming beyond)."""
    return _extra_break(table, "single_step", "C15", "single-step beats iterative", eps,
                        what="single-step")


def check_black_box(table: ResultsTable, *, eps: float | None = None) -> CheckResult:
    """C16: a black-box attack on the survivors; any per-sample win → investigate (a note
    within noise, confirming beyond)."""
    return _extra_break(table, "black_box", "C16", "black-box beats white-box", eps,
                        what="black-box")


def check_random_search_table(table: ResultsTable, *, eps: float | None = None) -> CheckResult:
    """C17 from the table, when the protocol ran random search itself."""
    return _extra_break(table, "random_search", "C17", "random search", eps,
                        what="random search")


def check_loss_choice(table: ResultsTable, *, eps: float | None = None) -> CheckResult:
    """C19: a margin/DLR/targeted variant breaks points CE left robust.

    It answers the completeness question only: CE and DLR disagree on healthy models too, by
    far more than other sound attacks (calibration zoo: APGD-DLR broke 40 of the 93 points
    APGD-CE left robust on a digits MLP trained for 2 epochs, 37 of 84 on a thin CNN trained
    for 3), which is why the protocols run both (Croce & Hein 2020); every such point is in the
    reported worst case. The masking mechanism that makes CE fail, a saturated output, is
    measured directly by C5.
    """
    return _extra_break(table, "loss_variant", "C19", "loss choice", eps,
                        what="another loss", rate=None)


def check_adaptive(table: ResultsTable, *, eps: float | None = None) -> CheckResult:
    """C20: the defense-specific adaptive attack (BPDA, loss on pre-activation logits)."""
    return _extra_break(table, "adaptive", "C20", "defense-specific adaptive attack", eps,
                        what="adaptive", rate=ADAPTIVE_GAP_RATE)


def check_label_only(table: ResultsTable, *, eps: float | None = None) -> CheckResult:
    """C25: a decision-based attack on the predicted labels alone, on the survivors."""
    return _extra_break(table, "label_only", "C25", "label-only attack", eps,
                        what="label-only")


def check_worst_case(table: ResultsTable, *, eps: float | None = None) -> CheckResult:
    """C22: robust = no attack at ε succeeded on that sample (AND over attacks, minimum-norm
    points within ε included, as :func:`~.summary.worst_case` counts them), always reported;
    never an average over attacks."""
    e = main_eps(table, eps)
    keys = [a for a in table.attacks()
            if table.meta.get("attacks", {}).get(a, {}).get("role") not in ("unbounded",
                                                                             "min_norm")]
    rows = rows_at(table, keys, e)
    if len(rows) == 0:
        return _na("C22", "per-sample worst case", f"no fixed-budget attack at ε = {e:g}",
                   kind="info")
    s = Samples.of(table)
    n = len(s.ids)
    # The one definition reports use too: minimum-norm points within ε count as broken.
    acc = float(worst_case(table, e)[1].sum()) / n
    single = {}
    for a in rows.attacks():
        b, _ = s.broken(rows_at(rows, [a], e))
        single[a] = float((s.clean_correct & ~b).sum()) / n
    best = min(single, key=single.__getitem__)
    robust_std = standard_robust(table, s, e)
    numbers = {"eps": e, "n": n, "robust_accuracy": acc, "per_attack": single,
               "strongest_single": best, "clean_accuracy": float(s.clean_correct.mean())}
    if robust_std is not None:
        numbers["robust_accuracy_standard"] = float(robust_std.sum()) / n
    ev = (f"per-sample worst case over {len(single)} attacks at ε = {e:g}: robust accuracy "
          f"{pct(acc)} (strongest single attack {best}: {pct(single[best])}).")
    return CheckResult("C22", "per-sample worst case", False, numbers, ev, kind="info")


#: The table-level checks, in AUDIT.md order.
TABLE_CHECKS: tuple[Callable[..., CheckResult], ...] = (
    check_silent_success, check_incomplete_optimization, check_convergence, check_transfer,
    check_unbounded, check_monotone_eps, check_single_step, check_black_box,
    check_loss_choice, check_adaptive, check_worst_case, check_label_only,
)


# -- the whole audit ----------------------------------------------------------------------------

def _say_how_randomness_was_handled(results: list[CheckResult],
                                    table: ResultsTable | None) -> None:
    """C1 fired on a model the engine already evaluated with EOT: say so instead of advising
    it (the randomness is still a masking mechanism, and still confirms)."""
    eot = ((table.meta.get("randomness") or {}) if table is not None else {}).get("eot", 0)
    for c in results:
        if c.id == "C1" and c.fired and eot:
            c.evidence = c.evidence.replace(
                "so attack it with EOT.",
                f"robustact evaluated it with EOT ({eot} draws averaged for the gradients; a "
                "point counts as correct only in a majority of fresh draws).")


def run_audit(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
              table: ResultsTable | None = None, *, eps: float, norm: str = "linf",
              samples: torch.Tensor | None = None, surrogate: nn.Module | None = None,
              random_points: int = 10_000, random_samples: int = 100,
              binarization_samples: int = 20, binarization_attack: Attack | None = None,
              max_samples: int = 100, seed: int = 0, progress: bool = False) -> AuditReport:
    """Run the model-level checks on ``x[:max_samples]`` and the table-level checks on
    ``table``, then the verdict; records the audit's own wall time and model forward rows.

    ``samples``: the table's sample ids of the rows of ``x`` (default 0…N−1), so random search
    (C17) can be compared with what the standard attacks left robust. ``surrogate`` enables C12.
    ``progress``: a tqdm bar over the model-level checks (random search and binarization can
    take minutes on a large model).
    """
    eps = check_budget(eps, norm, int(x[0].numel()))  # the one budget rule, before any work
    start = time.perf_counter()
    rows = [0]

    def count(_m: nn.Module, args: tuple[Any, ...]) -> None:
        if args and isinstance(args[0], torch.Tensor):
            rows[0] += int(args[0].shape[0])

    handle = model.register_forward_pre_hook(count)
    spent: dict[str, float] = {}  # each model-level check's wall time: where the audit's goes

    def run(fn: Callable[..., CheckResult], *args: Any, **kwargs: Any) -> None:
        t = time.perf_counter()
        results.append(fn(*args, **kwargs))
        spent[results[-1].id] = round(time.perf_counter() - t, 3)
        bar.update()

    try:
        xs, ys = x[:max_samples], y[:max_samples]
        kw = {"eps": eps, "norm": norm}
        bar = tqdm(total=len(MODEL_CHECKS) + 3, desc="audit", unit="check",
                   disable=not progress)
        results: list[CheckResult] = []
        for fn in MODEL_CHECKS:
            run(fn, model, xs, ys, **kw)
        run(check_transfer_mismatch, model, xs, ys, surrogate=surrogate, seed=seed, **kw)
        ids = samples if samples is not None else torch.arange(x.shape[0])
        run(binarization_on_reported_robust, model, xs, ys, table, ids[:max_samples],
            eps=eps, norm=norm, max_samples=binarization_samples, attack=binarization_attack,
            seed=seed)
        if table is not None and table.attacks("random_search"):
            run(check_random_search_table, table, eps=eps)
        else:
            run(random_search_beyond_black_box, model, x, y, table, ids, points=random_points,
                max_samples=random_samples, seed=seed, **kw)
        bar.close()
        if table is not None:
            results += [fn(table, eps=eps) for fn in TABLE_CHECKS]
    finally:
        handle.remove()
    order = {f"C{i}": i for i in range(1, 26)}
    results.sort(key=lambda c: order.get(c.id, 99))
    _say_how_randomness_was_handled(results, table)
    return AuditReport(results, verdict(results), time.perf_counter() - start, rows[0],
                       {"eps": eps, "norm": norm, "check_seconds": spent})
