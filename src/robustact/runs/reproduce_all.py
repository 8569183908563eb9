"""Several reproductions at once: every shipped paper (or one dataset's part of each) into one
folder with a summary table, and the work of any reproduction spread over worker processes.

Why worker processes: the papers' MNIST models are small, and a small model keeps one core busy
with one torch thread better than two cores with two (the threads wait on each other), so two
processes on two cores finish sooner than one process with two threads. A reproduction splits
into independent *units*: a model together with the models it transfers from (a SPLASH seed's
ten activations share their ReLU source). Each unit is :func:`reproduce` restricted to those
models and writing into the paper's own folder, which is safe because every model and every
cell has a folder of its own and every file is written atomically. When all units are done, one
last :func:`reproduce` per paper finds every model trained and every cell finished, reads them
back and renders the whole report, which takes seconds.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Mapping
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from robustact.core.storage import atomic_write_json, read_json
from robustact.report.reproduction import write_summary
from robustact.runs.reproduce import load_paper, paper_as_run, paper_names, reproduce

__all__ = ["reproduce_all", "reproduce_many", "summarize", "units"]

Paper = str | os.PathLike[str] | Mapping[str, Any]
#: The options that decide which models and cells a reproduction holds: a unit must use the
#: same, or its models would not be the ones the last pass looks for.
_SELECTION = ("quick", "dataset", "only", "epochs", "n")


def units(paper: Mapping[str, Any]) -> list[list[str]]:
    """The model keys of ``paper`` (as run) in groups that can run at the same time: each model
    with the model it transfers from, following the chain; groups in file order."""
    source = {m["key"]: m.get("surrogate") for m in paper["models"]}

    def root(key: str) -> str:
        seen = {key}
        while source.get(key) and source[key] in source and source[key] not in seen:
            key = source[key]
            seen.add(key)
        return key

    groups: dict[str, list[str]] = {}
    for m in paper["models"]:
        groups.setdefault(root(m["key"]), []).append(m["key"])
    return list(groups.values())


def _set_threads(threads: int) -> None:
    torch.set_num_threads(threads)


def _unit(paper: Paper, out: Path, keys: list[str], kwargs: dict[str, Any]) -> None:
    """One unit in a worker: its models trained and its cells run (the report it writes is
    replaced by the last pass's)."""
    reproduce(paper, out=out, **{**kwargs, "only": keys, "progress": False})


def reproduce_many(targets: Mapping[Path, Paper], *, jobs: int = 1, threads: int | None = None,
                   progress: bool = True, **kwargs: Any) -> dict[Path, dict[str, Any]]:
    """:func:`reproduce` each paper into its folder (the keys), with ``jobs`` worker processes
    of ``threads`` torch threads each (default: this process's threads shared among them); the
    same results as one process, as every unit trains and attacks with its own seeds.

    Units are handed out in file order, so a paper whose first model is its longest finishes
    soonest; a failed unit stops nothing else and is raised once the others are done.
    """
    if jobs > 1:
        per = threads or max(1, torch.get_num_threads() // jobs)
        plan = [(paper, Path(folder), keys) for folder, paper in targets.items()
                for keys in units(paper_as_run(paper, **{k: kwargs[k] for k in _SELECTION
                                                         if k in kwargs})[0])]
        errors: list[tuple[str, BaseException]] = []
        bar = tqdm(total=len(plan), desc="units", unit="unit", disable=not progress)
        with ProcessPoolExecutor(max_workers=jobs, initializer=_set_threads, initargs=(per,),
                                 mp_context=multiprocessing.get_context("spawn")) as pool:
            running: dict[Future[None], str] = {
                pool.submit(_unit, paper, folder, keys, kwargs): f"{folder.name}: {keys[0]}"
                + (f" (+{len(keys) - 1})" if len(keys) > 1 else "")
                for paper, folder, keys in plan}
            for done in as_completed(running):
                bar.update()
                bar.set_postfix_str(f"done {running[done]}")
                exc = done.exception()
                if exc is not None:
                    errors.append((running[done], exc))
        bar.close()
        if errors:
            name, exc = errors[0]
            raise RuntimeError(f"{len(errors)} of {len(plan)} units failed; first, {name}: "
                               f"{exc}") from exc
    return {Path(folder): reproduce(paper, out=folder, progress=progress, **kwargs)
            for folder, paper in targets.items()}


def reproduce_all(*, out: str | Path, papers: Mapping[str, Paper] | None = None,
                  dataset: str | None = None, jobs: int = 1, threads: int | None = None,
                  **kwargs: Any) -> dict[str, Any]:
    """Every shipped paper (or ``papers``, by folder name) into ``out/<name>``, then one summary
    table of them all (``summary.md``: claimed vs paper protocol vs robustact, per cell, with
    the verdict and a link to each report). ``dataset``: each paper's models on that dataset
    in full settings (e.g. ``"mnist"``: all the MNIST parts), the papers without one skipped.
    ``jobs``, ``threads``: as :func:`reproduce_many`."""
    t0 = time.perf_counter()
    out = Path(out)
    papers = dict(papers) if papers is not None else {n: n for n in paper_names()}
    chosen = {name: p for name, p in papers.items()
              if dataset is None or any(m["dataset"] == dataset for m in load_paper(p)["models"])}
    done = reproduce_many({out / name: p for name, p in chosen.items()}, jobs=jobs,
                          threads=threads, dataset=dataset, **kwargs)
    records = {folder.name: rec for folder, rec in done.items()}
    run = {"command": kwargs.get("command"), "seconds": time.perf_counter() - t0, "jobs": jobs,
           "papers": sorted(records), "skipped": sorted(set(papers) - set(chosen))}
    atomic_write_json(out / "all.json", run)  # what the whole invocation took, for summarize
    path = write_summary(out, records, run=run)
    return {"records": records, "summary": str(path), **run}


def summarize(folder: str | Path) -> Path:
    """``folder/summary.md`` from the reproductions in its subfolders (each a ``results.json``
    written by :func:`reproduce`), without running anything; a subfolder that is itself a
    :func:`reproduce_all` folder (its own ``summary.md``) is linked, not repeated."""
    folder = Path(folder)
    records = {f.parent.name: read_json(f) for f in sorted(folder.glob("*/results.json"))}
    if not records:
        raise ValueError(f"{folder} holds no reproduction (no */results.json)")
    run = read_json(folder / "all.json") if (folder / "all.json").is_file() else None
    nested = [f.parent.name for f in sorted(folder.glob("*/summary.md"))]
    return write_summary(folder, records, run=run, nested=nested)
