"""``robustact grid FILE``: many (model × evaluation) cells spread over ranks, each resumable.

A grid file (JSON) names models and evaluations; every pair is a cell, evaluated by
:func:`~robustact.runs.evaluate.evaluate_source` into ``OUT/cells/<model>--<evaluation>``::

    {"name": "mnist-zoo",
     "defaults": {"protocol": "standard", "n": 1000},          # optional, for every evaluation
     "models": {"lenet": {"checkpoint": "runs/train/lenet/final"},
                "mine":  {"model_file": "net.py:make", "weights": "w.safetensors",
                          "dataset": "mnist", "normalize": "0.1307/0.3081"}},
     "evaluations": {"std-0.1": {"eps": "0.1"}, "thorough-0.3": {"protocol": "thorough",
                                                                 "eps": "0.3"}}}

Why cells over ranks and not one process per model: the cells are independent, so shard ``i``
of ``N`` takes every cell whose index is ``i`` modulo ``N`` (the file's order, models outer),
under ``torchrun``/``srun`` with ``--shard auto`` or by hand with ``--shard i/N``. A cell is an
ordinary run folder: a finished one is skipped, an interrupted one resumes cell by cell (attack
× ε), so a grid killed on one node continues on another that sees ``OUT``. Whoever finds every
cell finished writes ``OUT/grid.json`` (one row per cell) and ``OUT/leaderboard.html``; under
``--shard auto`` rank 0 waits for the other ranks' cells to write them.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from robustact.core.budget import parse_budget
from robustact.core.runfolder import read_run
from robustact.core.storage import atomic_write_json, read_json
from robustact.core.validate import check_positive_int
from robustact.evaluate.protocols import get_protocol
from robustact.evaluate.shards import parse_shard, shard_from_env
from robustact.report.leaderboard import write_leaderboard
from robustact.runs.evaluate import evaluate_source
from robustact.runs.shards import wait_for_runs
from robustact.runs.sources import ModelSource

__all__ = ["GRID_FIELDS", "grid_cells", "load_grid", "run_grid"]

GRID_FIELDS = ("name", "defaults", "models", "evaluations")
MODEL_FIELDS = ("checkpoint", "model_file", "weights", "normalize", "factory_kwargs",
                "num_classes", "dataset")
EVALUATION_FIELDS = ("protocol", "eps", "norm", "n", "seed", "batch_size", "split", "audit")


def _fields(d: Any, allowed: tuple[str, ...], where: str) -> dict[str, Any]:
    if not isinstance(d, Mapping):
        raise ValueError(f"{where} must be an object")
    extra = sorted(set(d) - set(allowed))
    if extra:
        raise ValueError(f"{where}: unknown field{'s' if len(extra) > 1 else ''} "
                         f"{', '.join(extra)} (allowed: {', '.join(allowed)})")
    return dict(d)


def _key(name: str, where: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name) or "--" in name:
        raise ValueError(f"{where}: name {name!r} must be letters, digits, '.', '_' or '-' "
                         "(it names a folder; no '--')")
    return name


def load_grid(path: str | Path) -> dict[str, Any]:
    """The grid file, checked (one ValueError line naming the file and the field), with each
    evaluation as ``evaluate_source``'s options (ε text read)."""
    path = Path(path)
    try:
        grid = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"grid file {path} not found") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"grid file {path} is not JSON ({e})") from None
    grid = _fields(grid, GRID_FIELDS, f"grid file {path}")
    defaults = _fields(grid.get("defaults", {}), EVALUATION_FIELDS, f"{path}: defaults")
    for part in ("models", "evaluations"):
        if not isinstance(grid.get(part), Mapping) or not grid[part]:
            raise ValueError(f"{path}: '{part}' must name at least one entry")
    models = {_key(k, f"{path}: models"): _fields(v, MODEL_FIELDS, f"{path}: model {k!r}")
              for k, v in grid["models"].items()}
    evals = {_key(k, f"{path}: evaluations"): {**defaults, **_fields(
        v, EVALUATION_FIELDS, f"{path}: evaluation {k!r}")} for k, v in grid["evaluations"].items()}
    for k, m in models.items():
        _source(m, f"{path}: model {k!r}")
    evals = {k: _evaluation(e, f"{path}: evaluation {k!r}") for k, e in evals.items()}
    return {"name": grid.get("name", path.stem), "models": models, "evaluations": evals}


