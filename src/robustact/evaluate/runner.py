"""The evaluation engine: run a protocol's cascade of attacks into a per-sample results table.

``evaluate(model, x, y, protocol="standard", eps=8/255)`` returns a
:class:`~robustact.evaluate.table.ResultsTable` with one row per (sample, attack, ε). How:

1. inputs checked (model in eval mode, images in [0, 1], labels, logits out); clean predictions
   computed once; a tie for the top output counts as *not* correct (issue 11);
2. for each ε of the grid (default 0, ε/4, ε/2, ε, 2ε), the protocol's entries in order, each a
   *cell*: an ``on="all"`` entry attacks every clean-correct sample, an ``on="survivors"`` entry
   only those no earlier entry broke at that ε (AutoAttack's cascade); then the minimum-norm and
   unbounded entries, once, on every clean-correct sample;
3. every attack's claimed success is re-verified on the model itself
   (:func:`robustact.attacks.verify`: prediction, budget, box); a tie on x_adv counts as
   adversarial, as on clean inputs;
4. each finished cell is written atomically to ``out`` (:mod:`robustact.evaluate.storage`);
   a rerun with the same ``out`` skips the finished cells (and refuses a folder made by a
   different evaluation).

Randomness is keyed by sample: each attack gets ``keys`` = the samples' ids, so a row does not
depend on the batch size, the order or which process ran it (shards merge bit for bit, up to
the floating-point behaviour of the model's kernels across batch sizes). At ε = 0 no attack runs:
the cell's rows are the clean predictions (forward = backward = 0).

Cost columns: ``forward``/``backward`` per sample come from the attack's own instrumentation
(PGD family, APGD, FGSM) or its ``queries`` (Square, random search, transfer: one query on the
target; the surrogate's passes are not the target's); for the others (DeepFool, C&W, trust
region) the call's exact totals are spread evenly over its samples. The re-verification passes
are not counted.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from robustact.attacks import target_classes
from robustact.attacks.base import Attack, AttackResult
from robustact.attacks.bpda import with_bpda
from robustact.attacks.eot import EOT, EOT_RULE, MajorityVote, eot_draws
from robustact.attacks.registry import ATTACKS, attack_parameters, create_attack
from robustact.attacks.transfer import TransferAttack
from robustact.attacks.verify import judged_input, verify
from robustact.core.budget import budget_ceiling, check_budget
from robustact.core.runlock import RunLock
from robustact.core.storage import environment_info
from robustact.core.validate import (
    check_eval_mode,
    check_images,
    check_labels,
    check_positive_int,
    match_model_dtype,
    top_ties,
)
from robustact.defenses.registry import describe_defenses, strip_defenses
from robustact.evaluate.fingerprints import (
    data_fingerprint,
    evaluation_fingerprint,
    model_fingerprint,
)
from robustact.evaluate.protocols import DEFAULT_EPS_GRID, get_protocol, protocol_entries
from robustact.evaluate.shards import RANDOMIZED, ShardSet
from robustact.evaluate.storage import RunFolder
from robustact.evaluate.table import COLUMNS, ResultsTable
from robustact.models.outputs import is_randomized, rng_fork
from robustact.models.predict import predict

__all__ = ["evaluate", "default_eps_grid", "model_fingerprint", "data_fingerprint",
           "clean_predictions"]


def default_eps_grid(eps: float, multiples: Sequence[float] = DEFAULT_EPS_GRID) -> list[float]:
    """``multiples`` of ε, by default 0, ε/4, ε/2, ε, 2ε (a protocol's ``eps_grid`` field).

    2ε is capped at 1 for images in [0, 1] under L∞ by the caller. The products are exact for
    these power-of-two multiples, so the grid (part of a run folder's fingerprint) is the same
    floats as the ε/4, ε/2, 2ε it replaced.
    """
    return [m * eps for m in multiples]


def _batches(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def clean_predictions(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int
                      ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(pred, correct, num_classes) on clean inputs, on the CPU; a tied top output is not correct.

    Why a wrapper of :func:`robustact.models.predict.predict`: one prediction function, so the
    engine's clean accuracy is the one every other command (eval, training, the κ tuner) reports.
    """
    p = predict(model, (x, y), batch_size=batch_size, device=x.device)
    assert p.correct is not None  # labels were given
    return p.pred, p.correct, p.num_classes


def _smooth_jump(kappa: float) -> Any:
    """x·σ((x − κ)/τ), τ = κ/10: a smooth surrogate of JumpReLU_κ (x·1[x > κ]) for BPDA."""
    tau = max(kappa / 10.0, 1e-6)

    def f(t: torch.Tensor) -> torch.Tensor:
        return t * torch.sigmoid((t - kappa) / tau)

    return f


class _Entry:
    """One protocol entry resolved against the model, the norm and the class count."""

    def __init__(self, e: Mapping[str, Any], norm: str, seed: int, k: int) -> None:
        self.e = dict(e)
        self.key: str = e["key"]
        self.role: str = e["role"]
        self.mode: str = e["eps"]
        self.on: str = e["on"]
        self.through: str | None = e.get("through")
        self.target: str | None = e.get("target")
        self.k = k
        self.norm = norm
        self.seed = seed
        name = e["attack"]["name"]
        self.unavailable: str | None = None
        if name not in ATTACKS:
            self.unavailable = f"attack {name!r} is not available in this robustact"
        elif "norms" in e and norm not in e["norms"]:
            self.unavailable = f"{name} exists for {'/'.join(e['norms'])} only, not {norm}"
        elif "min_classes" in e and k < e["min_classes"]:
            self.unavailable = f"needs >= {e['min_classes']} classes, the model has {k} (C23)"
        elif "max_classes" in e and k > e["max_classes"]:
            self.unavailable = f"only for <= {e['max_classes']} classes"

    def build(self, eps: float | None) -> Attack:
        spec = dict(self.e["attack"])
        params = attack_parameters(spec["name"])
        if "norm" in params:
            spec.setdefault("norm", self.norm)
        if "seed" in params:
            spec.setdefault("seed", self.seed)
        if eps is not None and "eps" in params:
            spec["eps"] = eps
        attack = create_attack(**spec)
        if attack.norm != self.norm:
            raise ValueError(f"protocol entry {self.key!r}: the attack measures {attack.norm}, "
                             f"the evaluation {self.norm}")
        return attack


def _empty_rows(n: int) -> dict[str, np.ndarray]:
    rows = {c: np.zeros(n, dtype=t) for c, t in COLUMNS.items() if t is not object}
    for c in ("loss_first", "loss_best", "stall"):
        rows[c][:] = np.nan
    return rows


def _spread(total: int, n: int) -> np.ndarray:
    out = np.full(n, total // n if n else 0, dtype=np.int64)
    out[: total - int(out.sum())] += 1
    return out


def _result_rows(res: AttackResult, success: torch.Tensor, rows: dict[str, np.ndarray],
                 where: np.ndarray, seconds: float) -> None:
    """Fill ``rows`` at positions ``where`` from one attacked batch."""
    n = len(where)
    info = res.info
    if "forward" in info:
        rows["forward"][where] = info["forward"].cpu().numpy()
        rows["backward"][where] = info["backward"].cpu().numpy()
    elif res.queries is not None:
        rows["forward"][where] = res.queries.cpu().numpy()
        rows["backward"][where] = 0
    else:
        rows["forward"][where] = _spread(int(info.get("forward_total", 0)), n)
        rows["backward"][where] = _spread(int(info.get("backward_total", 0)), n)
    for c in ("loss_first", "loss_best", "stall"):
        if c in info:
            rows[c][where] = info[c].float().cpu().numpy()
    if "ever_adversarial" in info:
        rows["silent"][where] = (info["ever_adversarial"] & ~success).cpu().numpy()
    if "grad_zero" in info:
        rows["grad_zero"][where] = info["grad_zero"].cpu().numpy()
    rows["seconds"][where] = seconds / max(n, 1)


def _budgets(eps: float, eps_grid: Sequence[float] | None, norm: str, dim: int | None = None,
             multiples: Sequence[float] = DEFAULT_EPS_GRID) -> tuple[float, list[float]]:
    """The checked main ε and the sorted ε grid holding it, by the one budget rule.

    ε is in (0, 1] for L∞, (0, √dim] for L2 (:func:`robustact.core.budget.check_budget`); an
    explicit grid may also hold 0 (the clean point) but nothing beyond that range (an 8 there is
    the same typo as ``eps=8``). Without one, the grid is the protocol's ``multiples`` of ε, its
    2ε capped at the range's top.
    """
    eps = check_budget(eps, norm, dim)
    if eps_grid is None:
        top = budget_ceiling(norm, dim)
        grid = [min(e, top) for e in default_eps_grid(eps, multiples)]
    else:
        grid = [check_budget(e, norm, dim, name="eps_grid", allow_zero=True) for e in eps_grid]
    return eps, sorted({*grid, eps})


def _sample_ids(sample_ids: torch.Tensor | None, n: int) -> torch.Tensor:
    """The samples' ids (default 0..n-1), checked: integer, one per sample, unique."""
    ids = torch.arange(n) if sample_ids is None else sample_ids
    if not isinstance(ids, torch.Tensor) or ids.shape != (n,) or ids.dtype.is_floating_point:
        raise ValueError(f"sample_ids must be an integer tensor of shape ({n},)")
    if len(torch.unique(ids)) != n:
        raise ValueError("sample_ids must be unique")
    return ids


#: Images the randomness probe runs on (two forwards): small, so deterministic models pay nothing.
RANDOMNESS_PROBE = 8


def _randomness(model: nn.Module, x: torch.Tensor, eot: int | None, seed: int
                ) -> tuple[int, nn.Module, dict[str, Any]]:
    """(EOT draws, the clean judge, the table's ``randomness`` metadata).

    Two forwards of the first images tell a randomized model (:func:`is_randomized`); then
    ``eot`` (None: automatic) gives the draws (:func:`robustact.attacks.eot.eot_draws`) and the
    clean predictions are a :class:`MajorityVote` over as many draws. A deterministic model is
    its own judge and its metadata says only that.
    """
    randomized = is_randomized(model, x[:RANDOMNESS_PROBE])
    draws = eot_draws(eot, randomized)
    meta: dict[str, Any] = {"randomized": randomized, "eot": draws}
    if not draws:
        if randomized:
            meta["rule"] = ("EOT disabled (eot=0): attacks and judgments see single draws of "
                            "the model's own RNG, so the numbers are not reproducible")
        return 0, model, meta
    meta["rule"] = EOT_RULE
    return draws, MajorityVote(model, draws, seed, stream="clean").eval(), meta


def _clean_columns(ids: torch.Tensor, x: torch.Tensor, y: torch.Tensor, pred: torch.Tensor,
                   correct: torch.Tensor) -> dict[str, np.ndarray]:
    flat = x.flatten(1)
    return {"sample": ids.cpu().numpy(), "label": y.cpu().numpy().astype(np.int64),
            "clean_pred": pred.cpu().numpy().astype(np.int64),
            "clean_correct": correct.cpu().numpy(),
            "x_linf": flat.abs().amax(1).float().cpu().numpy(),
            "x_l2": flat.norm(dim=1).float().cpu().numpy()}


def _attack_meta(entries: list[_Entry], eps: float) -> dict[str, Any]:
    """Per attack key: its spec (built at the main ε), role, ε mode, cascade rule."""
    return {e.key: {**e.build(None if e.mode == "none" else eps).spec(), "role": e.role,
                    "eps_mode": e.mode, "on": e.on,
                    **({"through": e.through} if e.through else {}),
                    **({"target": e.target} if e.target else {})} for e in entries}


# Long by design: most of it is the argument documentation; the body checks inputs, builds the
# table metadata and hands the cells to _run_cells.
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             protocol: str | Mapping[str, Any] = "standard", *, eps: float,
             norm: str = "linf", eps_grid: Sequence[float] | None = None,
             out: str | None = None, batch_size: int = 256,
             device: str | torch.device | None = None, seed: int = 0,
             progress: bool = True, sample_ids: torch.Tensor | None = None,
             adaptive: bool = True, overrides: Mapping[str, Any] | None = None,
             meta: Mapping[str, Any] | None = None, locked: bool = False,
             eot: int | None = None, keep_adversarial: bool = True,
             surrogate: nn.Module | None = None, shard: tuple[int, int] | None = None,
             merge: Sequence[str | Path] | None = None) -> ResultsTable:
    """Run ``protocol`` on ``(x, y)`` and return the per-sample results table.

    Args:
        model: classifier in eval mode; inputs in [0, 1], logits out.
        x, y: the evaluation data (all of it: the table has one row per sample per cell).
        protocol: a name (``"standard"``, ``"standard@1"``), a protocol file's path or a dict.
        eps: the main budget ε (pixel units); ``eps_grid`` default: the protocol's ε multiples.
        norm: "linf" or "l2".
        out: results folder; finished cells are written there and skipped on a rerun.
        batch_size: samples per attack call (results do not depend on it).
        device: where to run (default: the model's device; the model is not moved).
        seed: every attack's seed; with the sample ids it keys all randomness.
        progress: tqdm bars with ETA (cells, and batches within a cell).
        sample_ids: the samples' ids (default 0..N-1): the keys of their randomness and the
            table's ``sample`` column; give a shard its global ids.
        adaptive: add :func:`~.protocols.adaptive_attacks` entries where the protocol says.
        overrides: attack parameters set in every entry taking them (e.g. ``{"steps": 5}``).
        meta: extra table metadata (dataset, split, model description).
        locked: the caller already holds ``out``'s run lock (the lock is not re-entrant).
        eot: draws per forward for a randomized model (:mod:`robustact.attacks.eot`); None:
            10 when two forwards of a probe batch differ, else 0; 0: the model as it is.
        keep_adversarial: with ``out``, keep the adversarial example of every point broken at
            the main ε in its cell's file (False: for very large runs; a folder made one way
            does not resume the other way).
        surrogate: the model that ``through: twin`` entries craft on (default: the undefended
            twin, ``strip_defenses(model)``): a paper's black-box transfer from a ReLU-trained
            copy (``robustact reproduce``). Part of the fingerprint.
    """
    batch_size = _check_inputs(model, x, y, batch_size, surrogate)
    proto = get_protocol(protocol, overrides)
    eps, grid = _budgets(eps, eps_grid, norm, math.prod(x.shape[1:]), proto["eps_grid"])
    n = x.shape[0]
    ids = _sample_ids(sample_ids, n)
    dev = torch.device(device) if device is not None else next(
        (p.device for p in model.parameters()), x.device)
    x, y, ids = x.to(dev), y.to(dev), ids.to(dev).to(torch.int64)

    draws, judge, randomness = _randomness(model, x, eot, seed)
    if draws and (shard is not None or merge):
        raise ValueError(RANDOMIZED)
    pred, correct, k = clean_predictions(judge, x, y, batch_size)
    entries, notes = _resolve_entries(proto, model, norm, seed, k, adaptive)

    clean = _clean_columns(ids, x, y, pred, correct)
    table_meta = _table_meta(proto, model, x, y, ids, eps, grid, norm, seed, k, entries, notes,
                             randomness, dev, meta, surrogate, shard)
    fingerprint = evaluation_fingerprint(table_meta, [e.e for e in entries], draws,
                                         keep_adversarial)
    shards = None
    if merge:
        shards = ShardSet(merge)
        shards.bind(fingerprint, x, y, ids, clean, table_meta["environment"]["robustact"])

    with ExitStack() as stack:
        folder = None
        if out is not None:
            if not locked:  # the caller (robustact.runs) may hold the run folder's lock
                stack.enter_context(RunLock(out, "evaluation"))
            folder = RunFolder(out, table_meta, fingerprint)
            folder.write_clean(clean)
            folder.save_manifest()
        table = _run_cells(model, x, y, ids, pred, correct, entries, grid, eps, norm,
                           batch_size, folder, table_meta, progress, draws, keep_adversarial,
                           surrogate, shards=shards, defer=shard is not None)
    table.meta = {**table.meta, "clean": clean}  # as load_table gives it (not in the JSON)
    return table


def _table_meta(proto: Mapping[str, Any], model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                ids: torch.Tensor, eps: float, grid: list[float], norm: str, seed: int, k: int,
                entries: list[_Entry], notes: dict[str, str], randomness: dict[str, Any],
                dev: torch.device, meta: Mapping[str, Any] | None,
                surrogate: nn.Module | None, shard: tuple[int, int] | None) -> dict[str, Any]:
    """The table's metadata: what ran on what (the run folder's manifest holds it)."""
    deferred = [e.key for e in entries if "max_points" in e.e]
    return {
        "protocol": proto["id"], "protocol_overrides": proto["overrides"],
        "eps": eps, "eps_grid": grid, "norm": norm, "seed": seed, "num_classes": k,
        "n": x.shape[0], "model": {"class": type(model).__name__,
                                   "defenses": describe_defenses(model),
                                   "fingerprint": model_fingerprint(model)},
        "data_fingerprint": data_fingerprint(x, y, ids),
        "attacks": _attack_meta(entries, eps), "unavailable": notes, "randomness": randomness,
        "environment": environment_info(), "device": str(dev), **dict(meta or {}),
        **({"surrogate": model_fingerprint(surrogate)} if surrogate is not None else {}),
        **({"shard": {"index": shard[0], "count": shard[1], "deferred": deferred}}
           if shard is not None else {}),
    }


def _check_inputs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                  surrogate: nn.Module | None) -> int:
    """One line per bad input (train mode, range, labels, batch size); the batch size."""
    check_eval_mode(model, "evaluating it")
    if surrogate is not None:
        check_eval_mode(surrogate, "crafting transfer attacks on it")
    check_images(x)
    check_labels(y, x.shape[0])
    return check_positive_int(batch_size, "batch_size")


def _resolve_entries(proto: Mapping[str, Any], model: nn.Module, norm: str, seed: int, k: int,
                     adaptive: bool) -> tuple[list[_Entry], dict[str, str]]:
    """The cascade's entries that can run on this model, and why the others cannot."""
    entries = [_Entry(e, norm, seed, k)
               for e in protocol_entries(proto, model, adaptive=adaptive)]
    if len({e.key for e in entries}) != len(entries):
        raise ValueError("an adaptive attack's key collides with a protocol entry's key")
    notes = {e.key: e.unavailable for e in entries if e.unavailable}
    return [e for e in entries if not e.unavailable], notes


def _cells(entries: list[_Entry], grid: list[float], eps: float, norm: str, x: torch.Tensor
           ) -> list[tuple[_Entry, float, float | None]]:
    """(entry, ε of the rows, ε the attack gets or None) in run order."""
    out: list[tuple[_Entry, float, float | None]] = []
    for e_val in grid:
        at = {"grid": True, "main": e_val == eps, "lower": e_val < eps, "upper": e_val >= eps}
        for e in entries:
            if at.get(e.mode, False):
                out.append((e, e_val, e_val))
    big = budget_ceiling(norm, x[0].numel())  # the whole box: "max" mode's ε
    for e in entries:
        if e.mode == "none":
            out.append((e, math.inf, None))
        elif e.mode == "max":
            out.append((e, math.inf, big))
    return out


def _target_model(model: nn.Module, e: _Entry) -> nn.Module:
    if e.through in ("bpda", "bpda_smooth"):
        subs = None
        if e.through == "bpda_smooth":
            kappas = [d["kappa"] for d in describe_defenses(model) if d["type"] == "jumprelu"]
            subs = {"JumpReLU": _smooth_jump(float(kappas[0]))} if kappas else None
        return with_bpda(model, subs)
    return model


def _run_cells(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor,
               pred: torch.Tensor, correct: torch.Tensor, entries: list[_Entry],
               grid: list[float], eps: float, norm: str, batch_size: int,
               folder: RunFolder | None, meta: dict[str, Any], progress: bool,
               draws: int = 0, keep_adversarial: bool = True,
               surrogate: nn.Module | None = None, *, shards: ShardSet | None = None,
               defer: bool = False) -> ResultsTable:
    """Every cell in run order: read when ``folder`` has it, merged when ``shards`` do, left
    out when ``defer`` and a screen (a shard's), else attacked and added to ``folder``."""
    done = folder.finished() if folder is not None else {}
    twin = surrogate
    cells = _cells(entries, grid, eps, norm, x)
    broken = {e_val: ~correct.cpu().numpy() for e_val in grid}  # not robust at ε (so far)
    tables: list[ResultsTable] = []
    correct_np = correct.cpu().numpy()
    bar = tqdm(cells, desc="evaluate", unit="cell", disable=not progress)
    for e, e_val, attack_eps in bar:
        bar.set_postfix_str(f"{e.key} eps={e_val:.4g}")
        cached = done.get((e.key, float(e_val)))
        merged = shards.cell(e.key, e_val, len(ids)) if shards and cached is None else None
        if cached is not None and folder is not None:
            t = folder.read(cached)
        elif defer and "max_points" in e.e:
            continue  # a screen: its sample is drawn from every shard's survivors at the merge
        else:
            if merged is not None:
                t, mismatch, secs, adv = merged
            else:
                if e.through == "twin" and twin is None:
                    twin = strip_defenses(model).eval()
                t, mismatch, secs, adv = _run_cell(
                    model, x, y, ids, pred, correct_np, e, e_val, attack_eps,
                    broken.get(e_val), batch_size, progress, twin,
                    keep=keep_adversarial and folder is not None and e_val == eps, draws=draws)
            if folder is not None:
                folder.add(t, attack=e.key, eps=e_val, norm=norm, seconds=secs,
                           mismatch=mismatch, adversarial=adv)
        if e_val in broken:
            broken[e_val] |= t["success"]
        tables.append(t)
    return ResultsTable.concat(tables, meta)


def _cell_models(model: nn.Module, e: _Entry, e_val: float, draws: int
                 ) -> tuple[nn.Module, nn.Module | None]:
    """(what the attack runs on, the vote judging it or None for a deterministic model)."""
    target = _target_model(model, e)
    if not draws:
        return target, None
    stream = f"{e.key}@{e_val!r}"
    return (EOT(target, draws, e.seed, stream=stream).eval(),
            MajorityVote(model, draws, e.seed, stream="judge:" + stream).eval())


def _judge(model: nn.Module, judge: nn.Module | None, xb: torch.Tensor, yb: torch.Tensor,
           res: AttackResult, eps: float | None, norm: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(verified success, prediction on x_adv) of one attacked batch.

    Deterministic model: :func:`verify` on the model itself; a tie on x_adv counts as
    adversarial, as on clean inputs. Randomized model: the budget and the box are still
    :func:`verify`'s (its single-draw predictions, made on a forked RNG, are not used); the
    prediction is ``judge``'s majority vote, a point without a majority being adversarial.
    """
    if judge is None:
        v = verify(model, xb, yb, res, eps=eps, norm=norm)
        success = v.success | (top_ties(res.logits) & v.in_budget & v.in_box)
        return success, res.logits.argmax(1)
    with rng_fork(xb.device):
        v = verify(model, xb, yb, res, eps=eps, norm=norm)
    x_eval = judged_input(res.x_adv, xb)
    votes = judge(match_model_dtype(model, x_eval))
    wrong = (votes.argmax(1) != yb) | top_ties(votes)
    return wrong & v.in_budget & v.in_box, votes.argmax(1)


#: Odd 64-bit multipliers of the screen's hash (splitmix64's finalizer constants).
_MIX = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)


def _screen(idx: np.ndarray, ids: torch.Tensor, e: _Entry) -> np.ndarray:
    """``idx`` cut to the entry's ``max_points``: those whose sample id hashes lowest.

    Why a hash of the id and the seed, not the first ones: the sample must not lean on the
    data's order, and a given point is in or out whatever the batch size, the shard or the
    order of the cascade (the same rule as the attacks' per-sample randomness).
    """
    cap = e.e.get("max_points")
    if cap is None or idx.size <= cap:
        return idx
    mask = (1 << 64) - 1
    keys = []
    for i in ids.cpu().numpy()[idx].tolist():
        h = (int(i) * _MIX[0] + e.seed * _MIX[1]) & mask
        h = ((h ^ (h >> 31)) * _MIX[2]) & mask
        keys.append(h ^ (h >> 29))
    return np.sort(idx[np.argsort(np.array(keys, dtype=np.uint64), kind="stable")[:cap]])


def _run_cell(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor,
              pred: torch.Tensor, correct: np.ndarray, e: _Entry, e_val: float,
              attack_eps: float | None, broken: np.ndarray | None, batch_size: int,
              progress: bool, twin: nn.Module | None, keep: bool = False, draws: int = 0
              ) -> tuple[ResultsTable, int, float, dict[str, torch.Tensor] | None]:
    """One (attack, ε) cell: its rows, the re-check mismatches, its seconds and, with
    ``keep``, the adversarial examples of the points it broke (sample ids and x_adv).
    ``draws`` > 0: a randomized model, attacked through :class:`EOT` and judged by a
    :class:`MajorityVote`, both seeded per cell (so a resumed cell draws as a fresh one)."""
    n = x.shape[0]
    kept: dict[str, list[torch.Tensor]] = {"sample": [], "x_adv": []}
    rows = _empty_rows(n)
    rows["sample"][:] = ids.cpu().numpy()
    rows["label"][:] = y.cpu().numpy()
    rows["eps"][:] = e_val
    rows["clean_correct"][:] = correct
    rows["pred"][:] = pred.cpu().numpy()
    rows["success"][:] = ~correct  # misclassified clean: not robust, not attacked
    todo = correct.copy()
    if e.on == "survivors" and broken is not None:
        todo &= ~broken
    rows["success"][correct & ~todo] = False  # broken earlier in the cascade: not attacked
    idx = _screen(np.nonzero(todo)[0], ids, e)  # a screen attacks a sample of them
    rows["skipped"][:] = True
    rows["skipped"][idx] = False
    mismatch, start = 0, time.perf_counter()
    if idx.size and attack_eps == 0.0:
        rows["success"][idx] = False  # x_adv = x: the clean prediction, already correct
    elif idx.size:
        attack = e.build(attack_eps)
        if e.through == "twin":
            assert twin is not None
            attack = TransferAttack(twin, attack)
        target_model, judge = _cell_models(model, e, e_val, draws)
        idx_t = torch.from_numpy(idx).to(x.device)
        for s in tqdm(_batches(idx.size, batch_size), desc=e.key, leave=False,
                      disable=not progress):
            b = idx_t[s]
            xb, yb = x[b], y[b]
            t0 = time.perf_counter()
            tb = (target_classes(e.target, yb, ids[b], e.k, e.seed)
                  if e.target else None)  # the row's success stays "misclassified"
            res = attack(target_model, xb, yb, tb, keys=ids[b], record=True)
            success, pred_adv = _judge(model, judge, xb, yb, res, attack_eps, e.norm)
            hit = success if tb is None else success & (pred_adv == tb)
            mismatch += int((res.success != hit).sum())
            where = idx[s]
            rows["success"][where] = success.cpu().numpy()
            rows["pred"][where] = pred_adv.cpu().numpy()
            delta = (res.x_adv - match_model_dtype(model, xb)).flatten(1)
            rows["linf"][where] = delta.abs().amax(1).float().cpu().numpy()
            rows["l2"][where] = delta.norm(dim=1).float().cpu().numpy()
            _result_rows(res, success, rows, where, time.perf_counter() - t0)
            if keep:
                kept["sample"].append(ids[b][success].cpu())
                kept["x_adv"].append(res.x_adv[success].detach().cpu())
    secs = time.perf_counter() - start
    adv = {k: torch.cat(v) for k, v in kept.items()} if keep and kept["sample"] else None
    cols: dict[str, np.ndarray] = dict(rows)
    cols["attack"] = np.full(n, e.key, dtype=object)
    cols["norm"] = np.full(n, e.norm, dtype=object)
    return ResultsTable(cols), mismatch, secs, adv

