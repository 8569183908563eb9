"""``robustact reproduce``: a paper's experiment from its data file, cell by cell, resumable.

A paper file (:mod:`robustact.protocols.papers`, or a user's copy) names the models to train and
how, the defense settings applied to each, the paper's attacks as evaluation-protocol entries,
the ε and the images, what the paper reported, and a ``quick`` block of short settings. This
module is its one runner; there is no code path per paper::

    {"name": "jumprelu", "version": 1, "title": "...", "source": "arXiv:...",
     "description": "...", "notes": ["..."],
     "models": [{"key": "lenetlike", "dataset": "mnist", "arch": "lenetlike",
                 "train": {"epochs": 90, "lr": 0.02, ...},      # TrainConfig fields
                 # optional: activation, classes, loss, output_activation, temperature,
                 # model_kwargs, n_train, surrogate (the key of the model that
                 # "through": "twin" entries craft on: a paper's black-box transfer),
                 # "grid": {"activation": [...], "seed": [...]}
                 # (the key then names them: "lenet5-{activation}-s{seed}"),
                 # "attack_seeds": [1] (of a grid's seeds, the ones attacked)
                 }],
     "settings": [{"key": "kappa=1", "defenses": [{"type": "jumprelu", "kappa": 1.0}],
                   "models": ["lenetlike"]}],                   # models: optional filter
     "attacks": {"eps": 0.3, "eps_grid": [1], "norms": ["linf", "l2"],   # eps: or per
                                      # dataset, {"mnist": 0.3, "cifar10": 0.0314}
                 "entries": [...]},   # protocol entries; "defended_only": true skips a
                                      # setting without defenses (gray-box = white-box there);
                                      # "datasets": [...] keeps an entry to those datasets
     "evaluation": {"protocol": "standard", "eps": {"mnist": 0.1}},   # the strongest one;
                                      # eps by model key, group or dataset; "overrides" as
                                      # evaluate's (tests only: the figures are then weaker)
     "data": {"n": 1000, "splits": ["test"]},
     "headline": {"attack": "ifgsm", "eps": null, "metric": "accuracy"},   # or one per
                                      # dataset: {"mnist": {...}, "cifar10": {...}}
     "claims": [{"model": "...", "setting": "...", "attack": "...", "eps": null,
                 "metric": "accuracy", "value": 18.56, "where": "Table 2(B)"}],
     "quick": {"n": 64, "epochs": 1, "n_train": 2000, "models": [...], "settings": [...]}}

Cells: each (model, setting, split) runs the paper's attacks through the evaluation engine
(:func:`robustact.evaluate.evaluate`, one run folder per norm, resumed attack by attack and ε by
ε) and robustact's own evaluation with its audit (:func:`~robustact.runs.evaluate.evaluate_model`,
resumed the same way). A finished cell keeps its record (``cell.json``) under a key of
everything that made it, so a rerun of a finished reproduction only re-renders the report.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import os
import shutil
import time
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

import robustact.protocols.papers as shipped_papers
from robustact import __version__
from robustact.attacks import lp_norms, target_classes
from robustact.checkpoint import load_checkpoint
from robustact.core.storage import atomic_write_json, environment_info, read_json
from robustact.core.validate import resolve_device
from robustact.data import as_tensors, dataset_info, to_float
from robustact.defenses import apply_defenses
from robustact.defenses.jumprelu_retrofit import tune_jumprelu
from robustact.defenses.output_activation import OutputActivationModel
from robustact.evaluate import evaluate, get_protocol
from robustact.models.predict import predict
from robustact.report.reproduction import same_eps, write_reproduction_views
from robustact.runs.evaluate import evaluate_model
from robustact.runs.train import load_splits, train_classifier
from robustact.train import TrainConfig

__all__ = ["FIELDS", "load_paper", "paper_as_run", "paper_names", "reproduce"]

#: A paper file's fields; ``name``, ``models``, ``attacks`` and ``data`` are required.
FIELDS = ("name", "version", "title", "source", "description", "notes", "models", "settings",
          "attacks", "evaluation", "data", "headline", "claims", "quick")
_MODEL_FIELDS = ("key", "dataset", "arch", "activation", "classes", "loss", "output_activation",
                 "temperature", "model_kwargs", "n_train", "train", "grid", "attack_seeds",
                 "surrogate")
_QUICK_FIELDS = ("n", "epochs", "n_train", "models", "settings", "eps_grid")
#: The version of a cell's record: a new one re-derives stored cells from their run folders
#: (which resume: nothing is attacked again). 2: the evaluation's seconds are its work only;
#: 3: so are the paper attacks' (from the tables, not this run's clock); 4: ρ on normalized
#: inputs too, and a targeted entry's success is reaching its target.
CELL_RECORD = 4
#: The 2-class tasks' evaluation is robustact's default too; a paper may name another.
_DEFAULT_EVALUATION = {"protocol": "standard"}


def paper_names() -> list[str]:
    """The shipped papers' names (``jumprelu``, ...), from the package's files."""
    files = resources.files(shipped_papers).iterdir()
    return sorted({f.name.partition("@")[0] for f in files if f.name.endswith(".json")})


def _shipped_file(name: str) -> tuple[str, Any]:
    base, _, version = name.partition("@")
    files = {f.name: f for f in resources.files(shipped_papers).iterdir()
             if f.name.startswith(f"{base}@") and f.name.endswith(".json")}
    if not files:
        raise ValueError(f"no paper named {name!r}; shipped: {', '.join(paper_names())} (or "
                         "give the path of a paper file)")
    if version:
        if f"{name}.json" not in files:
            raise ValueError(f"paper {base!r} has no version {version}; shipped: "
                             f"{', '.join(sorted(f.removesuffix('.json') for f in files))}")
        return f"{name}.json", files[f"{name}.json"]
    last = max(files, key=lambda f: int(f.removesuffix(".json").partition("@")[2]))
    return last, files[last]


def load_paper(paper: str | os.PathLike[str] | Mapping[str, Any]) -> dict[str, Any]:
    """A checked copy of a paper: a shipped name (``"jumprelu"``, ``"jumprelu@1"``), a file's
    path or a dict of its fields; its grids expanded into one model spec per model. Bad input:
    one ValueError line naming the file and the field."""
    if isinstance(paper, Mapping):
        raw, where = copy.deepcopy(dict(paper)), f"paper {paper.get('name', '?')!r}"
    else:
        text = str(paper)
        if isinstance(paper, os.PathLike) or text.endswith(".json") or os.sep in text:
            path = Path(paper)
            if not path.is_file():
                raise ValueError(f"paper file {path} does not exist")
            where, body = f"paper file {path}", path.read_text(encoding="utf-8")
        else:
            fname, res = _shipped_file(text)
            where, body = f"shipped paper {fname}", res.read_text(encoding="utf-8")
        try:
            raw = json.loads(body)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: not JSON ({err.msg} at line {err.lineno})") from None
    return _check_paper(raw, where)


def _need(cond: bool, where: str, text: str) -> None:
    if not cond:
        raise ValueError(f"{where}: {text}")


def _check_paper(raw: Any, where: str) -> dict[str, Any]:
    _need(isinstance(raw, dict), where, "a paper file must be a JSON object")
    unknown = sorted(set(raw) - set(FIELDS))
    _need(not unknown, where, f"unknown field(s) {unknown}; a paper file has {', '.join(FIELDS)}")
    for f in ("name", "models", "attacks", "data"):
        _need(f in raw, where, f"needs the field {f!r}")
    _need(isinstance(raw["name"], str) and raw["name"].strip() != "" and "@" not in raw["name"],
          where, f"'name' must be a non-empty string without '@', got {raw['name']!r}")
    models = _expand_models(raw["models"], where)
    keys = [m["key"] for m in models]
    _need(len(set(keys)) == len(keys), where, f"model keys must be unique, got {keys}")
    stray = sorted({m["surrogate"] for m in models if "surrogate" in m} - set(keys))
    _need(not stray, where, f"surrogate models {stray} are not among the models")
    settings = raw.get("settings") or [{"key": "none", "defenses": []}]
    for s in settings:
        _need(isinstance(s, dict) and isinstance(s.get("key"), str)
              and isinstance(s.get("defenses", []), list), where,
              f"a setting is {{'key': str, 'defenses': [...]}}, got {s!r}")
        stray = sorted(set(s.get("models", keys)) - set(keys))
        _need(not stray, where, f"setting {s['key']!r} names unknown models {stray}")
    attacks = raw["attacks"]
    eps = attacks.get("eps") if isinstance(attacks, dict) else None
    _need(isinstance(eps, (int, float)) or (
        isinstance(eps, dict) and all(isinstance(v, (int, float)) for v in eps.values())
        and {m["dataset"] for m in models} <= set(eps)), where,
          "'attacks' needs 'eps' (the paper's main budget, [0, 1] pixel units; a number, or "
          "one per dataset of the models) and 'entries'")
    for e in attacks.get("entries", []):
        ds = e.get("datasets", []) if isinstance(e, dict) else []
        _need(isinstance(ds, list) and all(isinstance(d, str) for d in ds), where,
              f"entry {e.get('key')!r}: 'datasets' is a list of dataset names, got {ds!r}")
    for ds in sorted({m["dataset"] for m in models}):
        for norm in attacks.get("norms", ["linf"]):  # the engine's own checks, per dataset
            get_protocol(_paper_protocol(raw["name"], _attacks_for(attacks, ds), norm))
    quick = raw.get("quick", {})
    _need(isinstance(quick, dict) and not set(quick) - set(_QUICK_FIELDS), where,
          f"'quick' takes {', '.join(_QUICK_FIELDS)}, got {quick!r}")
    data = raw["data"]
    _need(isinstance(data, dict) and isinstance(data.get("n"), int) and data["n"] > 0, where,
          "'data' needs 'n', the number of images evaluated")
    return {"version": 1, "title": "", "source": "", "description": "", "notes": [],
            "evaluation": dict(_DEFAULT_EVALUATION), "headline": None, "claims": [],
            **raw, "models": models, "settings": settings, "quick": quick}


def _expand_models(models: Any, where: str) -> list[dict[str, Any]]:
    """One spec per model: a spec with a ``grid`` becomes the product of its values."""
    _need(isinstance(models, list) and bool(models), where, "'models' must be a non-empty list")
    out = []
    for m in models:
        _need(isinstance(m, dict) and {"key", "dataset", "arch"} <= set(m), where,
              f"a model needs 'key', 'dataset' and 'arch', got {m!r}")
        unknown = sorted(set(m) - set(_MODEL_FIELDS))
        _need(not unknown, where, f"model {m['key']!r}: unknown field(s) {unknown}")
        grid = m.get("grid") or {}
        names = list(grid)
        for values in itertools.product(*(grid[k] for k in names)):
            one = {k: v for k, v in m.items() if k not in ("grid", "attack_seeds")}
            chosen = dict(zip(names, values, strict=True))
            one["train"] = dict(m.get("train", {}))
            for k, v in chosen.items():
                if k == "seed":
                    one["train"]["seed"] = v
                else:
                    one[k] = v
            try:
                TrainConfig(**one["train"])  # a bad schedule fails here, not after training
            except (TypeError, ValueError) as err:
                raise ValueError(f"{where}: model {m['key']!r}: train: {err}") from None
            one["key"] = m["key"].format(**chosen)
            if "surrogate" in m:
                one["surrogate"] = m["surrogate"].format(**chosen)
            one["group"] = m["key"].replace("-s{seed}", "").format(**chosen)
            seed = one["train"].get("seed", 1)
            one["attacked"] = seed in m.get("attack_seeds", [seed])
            out.append(one)
    return out


def _attacks_for(attacks: Mapping[str, Any], dataset: str) -> dict[str, Any]:
    """The paper's attacks on one dataset: its main ε (``eps`` may be one per dataset) and the
    entries whose ``datasets`` (if any) name it, without that field. Why per dataset: a paper's
    budgets and attack settings differ by dataset (the JumpReLU paper's I-FGSM runs 40
    iterations on MNIST, 7 on CIFAR-10), and a cell's key is what ran on its own dataset, so
    adding another dataset's entries reruns nothing."""
    entries = [{k: v for k, v in e.items() if k != "datasets"}
               for e in attacks.get("entries", []) if dataset in e.get("datasets", [dataset])]
    eps = attacks["eps"]
    return {**attacks, "eps": eps[dataset] if isinstance(eps, dict) else eps, "entries": entries}