def _source(m: Mapping[str, Any], where: str) -> ModelSource:
    try:
        return ModelSource(**{k: v for k, v in m.items() if k != "dataset"})
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def _evaluation(e: Mapping[str, Any], where: str) -> dict[str, Any]:
    """evaluate_source's options from one evaluation entry (ε text read, protocol checked)."""
    out = dict(e)
    try:
        get_protocol(out.get("protocol", "standard"))
        if out.get("eps") is not None:
            out["eps"] = parse_budget(out["eps"], out.get("norm", "linf"))
        for k in ("n", "batch_size"):
            if k in out:
                check_positive_int(out[k], k)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    return out


def grid_cells(grid: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(cell key, model key, evaluation key), models outer: the order ranks split."""
    return [(f"{m}--{e}", m, e) for m in grid["models"] for e in grid["evaluations"]]


def _finished(folder: Path) -> bool:
    rec = read_run(folder)
    return rec is not None and rec.get("status") == "finished"


def _run_cell(grid: Mapping[str, Any], m: str, e: str, folder: Path, options: dict[str, Any]
              ) -> None:
    model = grid["models"][m]  # both checked (and ε read) by load_grid
    evaluate_source(_source(model, f"model {m!r}"), dataset=model.get("dataset"), out=folder,
                    **grid["evaluations"][e], **options)


def _summary(out: Path, grid: Mapping[str, Any]) -> dict[str, Any]:
    """``OUT/grid.json`` and ``OUT/leaderboard.html`` from the finished cells."""
    rows = []
    for key, m, e in grid_cells(grid):
        s = read_json(out / "cells" / key / "summary.json")
        rows.append({"cell": key, "model": m, "evaluation": e, "protocol": s["protocol"],
                     "eps": s["eps"], "norm": s["norm"], "n": s["n"],
                     "clean_accuracy": s["clean_accuracy"],
                     "robust_accuracy": s["robust_accuracy"],
                     "verdict": s["verdict"]["label"]})
    record = {"grid": grid["name"], "cells": rows}
    atomic_write_json(out / "grid.json", record)
    write_leaderboard(out / "leaderboard.html", [out / "cells" / r["cell"] for r in rows],
                      allow_mixed=True, title=f"robustact grid {grid['name']}")
    return record


def run_grid(path: str | Path, *, out: str | Path, shard: str | None = None,
             wait_s: float = 86400.0, **options: Any) -> dict[str, Any]:
    """Evaluate this rank's cells of the grid file ``path`` into ``out``; ``options`` go to
    every ``evaluate_source`` (data_root, device, progress, ...). Returns ``{"ran", "skipped",
    "summary"}``: the summary (grid.json's record) once every cell is finished, else None."""
    started = time.time()
    grid = load_grid(path)
    spec = parse_shard(shard) if shard not in (None, "auto") else None
    index, count = spec or (shard_from_env() if shard == "auto" else (0, 1))
    out = Path(out)
    cells = grid_cells(grid)
    ran, skipped = [], []
    for i, (key, m, e) in enumerate(cells):
        folder = out / "cells" / key
        if i % count != index:
            continue
        if _finished(folder):
            skipped.append(key)
            continue
        _run_cell(grid, m, e, folder, options)
        ran.append(key)
    folders = [out / "cells" / key for key, _, _ in cells]
    if shard == "auto" and index == 0:
        wait_for_runs(folders, [f"grid cell {k}" for k, _, _ in cells], timeout_s=wait_s,
                      then=f"rerun the grid command with --out {out}", since=started)
    summary = _summary(out, grid) if all(map(_finished, folders)) else None
    return {"ran": ran, "skipped": skipped, "summary": summary, "out": str(out),
            "shard": f"{index}/{count}"}
