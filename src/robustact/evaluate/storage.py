"""The results table on disk: a run folder, appendable cell by cell, loadable with one call.

Format (``format_version`` 1), chosen so a killed evaluation resumes where it stopped and so the
files are readable without robustact (safetensors + JSON; never pickle)::

    out/
      table.json              manifest: format, meta (protocol, model, data, attacks, seed,
                              versions, ...), fingerprint, and the list of finished cells
      clean.safetensors       per evaluated sample: sample, label, clean_pred, clean_correct,
                              x_linf, x_l2 (‖x‖ in each norm, for the relative norm ρ)
      cells/0000.safetensors  one file per finished (attack, ε) cell: every numeric column of
      cells/0001.safetensors  robustact.evaluate.table.COLUMNS as a 1-D tensor (bool, int64,
      ...                     float32/float64); the string columns ``attack`` and ``norm`` are
                              constant per cell and stored in the manifest's cell entry
      cells/0003.adv.safetensors  for cells at the main ε: ``sample`` (ids of the points the
                              cell broke) and ``x_adv`` (their adversarial examples, in the
                              model's input dtype); :func:`load_adversarial` gathers them

A cell entry is ``{"attack", "eps", "norm", "file", "rows", "seconds", "mismatch"}`` (``eps`` may
be ``Infinity`` in the JSON for minimum-norm and unbounded cells). Every file is written
atomically (:mod:`robustact.core.storage`): first the cell's file, then the manifest naming it,
so a cell is finished exactly when the manifest lists it; a cell file the manifest does not list
(killed in between) is ignored and rewritten. Resuming a folder made with a different protocol,
model, data, norm, ε grid or seed is refused with one line (:class:`ResultsFolderMismatch`).

Loading for analysis: ``load_table(out)`` returns the :class:`~robustact.evaluate.table.
ResultsTable` (``meta["clean"]`` holds the per-sample clean arrays). Without robustact::

    import json, safetensors.numpy as st
    man = json.load(open("out/table.json"))
    cells = [st.load_file("out/" + c["file"]) | {"attack": c["attack"]} for c in man["cells"]]
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustact.core.runfolder import RunRefused
from robustact.core.storage import atomic_write_json, load_tensors, read_json, save_tensors
from robustact.evaluate.table import COLUMNS, ResultsTable

__all__ = ["FORMAT", "FORMAT_VERSION", "ResultsFolderMismatch", "RunFolder", "jsonable",
           "load_adversarial", "load_table", "read_cell", "read_manifest"]

FORMAT = "robustact-results"
FORMAT_VERSION = 1
MANIFEST = "table.json"
CLEAN = "clean.safetensors"
_STRING_COLUMNS = ("attack", "norm")
CLEAN_FIELDS = ("sample", "label", "clean_pred", "clean_correct", "x_linf", "x_l2")


class ResultsFolderMismatch(RunRefused):
    """The folder holds results of a different evaluation (protocol, model, data, ...)."""


def _to_tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


def read_manifest(path: Path) -> dict[str, Any]:
    file = path / MANIFEST
    try:
        man = read_json(file)
    except FileNotFoundError:
        raise ValueError(f"{path} is not a results folder (no {MANIFEST})") from None
    except ValueError as e:
        raise ValueError(f"{file} is not valid JSON ({e})") from None
    if not isinstance(man, dict) or man.get("format") != FORMAT:
        raise ValueError(f"{file} is not a robustact results manifest")
    if man.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{file} has format version {man.get('format_version')}; this robustact "
                         f"reads version {FORMAT_VERSION}")
    return man


def read_cell(path: Path, cell: Mapping[str, Any]) -> ResultsTable:
    file = path / cell["file"]
    try:
        t = load_tensors(file)
    except (OSError, Exception) as e:  # safetensors raises its own error types
        raise ValueError(f"cannot read results cell {file}: {e}") from None
    n = int(cell["rows"])
    cols: dict[str, np.ndarray] = {}
    for c in COLUMNS:
        if c in _STRING_COLUMNS:
            cols[c] = np.full(n, cell[c], dtype=object)
        elif c not in t:
            raise ValueError(f"results cell {file} lacks column {c!r}")
        else:
            cols[c] = t[c].numpy()
    return ResultsTable(cols)


def load_table(path: str | os.PathLike[str]) -> ResultsTable:
    """Every finished cell of the results folder ``path`` as one table (meta from the manifest).

    ``meta["clean"]`` is a dict of per-sample numpy arrays (:data:`CLEAN_FIELDS`).
    """
    path = Path(path)
    man = read_manifest(path)
    meta = dict(man["meta"])
    if (path / CLEAN).exists():
        meta["clean"] = {k: v.numpy() for k, v in load_tensors(path / CLEAN).items()}
    return ResultsTable.concat([read_cell(path, c) for c in man["cells"]], meta)


#: What a fingerprint field meant before it was recorded: a folder written before robustact
#: could skip the adversarial examples kept them.
FINGERPRINT_DEFAULTS: dict[str, Any] = {"adversarial": True}


class RunFolder:
    """Writer side of a results folder: open (or create) it, list finished cells, add cells.

    ``fingerprint`` identifies the evaluation (protocol, model, data, norm, grid, seed): an
    existing folder with another fingerprint is refused, naming the first field that differs.
    """

    def __init__(self, path: str | os.PathLike[str], meta: Mapping[str, Any],
                 fingerprint: Mapping[str, Any]) -> None:
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"results folder {self.path} is a file")
        if (self.path / MANIFEST).exists():
            man = read_manifest(self.path)
            old = man.get("fingerprint", {})
            for k, v in fingerprint.items():
                there = old.get(k, FINGERPRINT_DEFAULTS.get(k))
                if there != jsonable(v):
                    raise ResultsFolderMismatch(
                        f"{self.path} holds results of a different evaluation ({k}: "
                        f"{there!r} there, {jsonable(v)!r} now); choose another output "
                        "folder or delete it to start over")
            self.manifest = man
        else:
            self.manifest = {"format": FORMAT, "format_version": FORMAT_VERSION,
                             "fingerprint": jsonable(dict(fingerprint)), "meta": dict(meta),
                             "cells": []}
        self.manifest["meta"] = {**self.manifest["meta"], **dict(meta)}

    def finished(self) -> dict[tuple[str, float], dict[str, Any]]:
        return {(c["attack"], float(c["eps"])): c for c in self.manifest["cells"]}

    def read(self, cell: Mapping[str, Any]) -> ResultsTable:
        return read_cell(self.path, cell)

    def write_clean(self, clean: Mapping[str, np.ndarray]) -> None:
        save_tensors(self.path / CLEAN, {k: _to_tensor(np.asarray(v)) for k, v in clean.items()})

    def add(self, table: ResultsTable, *, attack: str, eps: float, norm: str,
            seconds: float, mismatch: int,
            adversarial: Mapping[str, torch.Tensor] | None = None) -> None:
        """Write one finished cell (and the adversarial examples of the points it broke,
        ``{"sample", "x_adv"}``, if given), then the manifest that lists it (all atomic)."""
        i = len(self.manifest["cells"])
        file = f"cells/{i:04d}.safetensors"
        save_tensors(self.path / file, {c: _to_tensor(table[c]) for c in COLUMNS
                                        if c not in _STRING_COLUMNS})
        entry = {"attack": attack, "eps": float(eps), "norm": norm, "file": file,
                 "rows": len(table), "seconds": float(seconds), "mismatch": int(mismatch)}
        if adversarial is not None:
            entry["adversarial"] = f"cells/{i:04d}.adv.safetensors"
            save_tensors(self.path / entry["adversarial"],
                         {k: v.contiguous() for k, v in adversarial.items()})
        self.manifest["cells"].append(entry)
        self.save_manifest()

    def save_manifest(self) -> None:
        atomic_write_json(self.path / MANIFEST, self.manifest)


def jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return [jsonable(x) for x in v]
    if isinstance(v, list):
        return [jsonable(x) for x in v]
    if isinstance(v, dict):
        return {k: jsonable(x) for k, x in v.items()}
    return v


def load_adversarial(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The adversarial example of every point broken at the main ε, gathered from the cells.

    Returns ``{"sample": (M,) int64, "x_adv": (M, ...), "attack": [M names]}`` in sample
    order, one example per broken point: the one from the first attack of the cascade that
    broke it (each is a witness; the cascade only attacks a point until one breaks it). None
    when the run kept none (an older run folder, or no point broken).
    """
    folder = Path(path)
    man = read_manifest(folder)
    found: dict[int, tuple[torch.Tensor, str]] = {}
    for cell in man["cells"]:
        if "adversarial" not in cell:
            continue
        t = load_tensors(folder / cell["adversarial"])
        for sid, xa in zip(t["sample"].tolist(), t["x_adv"], strict=True):
            found.setdefault(int(sid), (xa, cell["attack"]))
    if not found:
        return None
    order = sorted(found)
    return {"sample": torch.tensor(order, dtype=torch.int64),
            "x_adv": torch.stack([found[i][0] for i in order]),
            "attack": [found[i][1] for i in order]}