def _paper_protocol(name: str, attacks: Mapping[str, Any], norm: str) -> dict[str, Any]:
    """The paper's attacks as an evaluation protocol for one norm (no adaptive entries: the
    paper's own protocol; robustact's evaluation is the other column)."""
    entries = [{k: v for k, v in e.items() if k != "defended_only"}
               for e in attacks.get("entries", [])]
    return {"name": f"paper-{name}-{norm}", "version": 1, "adaptive": "none",
            "eps_grid": attacks.get("eps_grid", [1]), "entries": entries}


def _quick(paper: dict[str, Any]) -> dict[str, Any]:
    """The paper with its ``quick`` settings: fewer images, epochs, training images, models."""
    q = paper["quick"]
    p = copy.deepcopy(paper)
    p["data"]["n"] = min(p["data"]["n"], q.get("n", 64))
    if q.get("models") is not None:
        p["models"] = _keep_models(p["models"], set(q["models"]))
    for m in p["models"]:
        m["train"]["epochs"] = min(m["train"].get("epochs", 10), q.get("epochs", 1))
        m["train"]["milestones"] = [x for x in m["train"].get("milestones", [])
                                    if x < m["train"]["epochs"]]
        if q.get("n_train"):
            m["n_train"] = min(m.get("n_train") or q["n_train"], q["n_train"])
    if q.get("settings") is not None:
        p["settings"] = [s for s in p["settings"] if s["key"] in q["settings"]]
    if q.get("eps_grid") is not None:
        p["attacks"]["eps_grid"] = q["eps_grid"]
    return p


