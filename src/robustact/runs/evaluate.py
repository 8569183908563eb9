"""``eval``, ``evaluate`` and ``attack`` as library calls: one engine, one record per run.

- :func:`clean_accuracy` (``robustact eval``): the one prediction function
  (:func:`robustact.models.predict.predict`, a tied top output is not correct) on a split.
- :func:`evaluate_model` (``robustact evaluate``): a protocol (a shipped ``name@version`` or a
  user's file) run by the engine into a results folder, the audit, then ONE record
  (:func:`robustact.report.evaluation.evaluation_record`) whose views, ``summary.json``,
  ``report.json``, ``report.md`` and ``report.html``, are written together, so no rerun with
  other options can leave them disagreeing.
- :func:`attack_model` (``robustact attack``): a one-attack protocol on the same engine, with
  the same folder and the same files.

The run folder goes through :func:`robustact.core.runfolder.open_run`: a fresh
``runs/<kind>/<model>-<protocol>-<time>`` by default, locked, resumed cell by cell when rerun
(a different protocol, ε, model or data is refused in one line), ``force`` to start over,
``run.json`` recording the run, Ctrl-C kept to one line.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustact import __version__
from robustact.attacks.eot import EOT
from robustact.attacks.registry import attack_parameters
from robustact.core.budget import check_budget, default_budget
from robustact.core.digest import model_digest
from robustact.core.runfolder import open_run
from robustact.core.storage import read_json, save_tensors
from robustact.core.validate import check_eval_mode, check_positive_int, resolve_device
from robustact.data import as_tensors
from robustact.evaluate import evaluate, get_protocol
from robustact.evaluate.audit import AuditReport, run_audit
from robustact.evaluate.certified import certify_table
from robustact.evaluate.protocols import one_attack_protocol
from robustact.evaluate.storage import load_adversarial
from robustact.evaluate.table import ResultsTable
from robustact.models.outputs import rng_fork
from robustact.models.predict import predict
from robustact.report.evaluation import evaluation_record, keep_earlier_audit, write_views
from robustact.runs.sources import ModelSource, as_logits, load_target

__all__ = ["EVALUATE_AUDIT_DEFAULTS", "EVALUATION_FILES", "attack_model", "chance_threshold",
           "check_not_chance", "checked_inputs", "clean_accuracy", "evaluate_model",
           "evaluate_source", "prepare_model"]

#: The audit counts :func:`evaluate_model` uses (``run_audit``'s own defaults are for a study):
#: the model-level checks on the first 100 samples, random search with 1000 points per sample on
#: them (C17; 10⁴ cost as much as the whole quick protocol), binarization on 20.
EVALUATE_AUDIT_DEFAULTS: dict[str, int] = {"max_samples": 100, "random_points": 1000,
                                           "random_samples": 100, "binarization_samples": 20}
#: What an evaluation writes into its folder; ``force`` removes exactly these (and the plots).
EVALUATION_FILES = ("table.json", "clean.safetensors", "cells", "summary.json", "report.json",
                    "report.md", "report.html", "robust_accuracy.png", "min_norm.png",
                    "adversarial.safetensors")


def clean_accuracy(source: ModelSource | str | Path, *, dataset: str | None = None,
                   split: str = "test", data_root: str | Path | None = None,
                   limit: int | None = None, download: bool = False,
                   device: str | torch.device = "auto") -> dict[str, Any]:
    """Clean accuracy of a model (checkpoint or model file) on a split of its dataset.

    The number is :func:`~robustact.models.predict.predict`'s: a tied top output counts as
    wrong, as in ``evaluate`` and training's validation, so every command agrees.
    """
    src = source if isinstance(source, ModelSource) else ModelSource(checkpoint=source)
    if limit is not None:
        check_positive_int(limit, "limit")
    t = load_target(src, dataset=dataset, split=split, n=limit, data_root=data_root,
                    download=download, device=device)
    t0 = time.perf_counter()
    p = predict(t.model, t.data)
    return {"model": src.info(), "checkpoint": None if src.checkpoint is None
            else str(src.checkpoint), "dataset": t.dataset, "split": split, "n": p.n,
            "accuracy": p.accuracy, "tied": p.n_tied,
            "device": str(next((q.device for q in t.model.parameters()), "cpu")),
            "seconds": time.perf_counter() - t0}


def chance_threshold(num_classes: int, n: int) -> float:
    """The clean accuracy below which a model is "at chance": 1/K + max(5 points, 2 σ).

    σ = √(c(1 − c)/n) is the binomial standard deviation of the accuracy of a model that
    guesses (c = 1/K): a guessing model passes the gate with probability about 2 % (one-sided,
    normal approximation), whatever n. The 5-point floor covers what guessing can reach beyond
    1/K without any skill: a constant prediction scores its class's frequency, a few points over
    1/K on unbalanced test sets. Why 2 σ and not 3: the gate must never stop a real model, and
    on a few images (a smoke test on 4) 3 σ asks for 55 % of a ten-class model. A trained model
    is far above either way (a two-epoch digits CNN: ~90 % against 21 % at n = 30).
    """
    c = 1.0 / num_classes
    return c + max(0.05, 2.0 * math.sqrt(c * (1.0 - c) / n))


def check_not_chance(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                     batch_size: int = 256) -> float:
    """The clean accuracy of ``model`` on (x, y); one ValueError line when it is at chance.

    Why before any attack: a model evaluated at chance (no weights, a missing or wrong
    normalization, another dataset's label order, dropout left on) gives a full, confident
    report about nothing. One clean pass (on a forked RNG, so a randomized model draws nothing
    from the caller's RNG) costs little next to the attacks.
    """
    with rng_fork(next((q.device for q in model.parameters()), x.device)):
        p = predict(model, (x, y), batch_size=batch_size)  # batches go to the model's device
    limit = chance_threshold(p.num_classes, p.n)
    if p.accuracy < limit:
        raise ValueError(
            f"clean accuracy {p.accuracy:.1%} on {p.n} images is at chance ({1 / p.num_classes:.0%}"
            f" for {p.num_classes} classes; the gate is {limit:.1%}): likely no --weights, a "
            "missing or wrong --normalize, the wrong --dataset or label order, or a model left "
            "in train mode; pass --allow-chance (allow_chance=True) to evaluate it anyway")
    return p.accuracy


def checked_inputs(model: nn.Module, data: Any, dataset: str | None,
                   protocol: str | Path | Mapping[str, Any], overrides: dict[str, Any] | None,
                   eps: float | None, norm: str
                   ) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor, float]:
    """(protocol, images as floats, labels, ε) of an evaluation, checked before any folder is
    made: the model in eval mode, a known protocol, ε given or the dataset's standard one."""
    check_eval_mode(model, "evaluating it")
    proto = get_protocol(protocol, overrides)  # a bad protocol fails before any folder
    x, y = as_tensors(data, "data")
    x = x.float() / 255 if x.dtype == torch.uint8 else x
    if eps is None:
        if dataset is None:
            raise ValueError("no eps given and no dataset to take the standard budget from; "
                             "pass eps")
        eps = default_budget(dataset, norm)
    return proto, x, y, check_budget(eps, norm, math.prod(x.shape[1:]))


def prepare_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: Any,
                  allow_chance: bool, batch_size: int) -> tuple[nn.Module, dict[str, Any]]:
    """The model on its device, probabilities wrapped into logits (said in the returned info),
    past the chance gate unless ``allow_chance``."""
    if device is not None:
        model = model.to(resolve_device(device))
    model, note = as_logits(model, x)
    if not allow_chance:
        check_not_chance(model, x, y, batch_size=batch_size)
    return model, {} if note is None else {"output": note}


def _randomness_info(randomness: Mapping[str, Any]) -> dict[str, Any]:
    """What the report says about a randomized model (nothing for a deterministic one)."""
    if not randomness.get("randomized"):
        return {}
    draws = randomness.get("eot", 0)
    how = f"EOT over {draws} draws" if draws else "EOT disabled"
    return {"randomness": f"randomized (two forwards of the same images differ): {how}; "
                          f"{randomness.get('rule', '')}"}


def _table_key(table: Any) -> dict[str, Any]:
    """What identifies a finished table: a rerun with the same key gives the same rows."""
    m = table.meta
    return {"protocol": m.get("protocol"), "eps_grid": m.get("eps_grid"), "norm": m.get("norm"),
            "seed": m.get("seed"), "model": (m.get("model") or {}).get("fingerprint"),
            "data": m.get("data_fingerprint")}


# Long by design: a documented signature and one run: resolve ε and the folder, evaluate, audit,
# write the record's views under the lock.
def evaluate_model(model: nn.Module, data: Any, *, dataset: str | None = None,
                   name: str = "model", protocol: str | Path | Mapping[str, Any] = "standard",
                   eps: float | None = None, norm: str = "linf", batch_size: int = 256,
                   device: str | torch.device | None = None, out: str | Path | None = None,
                   seed: int = 0, progress: bool = True, audit: bool = True,
                   audit_options: dict[str, Any] | None = None, force: bool = False,
                   info: dict[str, Any] | None = None, command: str | None = None,
                   adaptive: bool = True, overrides: dict[str, Any] | None = None,
                   extra_curves: dict[str, Any] | None = None, kind: str = "evaluate",
                   eot: int | None = None, allow_chance: bool = False,
                   keep_adversarial: bool = True,
                   merge: Sequence[str | Path] | None = None,
                   certify: bool = True) -> dict[str, Any]:
    """Run ``protocol`` on ``data`` into ``out``, audit it, write the record and its views.

    ``model`` is any ``nn.Module`` taking [0, 1] images and returning logits (eval mode);
    ``data`` an ImageDataset or ``(x, y)``. ``protocol``: a shipped name (``"standard"``, the
    latest version, or ``"standard@1"``), a protocol file, or a dict. ``eps`` defaults to
    ``dataset``'s standard budget (:func:`robustact.core.budget.default_budget`). ``out``
    defaults to a fresh ``runs/<kind>/<name>-<protocol>-<time>``; a rerun with the same ``out``
    resumes (finished cells are read, not re-attacked), one with another protocol, ε, model or
    data is refused and leaves the folder as it was, unless ``force`` (start over).
    ``device``: None keeps the model where it is. The audit uses
    :data:`EVALUATE_AUDIT_DEFAULTS` updated with ``audit_options``; without it, the verdict of
    an earlier audit of the very same table is kept (and said to be). ``adaptive``/``overrides``
    go to the engine; ``extra_curves`` (e.g. a κ sweep) to the reports. Returns the summary
    plus ``"out"``. A model returning probabilities is attacked through their logarithm; a
    randomized one with EOT (``eot`` draws; None: automatic, 0: off; :mod:`robustact.attacks.eot`);
    both are said in the reports. A clean accuracy at chance stops the run before any folder
    is made (:func:`check_not_chance`) unless ``allow_chance``. ``keep_adversarial``: write
    ``adversarial.safetensors`` (every point broken at the main ε, for ``robustact verify`` and
    ``export``); False for very large runs, where it holds about the broken test images twice
    (once per cell, once gathered). ``merge``: shard folders of this very evaluation
    (:mod:`robustact.runs.shards`) whose cells are joined instead of attacked. ``certify``:
    certified accuracy (IBP, CROWN-IBP) at every ε of the grid under the attack figure, when
    the model's layers allow (:mod:`robustact.evaluate.certified`); a sample certified and
    broken stops the run.
    """
    proto, x, y, eps = checked_inputs(model, data, dataset, protocol, overrides, eps, norm)
    digest = model_digest(model)  # of the model as given: what `verify` reloads and re-hashes
    model, found = prepare_model(model, x, y, device, allow_chance, batch_size)
    described = {"name": name, "dataset": dataset, **(info or {}), **found,
                 "model_digest": digest}
    with open_run(out, kind, what="evaluation", force=force, clear=EVALUATION_FILES,
                  default=(f"runs/{kind}", name, proto["name"].split(":", 1)[-1]),
                  command=command, config={"protocol": proto["id"], "eps": eps, "norm": norm,
                                           "seed": seed, "n": int(x.shape[0]),
                                           **({"merged": [str(p) for p in merge]}
                                              if merge else {})}) as run:
        t0 = time.perf_counter()
        table = evaluate(model, x, y, protocol, eps=eps, norm=norm, out=str(run.path),
                         batch_size=batch_size, seed=seed, progress=progress,
                         meta={"dataset": dataset, "source": info or {}}, adaptive=adaptive,
                         overrides=overrides, locked=True, eot=eot,
                         keep_adversarial=keep_adversarial, merge=merge)
        wall = time.perf_counter() - t0
        described.update(_randomness_info(table.meta.get("randomness") or {}))
        certified = (certify_table(model, x, y, table, norm=norm, check_at=eps) if certify
                     else {"available": False, "reason": "not asked for (--no-certify)"})
        report = None
        if audit:
            dev = next((p.device for p in model.parameters()), x.device)
            draws = (table.meta.get("randomness") or {}).get("eot", 0)
            audited = EOT(model, draws, seed, stream="audit").eval() if draws else model
            report = run_audit(audited, x.to(dev), y.to(dev), table, eps=eps, norm=norm,
                               seed=seed, progress=progress,
                               **{**EVALUATE_AUDIT_DEFAULTS, **(audit_options or {})})
        record = evaluation_record(table, report, info=described, extra_curves=extra_curves,
                                   run=_run_info(command, table, report, wall, keep_adversarial,
                                                 certified.get("seconds")),
                                   certified=certified)
        if report is None:
            record = keep_earlier_audit(record, run.path / "report.json")
        paths = write_views(run.path, record)
        _write_adversarial(run.path, x, y, record, keep=keep_adversarial)
        summary = read_json(paths["summary"])  # what the user's file says is what we return
        run.finish({"summary": "summary.json", "clean_accuracy": summary["clean_accuracy"],
                    "robust_accuracy": summary["robust_accuracy"],
                    "verdict": summary["verdict"]["label"]})
    return {**summary, "out": str(run.path)}


def _run_info(command: str | None, table: ResultsTable, report: AuditReport | None,
              wall: float, keep_adversarial: bool, certify_s: float | None = None
              ) -> dict[str, Any]:
    """The record's ``run`` part: the command, the table's key, whether adversarial examples
    were kept, and where the seconds went (attacks, this run's wall time, the audit)."""
    return {"command": command, "table": _table_key(table), "adversarial_kept": keep_adversarial,
            "seconds": {"attacks": float(table["seconds"].sum()) if len(table) else 0.0,
                        "evaluation_wall_this_run": wall,
                        "audit": report.seconds if report else None,
                        "certify": certify_s,
                        "audit_model_forward_rows":
                            report.model_forward_rows if report else None}}


def _provenance(record: Mapping[str, Any]) -> dict[str, str]:
    """What ``adversarial.safetensors`` records of the run that made it (str → str, as
    safetensors metadata must be): versions, protocol, seed, budget, each attack's spec and
    the model's digest.

    Why in the file and not only in report.json: the examples travel alone (shared, exported),
    and ``robustact verify`` checks them against exactly what made them."""
    p, info = record["protocol"], record.get("info") or {}
    attacks = p.get("attacks") or {}
    return {"provenance_version": "1", "robustact": __version__, "torch": torch.__version__,
            "protocol": str(p["id"]), "seed": str(p.get("seed")),
            "eps": repr(record["summary"]["eps"]), "norm": str(record["summary"]["norm"]),
            "n": str(record["summary"]["n"]), "model_digest": str(info.get("model_digest", "")),
            "attack_specs": json.dumps({k: attacks[k] for k in sorted(attacks)}, default=str)}


def _write_adversarial(out: Path, x: torch.Tensor, y: torch.Tensor,
                       record: Mapping[str, Any], *, keep: bool = True) -> None:
    """``adversarial.safetensors``: every point broken at the main ε with its adversarial
    example and label (the per-sample worst case, re-checkable by running the model on it);
    the metadata names the attack of each and records the run's provenance
    (:func:`_provenance`). Written even when no point broke (empty tensors), so every finished
    evaluation can be verified the same way. ``keep=False`` (``--no-adversarial``): removed,
    so a folder never holds a stale file."""
    if not keep:
        (out / "adversarial.safetensors").unlink(missing_ok=True)
        return
    adv = load_adversarial(out)
    if adv is None:
        adv = {"sample": torch.zeros(0, dtype=torch.int64), "attack": [],
               "x_adv": torch.zeros((0, *x.shape[1:]), dtype=x.dtype)}
    names = sorted(set(adv["attack"]))
    save_tensors(out / "adversarial.safetensors", {
        "sample": adv["sample"], "label": y.cpu()[adv["sample"]], "x_adv": adv["x_adv"],
        "attack": torch.tensor([names.index(a) for a in adv["attack"]], dtype=torch.int64)},
        metadata={"attacks": json.dumps(names), **_provenance(record)})


def evaluate_source(source: ModelSource, *, dataset: str | None = None, n: int | None = 1000,
                    data_root: str | Path | None = None, download: bool = False,
                    device: str | torch.device = "auto", split: str = "test",
                    **options: Any) -> dict[str, Any]:
    """:func:`evaluate_model` for a model as the user names it (checkpoint or model file):
    the model and the first ``n`` images of its ``split``; ``options`` go to evaluate_model."""
    t = load_target(source, dataset=dataset, split=split, n=n, data_root=data_root,
                    download=download, device=device)
    return evaluate_model(t.model, t.data, dataset=t.dataset, name=t.name,
                          info={**t.info, "split": split}, **options)


def attack_model(source: ModelSource, attack_spec: Mapping[str, Any], *,
                 bpda: bool = False, audit: bool = False, **options: Any) -> dict[str, Any]:
    """One attack as a one-entry protocol on the evaluation engine (``robustact attack``).

    ``attack_spec`` is a ``create_attack`` spec (``{"name": "pgd", "steps": 40, ...}``; its
    ``eps`` and ``norm``, if any, become the run's budget). ``bpda``: attack through the BPDA
    substitutes (JumpReLU → ReLU, output activation → identity). The folder, files and resume
    rules are :func:`evaluate_model`'s; ``audit`` is off by default (one attack gives most
    checks nothing to compare).
    """
    spec = dict(attack_spec)
    eps = spec.pop("eps", None)
    if eps is not None and "eps" not in attack_parameters(str(spec.get("name"))):
        raise ValueError(f"{spec.get('name')} does not take eps: it is a minimum-norm attack "
                         "(it searches for the smallest perturbation); drop --eps")
    norm = spec.pop("norm", None) or "linf"
    proto = one_attack_protocol(spec, through="bpda" if bpda else None)
    options.setdefault("certify", False)  # one attack: no sandwich unless asked
    return evaluate_source(source, protocol=proto, eps=eps, norm=norm, audit=audit,
                           adaptive=False, kind="attack", **options)
