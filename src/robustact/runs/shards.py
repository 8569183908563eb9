"""Sharded evaluation as library calls: ``evaluate --shard i/N``, ``--shard auto`` and ``merge``.

Layout: the shards of an evaluation into ``OUT`` live in ``OUT/shards/<i>-of-<N>``, each an
ordinary resumable run folder (``run.json``, ``table.json``, cells) of kind
``evaluate-shard``; the merge writes the evaluation itself into ``OUT``, exactly as one process
would (the engine's rules: :mod:`robustact.evaluate.shards`). A killed shard resumes by
rerunning its command, on any machine that sees ``OUT``.

- :func:`evaluate_shard`: one slice (a contiguous block of the first n images) into its folder;
  no audit and no report (those need every sample), a run record that holds everything the
  merge needs to rebuild the evaluation (model source, dataset, protocol, ε, seed, options).
- :func:`merge_shards`: reload the model and data the shards record, check the shards
  (:class:`~robustact.evaluate.shards.ShardSet`), and run :func:`evaluate_model` with them:
  their cells are joined, the deferred screens run, then the audit and the reports.
- :func:`evaluate_sharded`: under ``torchrun`` or ``srun`` (``--shard auto``): this rank's shard,
  then rank 0 waits for the others' ``run.json`` to say finished and merges.

Why files and not a collective barrier: the merge reads the shards from disk anyway, a shard
may be rerun later on another node, and polling needs no port or process group; a shard whose
run failed or was interrupted stops the wait with one line.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustact.core.runfolder import open_run, read_run
from robustact.evaluate import evaluate
from robustact.evaluate.shards import parse_shard, shard_from_env, shard_positions
from robustact.runs.evaluate import checked_inputs, evaluate_source, prepare_model
from robustact.runs.sources import ModelSource, load_target, recorded_source

__all__ = ["SHARD_KIND", "SHARDS_DIR", "evaluate_shard", "evaluate_sharded", "merge_shards",
           "resolve_shard", "shard_folder", "shard_folders", "wait_for_runs"]

log = logging.getLogger(__name__)

SHARDS_DIR = "shards"
SHARD_KIND = "evaluate-shard"
#: Seconds between two looks at the shards' run records while rank 0 waits.
POLL_S = 2.0


def shard_folder(out: str | Path, index: int, count: int) -> Path:
    return Path(out) / SHARDS_DIR / f"{index}-of-{count}"


def resolve_shard(spec: str | tuple[int, int]) -> tuple[int, int]:
    """``"i/N"``, ``"auto"`` (the launcher's rank and world size) or ``(i, N)``."""
    if isinstance(spec, tuple):
        return parse_shard(f"{spec[0]}/{spec[1]}") or (0, 1)
    return parse_shard(spec) or shard_from_env()


def _protocol_record(proto: Mapping[str, Any]) -> dict[str, Any]:
    """The protocol as data the merge can pass back to ``get_protocol`` (a user's file may
    have moved; its fields are what the fingerprint compares)."""
    return {k: v for k, v in proto.items() if k not in ("id", "overrides", "source")}


def evaluate_shard(model: nn.Module, data: Any, *, shard: str | tuple[int, int],
                   out: str | Path, dataset: str | None = None,
                   protocol: str | Path | Mapping[str, Any] = "standard",
                   eps: float | None = None, norm: str = "linf", batch_size: int = 256,
                   device: str | torch.device | None = None, seed: int = 0,
                   progress: bool = True, info: dict[str, Any] | None = None,
                   command: str | None = None, adaptive: bool = True,
                   overrides: dict[str, Any] | None = None, eot: int | None = None,
                   allow_chance: bool = False, keep_adversarial: bool = True,
                   split: str = "test") -> dict[str, Any]:
    """Evaluate shard ``i/N`` of ``data`` (all n images: the shard takes its block) into
    ``out/shards/i-of-N``; rerun to resume. Options as :func:`evaluate_model`'s, which the
    merge repeats from this folder's record."""
    index, count = resolve_shard(shard)
    proto, x, y, eps = checked_inputs(model, data, dataset, protocol, overrides, eps, norm)
    n = int(x.shape[0])
    pos = torch.from_numpy(shard_positions(n, index, count))
    xs, ys = x[pos], y[pos]
    model, _ = prepare_model(model, xs, ys, device, allow_chance, batch_size)
    config = {"shard": [index, count], "n": n, "dataset": dataset, "split": split,
              "source": info or {}, "protocol": _protocol_record(proto),
              "overrides": overrides or {}, "eps": eps, "norm": norm, "seed": seed,
              "batch_size": batch_size, "adaptive": adaptive, "eot": eot,
              "keep_adversarial": keep_adversarial, "allow_chance": allow_chance}
    folder = shard_folder(out, index, count)
    with open_run(folder, SHARD_KIND, what=f"evaluation shard {index}/{count}",
                  command=command, config=config) as run:
        t0 = time.perf_counter()
        table = evaluate(model, xs, ys, protocol, eps=eps, norm=norm, out=str(run.path),
                         batch_size=batch_size, seed=seed, progress=progress, sample_ids=pos,
                         meta={"dataset": dataset, "source": info or {}}, adaptive=adaptive,
                         overrides=overrides, locked=True, eot=eot,
                         keep_adversarial=keep_adversarial, shard=(index, count))
        result = {"shard": f"{index}/{count}", "samples": len(pos),
                  "cells": len(set(zip(table["attack"].tolist(), table["eps"].tolist(),
                                       strict=True))),
                  "seconds": time.perf_counter() - t0}
        run.finish(result)
    return {**result, "out": str(folder)}


def shard_folders(paths: Sequence[str | Path]) -> list[Path]:
    """Each path as given, or the shards inside it (``OUT`` → ``OUT/shards/*``)."""
    found: list[Path] = []
    for p in map(Path, paths):
        inner = p / SHARDS_DIR  # a shard folder never holds one
        if inner.is_dir():
            found.extend(sorted(q for q in inner.iterdir() if q.is_dir()))
        elif p.is_dir():
            found.append(p)
        else:
            raise ValueError(f"{p} is not a folder (give shard folders or the --out that holds "
                             f"{SHARDS_DIR}/)")
    if not found:
        raise ValueError(f"no shard folders in {', '.join(map(str, paths))}")
    return found


def _finished_records(folders: list[Path]) -> list[dict[str, Any]]:
    """The shards' run records; one line for a folder that is not a finished shard."""
    recs = []
    for f in folders:
        rec = read_run(f)
        if rec is None or rec.get("kind") != SHARD_KIND:
            raise ValueError(f"{f} is not an evaluation shard (no run.json of kind "
                             f"{SHARD_KIND}): give the folders `evaluate --shard` wrote")
        if rec.get("status") != "finished":
            raise ValueError(f"shard {f} did not finish (status: {rec.get('status')}): rerun its "
                             "command (same --shard and --out) to complete it, then merge")
        recs.append(rec)
    return recs


def _default_out(folders: list[Path]) -> Path:
    parents = {f.parent for f in folders}
    if len(parents) == 1 and next(iter(parents)).name == SHARDS_DIR:
        return next(iter(parents)).parent
    raise ValueError("the shards are not all in one OUT/shards/ folder: give --out for the "
                     "merged evaluation")


def merge_shards(paths: Sequence[str | Path], *, out: str | Path | None = None,
                 model: str | Path | None = None, model_file: str | None = None,
                 weights: str | Path | None = None, data_root: str | Path | None = None,
                 download: bool = False, device: str | torch.device = "auto",
                 progress: bool = True, audit: bool = True, force: bool = False,
                 audit_options: dict[str, Any] | None = None, command: str | None = None,
                 certify: bool = True) -> dict[str, Any]:
    """Join finished shards into one evaluation (default ``out``: the ``OUT`` holding them).

    The model and the data are reloaded from what the shards record (``model``/
    ``model_file``/``weights`` for a moved one); the engine refuses, in one line, shards of
    another model, protocol, ε, seed or robustact version, a missing shard, and data that are
    not the shards' images. Returns :func:`evaluate_model`'s summary.
    """
    folders = shard_folders(paths)
    cfg = _finished_records(folders)[0]["config"]
    where = folders[0]
    source: ModelSource = recorded_source(cfg.get("source") or {}, where, model, model_file,
                                          weights)
    return evaluate_source(
        source, dataset=cfg["dataset"], n=cfg["n"], data_root=data_root, download=download,
        device=device, split=cfg.get("split", "test"), protocol=cfg["protocol"],
        overrides=cfg.get("overrides") or None, eps=cfg["eps"], norm=cfg["norm"],
        seed=cfg["seed"], batch_size=cfg["batch_size"], adaptive=cfg["adaptive"],
        eot=cfg["eot"], keep_adversarial=cfg["keep_adversarial"],
        allow_chance=cfg.get("allow_chance", False), out=out or _default_out(folders),
        progress=progress, audit=audit, audit_options=audit_options, force=force,
        command=command, merge=folders, certify=certify)


def _ended_since(rec: Mapping[str, Any], since: float) -> bool:
    """The record's run failed or was interrupted after ``since`` (a Unix time): not a stale
    failure that another rank is about to resume."""
    if rec.get("status") not in ("failed", "interrupted"):
        return False
    try:
        return datetime.fromisoformat(str(rec.get("finished"))).timestamp() >= since - 1
    except ValueError:
        return True


def wait_for_runs(folders: Sequence[Path], names: Sequence[str], *, then: str,
                  timeout_s: float = 86400.0, poll_s: float = POLL_S,
                  since: float | None = None) -> None:
    """Block until every run folder's ``run.json`` says finished; one line when one failed or
    was interrupted after ``since`` (default: now; rerun it, ``then``), or the wait passed
    ``timeout_s``."""
    since = time.time() if since is None else since
    deadline = time.monotonic() + timeout_s
    waiting = list(zip(folders, names, strict=True))
    while waiting:
        left = []
        for folder, name in waiting:
            rec = read_run(folder) or {}
            if _ended_since(rec, since):
                raise ValueError(f"{name} {rec['status']} ({rec.get('error', '')}); rerun it, "
                                 f"then {then}")
            if rec.get("status") != "finished":
                left.append((folder, name))
        if left and time.monotonic() > deadline:
            raise TimeoutError(f"{', '.join(n for _, n in left)} did not finish within "
                               f"{timeout_s:.0f} s; when they have, {then}")
        if left and len(left) != len(waiting):
            log.info("waiting for %s", ", ".join(n for _, n in left))
        waiting = left
        if waiting:
            time.sleep(poll_s)


def evaluate_sharded(source: ModelSource, *, out: str | Path, shard: str = "auto",
                     dataset: str | None = None, n: int | None = 1000,
                     data_root: str | Path | None = None, download: bool = False,
                     device: str | torch.device = "auto", split: str = "test",
                     merge: bool = True, audit: bool = True, progress: bool = True,
                     audit_options: dict[str, Any] | None = None, command: str | None = None,
                     wait_s: float = 86400.0, certify: bool = True, **options: Any
                     ) -> dict[str, Any]:
    """This process's shard of the evaluation of ``source``. Under ``shard="auto"`` rank 0
    then waits for the others and merges into ``out`` (``merge=False``: leave that to
    ``robustact merge``, as for shards given by hand).
    Returns the merged summary on rank 0, the shard's record elsewhere."""
    index, count = resolve_shard(shard)
    started = time.time()
    if device == "auto" and torch.cuda.is_available():  # one GPU per process of the node
        local = int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0")))
        device = f"cuda:{local % torch.cuda.device_count()}"
    t = load_target(source, dataset=dataset, split=split, n=n, data_root=data_root,
                    download=download, device=device)
    done = evaluate_shard(t.model, t.data, shard=(index, count), out=out, dataset=t.dataset,
                          info={**t.info, "name": t.name}, command=command, split=split,
                          progress=progress, **options)
    if index != 0 or not merge or shard != "auto":  # i/N by hand: `robustact merge` joins
        return done
    wait_for_runs([shard_folder(out, i, count) for i in range(count)],
                  [f"shard {i}/{count}" for i in range(count)],
                  then=f"run `robustact merge {out}`", timeout_s=wait_s, since=started)
    return merge_shards([out], data_root=data_root, download=download, device=device,
                        progress=progress, audit=audit, audit_options=audit_options,
                        command=command, certify=certify)