def _keep_models(models: list[dict[str, Any]], keep: set[str]) -> list[dict[str, Any]]:
    """The models in ``keep`` and the models they transfer from, in file order."""
    keep = keep | {m["surrogate"] for m in models if m["key"] in keep and m.get("surrogate")}
    return [m for m in models if m["key"] in keep]


def paper_as_run(paper: str | os.PathLike[str] | Mapping[str, Any], *, quick: bool = False,
                 dataset: str | None = None, only: list[str] | None = None,
                 epochs: int | None = None, n: int | None = None
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The paper as :func:`reproduce` runs it with these options (its quick settings, its
    ``dataset`` models, ``only``'s models, cut to ``epochs`` and ``n``); and what was left out
    or cut, for the report."""
    p = load_paper(paper)
    p = _quick(p) if quick else copy.deepcopy(p)
    reduced: dict[str, Any] = {}
    if dataset is not None:
        p["models"] = [m for m in p["models"] if m["dataset"] == dataset]
        if not p["models"]:
            raise ValueError(f"{p['name']} has no {dataset} model")
        reduced["dataset"] = dataset
    if only:
        keys = [m["key"] for m in p["models"]]
        # a value that is a model's key picks that model; any other picks the keys holding it
        keep = {k for o in only for k in ([o] if o in keys else [k for k in keys if o in k])}
        if not keep:
            raise ValueError(f"--only {', '.join(only)} matches no model of {p['name']} "
                             f"({', '.join(m['key'] for m in p['models'])})")
        p["models"] = _keep_models(p["models"], keep)
        reduced["models"] = sorted(m["key"] for m in p["models"])
    if epochs is not None:
        for m in p["models"]:
            full = m["train"].get("epochs", 10)
            if epochs < full:
                m["train"]["epochs"] = epochs
                m["train"]["milestones"] = sorted({max(1, round(x * epochs / full))
                                                   for x in m["train"].get("milestones", [])
                                                   if round(x * epochs / full) < epochs})
                reduced["epochs"] = epochs
    if n is not None and n < p["data"]["n"]:
        p["data"]["n"] = n
        reduced["n"] = n
    return p, reduced


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _model(spec: Mapping[str, Any], out: Path, *, data_root: Any, device: str, progress: bool,
           download: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """The trained model of ``spec``: loaded when its folder holds it, else trained there (an
    interrupted training resumes). The folder is named by the spec's digest, so an edited spec
    trains a new model instead of reusing an old one."""
    recipe = {k: v for k, v in spec.items() if k not in ("group", "attacked")}
    folder = out / "models" / f"{spec['key']}-{_digest(recipe)}"
    final = folder / "final" / "card.json"
    if not final.is_file():
        cfg = TrainConfig(**{**spec.get("train", {}), "device": device})
        train_classifier(spec["arch"], spec["dataset"], out_dir=folder, config=cfg,
                         activation=spec.get("activation", "relu"), data_root=data_root,
                         classes=_classes(spec), loss=spec.get("loss", "ce"),
                         output_activation=spec.get("output_activation"),
                         temperature=spec.get("temperature", 1.0),
                         resume=(folder / "train" / "last" / "card.json").is_file(),
                         progress=progress, model_kwargs=spec.get("model_kwargs"),
                         n_train=spec.get("n_train"), download=download)
        atomic_write_json(folder / "spec.json", recipe)
    model, card = load_checkpoint(folder / "final", device=device)
    metrics = card.get("metrics") or {}
    return model.eval(), {"key": spec["key"], "group": spec.get("group", spec["key"]),
                          "dataset": spec["dataset"], "folder": str(folder),
                          "test_accuracy": metrics.get("test_accuracy"),
                          "train_accuracy": metrics.get("train_accuracy"),
                          "train_seconds": metrics.get("seconds"),
                          "epochs": metrics.get("epochs"), "attacked": spec.get("attacked", True)}


def _classes(spec: Mapping[str, Any]) -> tuple[str | int, str | int] | None:
    return tuple(spec["classes"]) if spec.get("classes") else None  # type: ignore[return-value]


def _splits(spec: Mapping[str, Any], data_root: Any) -> tuple[Any, Any, Any]:
    """(train, val, test) as the model was trained on them (its seed, classes and subset)."""
    return load_splits(spec["dataset"], data_root=data_root, classes=_classes(spec),
                       seed=spec.get("train", {}).get("seed", 1), n_train=spec.get("n_train"))


def _images(ds: Any, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` images of ``ds`` as floats in [0, 1], and their labels."""
    x, y = as_tensors(ds.subset(torch.arange(min(n, len(ds)))), "data")
    return to_float(x), y


def _metrics(table: Any, x: torch.Tensor, norm: str, dataset: str) -> list[dict[str, Any]]:
    """Per (attack, ε): accuracy under it alone, success among the clean-correct, the share of
    attacked points whose input gradient was exactly zero, and for an unbudgeted attack the
    relative perturbation ρ = mean ‖δ‖/‖x‖ over the points it broke (the JumpReLU paper's), in
    pixels and, as that paper measures it, on the dataset's normalized inputs (x − μ)/σ:
    ‖δ‖/σ̄ over ‖(x − μ)/σ‖, exact for one channel; CIFAR-10's σ differ by at most 0.8 % from
    their mean. A targeted entry's success is reaching its target (the papers' targeted
    figure); its accuracy, like every other, counts any misclassification."""
    info = dataset_info(dataset)
    mu, sd = (torch.tensor(v, dtype=x.dtype).view(1, -1, 1, 1) for v in (info.mean, info.std))
    xnorm = lp_norms(x, norm).numpy()
    xnorm_n = (lp_norms((x - mu) / sd, norm).numpy()
               if x.dim() == 4 and x.shape[1] == mu.shape[1] else None)
    att, eps, ok = table["attack"], table["eps"], table["clean_correct"]
    specs = table.meta.get("attacks", {})
    rows = []
    for key in dict.fromkeys(att.tolist()):
        for e in sorted(set(eps[att == key].tolist())):
            m = (att == key) & (eps == e)
            cc, succ = ok[m], table["success"][m] & ok[m]
            hit = succ
            if specs.get(key, {}).get("target"):
                aim = target_classes(specs[key]["target"], torch.from_numpy(table["label"][m]),
                                     torch.from_numpy(table["sample"][m]),
                                     int(table.meta["num_classes"]), int(table.meta["seed"]))
                hit = succ & (table["pred"][m] == aim.numpy())
            row: dict[str, Any] = {
                "attack": key, "norm": norm, "eps": None if math.isinf(e) else float(e),
                "n": int(m.sum()), "clean": float(cc.mean()),
                "accuracy": float((cc & ~succ).mean()),
                "success_rate": float(hit.sum() / max(int(cc.sum()), 1)),
                "grad_zero": float(table["grad_zero"][m][cc].mean()) if cc.any() else None}
            if math.isinf(e) and succ.any():
                d, at = table[norm][m][succ], table["sample"][m][succ]
                row["rho"] = float((d / np.maximum(xnorm[at], 1e-12)).mean())
                if xnorm_n is not None:
                    d_n = d / float(sd.mean())
                    row["rho_normalized"] = float((d_n / np.maximum(xnorm_n[at], 1e-12)).mean())
            rows.append(row)
    return rows


def _run_cell(paper: Mapping[str, Any], model: nn.Module, minfo: Mapping[str, Any],
              spec: Mapping[str, Any], setting: Mapping[str, Any], split: str, folder: Path,
              *, data_root: Any, progress: bool, quick: bool,
              surrogate: nn.Module | None = None) -> dict[str, Any]:
    """One (model, setting, split): the paper's attacks per norm, then robustact's evaluation."""
    train, val, test = _splits(spec, data_root)
    x, y = _images(test if split == "test" else train, paper["data"]["n"])
    defenses, tuned = _defenses(model, setting, val)
    if isinstance(model, OutputActivationModel) and any(
            d["type"] == "output_activation" for d in defenses):
        model = model.base  # the setting's f and T replace the trained ones (robustact defend)
    defended = apply_defenses(model, defenses).eval()
    clean = predict(defended, (x, y))
    attacks = _attacks_for(paper["attacks"], spec["dataset"])
    if not defenses:
        attacks["entries"] = [e for e in attacks["entries"] if not e.get("defended_only")]
    rows: list[dict[str, Any]] = []
    paper_seconds = 0.0  # the attacks' own seconds, from the tables: the same on a rerun
    for norm in attacks.get("norms", ["linf"]):
        proto = _paper_protocol(paper["name"], attacks, norm)
        if not any(norm in e.get("norms", [norm]) for e in proto["entries"]):
            continue
        table = evaluate(defended, x, y, proto, eps=float(attacks["eps"]), norm=norm,
                         out=str(folder / f"paper-{norm}"), progress=progress,
                         surrogate=surrogate)
        rows += _metrics(table, x, norm, spec["dataset"])
        paper_seconds += float(table["seconds"].sum())
    ev = paper.get("evaluation") or {}
    by = ev.get("eps") or {}
    eps = by.get(spec["key"], by.get(minfo["group"], by.get(spec["dataset"], attacks["eps"])))
    s = evaluate_model(defended, (x, y), dataset=spec["dataset"],
                       name=f"{paper['name']}/{minfo['key']}/{setting['key']}/{split}",
                       protocol=ev.get("protocol", "standard"), eps=float(eps),
                       out=folder / "strongest", progress=progress, allow_chance=True,
                       overrides=ev.get("overrides"),
                       info={"reproduction": paper["name"], "quick": quick})
    return {"model": minfo["key"], "group": minfo["group"], "setting": setting["key"],
            "split": split, "defenses": defenses, "tuning": tuned, "n": int(x.shape[0]),
            "clean_accuracy": float(clean.correct.float().mean()),
            "tie_rate": float(clean.tied.float().mean()), "paper": rows,
            "paper_seconds": paper_seconds,
            "strongest": {"protocol": s["protocol"], "eps": s["eps"],
                          "robust_accuracy": s["robust_accuracy"],
                          "robust_accuracy_ci": s.get("robust_accuracy_ci"),
                          "verdict": s["verdict"]["label"],
                          "report": str(Path(s["out"]) / "report.html"),
                          # the attacks' and the audit's work, whichever run did it
                          "seconds": float(s["seconds"].get("attacks") or 0)
                          + float(s["seconds"].get("audit") or 0)}}


def _what_ran(key: Mapping[str, Any]) -> dict[str, Any]:
    """A cell key without the record's and robustact's versions."""
    return {k: v for k, v in key.items() if k not in ("version", "record")}


def _clear_stale(folder: Path, old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    """A finished cell whose key changed (the paper file was edited): its run folders were made
    for other attacks, a model or a setting, and the engine refuses to resume another
    evaluation, so they go; the model's training is keyed separately and stays. Where only the
    paper's attacks changed (not their ε, which robustact's evaluation may take), robustact's
    evaluation is the same and stays, to be read back instead of run again."""
    changed = {k for k in set(old) | set(new) if k != "attacks" and old.get(k) != new.get(k)}
    eps = [(key.get("attacks") or {}).get("eps") for key in (old, new)]
    keep = not changed and eps[0] == eps[1]
    for sub in [*folder.glob("paper-*"), *([] if keep else [folder / "strongest"])]:
        if sub.is_dir():
            shutil.rmtree(sub)


def _defenses(model: nn.Module, setting: Mapping[str, Any], val: Any
              ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The setting's defenses; ``"tune": {"grid": [...], "max_drop": 1.0}`` picks JumpReLU's κ
    on the model's validation split as the paper does (the largest κ within the drop)."""
    tune = setting.get("tune")
    if not tune:
        return list(setting.get("defenses", [])), None
    x_val, y_val = as_tensors(val, "validation split")
    t = tune_jumprelu(model, to_float(x_val), y_val, grid=tune["grid"],
                      max_drop=float(tune.get("max_drop", 1.0)), progress=False)
    return [{"type": "jumprelu", "kappa": t.kappa}], t.to_dict()


def _cells(paper: Mapping[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any], str]]:
    """(model spec, setting, split) for every attacked model, in file order."""
    return [(m, s, split) for m in paper["models"] if m.get("attacked", True)
            for s in paper["settings"] if m["key"] in s.get("models", [m["key"]])
            for split in paper["data"].get("splits", ["test"])]


def reproduce(paper: str | os.PathLike[str] | Mapping[str, Any], *, out: str | Path,
              quick: bool = False, data_root: str | Path | None = None, device: str = "cpu",
              progress: bool = True, command: str | None = None, download: bool = False,
              dataset: str | None = None, only: list[str] | None = None,
              epochs: int | None = None, n: int | None = None) -> dict[str, Any]:
    """Run ``paper`` into ``out``: train (or load) its models, run every cell, write
    ``results.json``, ``report.md``, ``report.html`` and the figures. Rerunning with the same
    ``out`` resumes: trained models, finished cells and finished attack cells are read back.

    ``dataset``: only the models on this dataset (e.g. a paper's MNIST part), in full settings.
    ``only``: the models whose key is one of these, or else contains it (and the models they
    transfer from).
    ``epochs``, ``n``: reduced settings (at most that many epochs, schedule milestones scaled;
    that many images), recorded and shown as such in the report.
    """
    t0 = time.perf_counter()
    device = str(resolve_device(device))  # "auto" named: the report says what ran
    p, reduced = paper_as_run(paper, quick=quick, dataset=dataset, only=only, epochs=epochs, n=n)
    out = Path(out)
    models: dict[str, tuple[nn.Module, dict[str, Any]]] = {}
    for spec in tqdm(p["models"], desc="models", unit="model", disable=not progress):
        models[spec["key"]] = _model(spec, out, data_root=data_root, device=device,
                                     progress=progress, download=download)
    cells = []
    todo = _cells(p)
    bar = tqdm(todo, desc="cells", unit="cell", disable=not progress)
    for i, (spec, setting, split) in enumerate(bar):
        bar.set_postfix_str(f"{spec['key']} / {setting['key']} / {split} ({i + 1}/{len(todo)})")
        model, minfo = models[spec["key"]]
        folder = out / "cells" / spec["key"] / setting["key"] / split
        key = json.loads(json.dumps({  # in JSON types, as cell.json stores it
            "model": minfo["folder"], "attacks": _attacks_for(p["attacks"], spec["dataset"]),
            "setting": {k: v for k, v in setting.items() if k != "models"},
            "surrogate": spec.get("surrogate"), "evaluation": p["evaluation"],
            "n": p["data"]["n"], "version": __version__, "record": CELL_RECORD}, default=str))
        stored = read_json(folder / "cell.json") if (folder / "cell.json").is_file() else None
        if stored is None or stored.get("key") != key:
            if stored is not None and _what_ran(stored["key"]) != _what_ran(key):
                # not a new record format (that resumes): other work
                _clear_stale(folder, _what_ran(stored["key"]), _what_ran(key))
            sur = models[spec["surrogate"]][0] if spec.get("surrogate") else None
            cell = _run_cell(p, model, minfo, spec, setting, split, folder, data_root=data_root,
                             progress=progress, quick=quick, surrogate=sur)
            atomic_write_json(folder / "cell.json", {"key": key, "cell": cell})
            stored = read_json(folder / "cell.json")
        cells.append(stored["cell"])
    record = {"format": "robustact-reproduction", "format_version": 1,
              "paper": {k: p[k] for k in ("name", "version", "title", "source", "description",
                                          "notes")},
              "quick": quick, "reduced": reduced, "command": command,
              "environment": environment_info(),
              "device": device, "data": p["data"], "attacks": p["attacks"],
              "evaluation": p["evaluation"], "headline": p["headline"],
              "models": [m[1] for m in models.values()], "cells": cells,
              "claims": _claims(p, cells), "seconds": time.perf_counter() - t0,
              # what the work took, whichever invocation did it (a rerun only re-renders)
              "work_seconds": {
                  "training": sum(m[1]["train_seconds"] or 0 for m in models.values()),
                  "cells": sum(c["paper_seconds"] + c["strongest"]["seconds"] for c in cells)}}
    record["views"] = {k: str(v) for k, v in write_reproduction_views(out, record).items()}
    atomic_write_json(out / "results.json", record)
    return record


def _claims(p: Mapping[str, Any], cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each claim with the figure measured for it (None when its cell did not run)."""
    out = []
    for c in p["claims"]:
        found = None
        for cell in cells:
            if (cell["group"], cell["setting"]) != (c["model"], c["setting"]) and (
                    cell["model"], cell["setting"]) != (c["model"], c["setting"]):
                continue
            if c["metric"] == "clean_accuracy":
                found = cell["clean_accuracy"]
            for r in cell["paper"]:
                if r["attack"] == c.get("attack") and same_eps(r["eps"], c.get("eps")):
                    found = r.get(c["metric"])
        measured = None if found is None else 100 * found
        out.append({**c, "measured": measured,
                    "difference": None if measured is None else measured - c["value"]})
    return out
