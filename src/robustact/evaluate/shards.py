"""Shards of one evaluation: each process attacks a slice of the samples, a merge joins them.

Why this works exactly: every row of the results table is a function of its sample alone. The
attacks' randomness is keyed by the sample id (never the batch position or the rank), and the
cascade's ``on="survivors"`` rule asks only whether *this* sample was broken by an earlier
entry. So a shard's rows are the single-process rows of its samples, and merging is placing
them. One rule looks at the population instead: a *screen* (an entry with ``max_points``,
Square in ``standard``) attacks the ``max_points`` survivors whose id hashes lowest among *all*
survivors. A shard cannot know that set, so it defers its screens, and the merge runs them
once, on every shard's survivors, as one process would.

What a merge checks (one line each, naming the shard): every shard of ``0..N-1`` present once,
the same evaluation (protocol and its entries, model, norm, ε grid, seed, kept examples,
surrogate: the run folder fingerprint without its data field) and the same robustact version;
each shard's data fingerprint equal to that of its slice of the merged data; shards covering
every sample exactly once; each shard's clean predictions equal to the merge's. A randomized
model is refused: its EOT draws are keyed by batch, so shards would not merge to one table.

The cost columns ``forward``/``backward`` of attacks without per-sample instrumentation
(DeepFool, C&W, trust region: none in ``standard``) are their batch totals spread evenly, so
those two columns, and ``seconds``, depend on how samples were batched; every other column is
equal bit for bit.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustact.core.storage import load_tensors
from robustact.evaluate.fingerprints import data_fingerprint
from robustact.evaluate.storage import (
    CLEAN,
    ResultsFolderMismatch,
    jsonable,
    read_cell,
    read_manifest,
)
from robustact.evaluate.table import COLUMNS, ResultsTable

__all__ = ["RANDOMIZED", "ShardSet", "parse_shard", "shard_from_env", "shard_positions"]

#: Why a randomized model cannot be sharded, said when one is.
RANDOMIZED = ("a randomized model cannot be evaluated in shards: its EOT draws are keyed by "
              "batch, not by sample, so shards would not merge into the single-process table; "
              "evaluate it in one process (or with --eot 0)")
#: The fingerprint fields a shard and its merge share; ``data`` differs by design.
SHARED_FIELDS = ("protocol", "entries", "model", "norm", "eps_grid", "seed", "eot",
                 "adversarial", "surrogate")
#: (environment variable of the rank, of the world size) per launcher, checked in order.
LAUNCHERS = (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS"),
             ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"))


def parse_shard(spec: str) -> tuple[int, int] | None:
    """``"i/N"`` → (i, N) with 0 ≤ i < N; ``"auto"`` → None (read from the launcher)."""
    if spec == "auto":
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec)
    if not m or not 0 <= int(m[1]) < int(m[2]):
        raise ValueError(f"--shard must be i/N with 0 <= i < N (e.g. 0/4) or auto, got {spec!r}")
    return int(m[1]), int(m[2])


def shard_from_env(env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """(rank, world size) from ``torchrun`` (RANK, WORLD_SIZE), Slurm's ``srun`` (SLURM_PROCID,
    SLURM_NTASKS) or ``mpirun``; one line when no launcher set them."""
    env = os.environ if env is None else env
    for rank, size in LAUNCHERS:
        if rank in env and size in env:
            try:
                return parse_shard(f"{env[rank]}/{env[size]}") or (0, 1)
            except ValueError:
                raise ValueError(f"{rank}={env[rank]!r}, {size}={env[size]!r} do not name a "
                                 "shard (0 <= rank < size)") from None
    raise ValueError("--shard auto needs a launcher's rank and world size (torchrun sets RANK "
                     "and WORLD_SIZE, srun SLURM_PROCID and SLURM_NTASKS); outside one, give "
                     "--shard i/N")


def shard_positions(n: int, index: int, count: int) -> np.ndarray:
    """The positions of shard ``index`` of ``count`` among ``n`` samples: a contiguous block,
    sizes differing by at most one (so no shard waits on a bigger one)."""
    lo, hi = (index * n) // count, ((index + 1) * n) // count
    return np.arange(lo, hi, dtype=np.int64)


@dataclass
class _Shard:
    path: Path
    index: int
    count: int
    manifest: dict[str, Any]
    clean: dict[str, np.ndarray]  # clean.safetensors: sample ids in row order, predictions
    pos: np.ndarray | None = None  # the samples' positions among the merged ones (after bind)

    @property
    def name(self) -> str:
        return f"shard {self.index}/{self.count} ({self.path})"

    @property
    def sample(self) -> np.ndarray:
        return self.clean["sample"]

    @property
    def cells(self) -> dict[tuple[str, float], dict[str, Any]]:
        return {(c["attack"], float(c["eps"])): c for c in self.manifest["cells"]}


def _open(path: Path) -> _Shard:
    man = read_manifest(path)
    info = man["meta"].get("shard")
    if not isinstance(info, dict):
        raise ValueError(f"{path} is not a shard of an evaluation (evaluated without --shard)")
    try:
        clean = load_tensors(path / CLEAN)
    except (OSError, Exception) as e:  # safetensors raises its own error types
        raise ValueError(f"cannot read {path / CLEAN}: {e}") from None
    return _Shard(path, int(info["index"]), int(info["count"]), man,
                  {k: v.numpy() for k, v in clean.items()})


class ShardSet:
    """The finished shards of one evaluation, checked against each other; :meth:`bind` checks
    them against the merged data, :meth:`cell` gives a merged cell."""

    def __init__(self, paths: Sequence[str | os.PathLike[str]]) -> None:
        if not paths:
            raise ValueError("no shard folders to merge")
        shards = [_open(Path(p)) for p in paths]
        first = shards[0]
        for s in shards[1:]:
            _same_evaluation(first, s)
        seen: dict[int, _Shard] = {}
        for s in shards:
            if s.index in seen:
                raise ValueError(f"{s.name} is given twice (also {seen[s.index].path})")
            seen[s.index] = s
        missing = [i for i in range(first.count) if i not in seen]
        if missing:
            raise ValueError(f"shard{'s' if len(missing) > 1 else ''} "
                             f"{', '.join(f'{i}/{first.count}' for i in missing)} missing: "
                             f"found {', '.join(f'{i}/{first.count}' for i in sorted(seen))}")
        self.shards = [seen[i] for i in range(first.count)]
        self.fingerprint: dict[str, Any] = first.manifest["fingerprint"]
        self.version = _version(first)
        self.deferred = set(first.manifest["meta"]["shard"].get("deferred", []))

    def bind(self, fingerprint: Mapping[str, Any], x: torch.Tensor, y: torch.Tensor,
             ids: torch.Tensor, clean: Mapping[str, np.ndarray], version: str) -> None:
        """Check the shards are slices of this evaluation (same fingerprint, robustact version,
        data slices and clean predictions; every sample once) and map their rows."""
        for k in SHARED_FIELDS:
            if self.fingerprint.get(k) != jsonable(fingerprint.get(k)):
                raise ResultsFolderMismatch(
                    f"{self.shards[0].name} is a shard of a different evaluation ({k}: "
                    f"{self.fingerprint.get(k)!r} there, {jsonable(fingerprint.get(k))!r} now)")
        if self.version != version:
            raise ResultsFolderMismatch(f"the shards were made by robustact {self.version}, "
                                        f"this is {version}: rerun them with one version")
        all_ids = ids.cpu().numpy()
        order = np.argsort(all_ids, kind="stable")
        covered = np.zeros(len(all_ids), dtype=np.int64)
        for s in self.shards:
            at = np.searchsorted(all_ids, s.sample, sorter=order).clip(0, len(all_ids) - 1)
            pos = order[at]
            if not np.array_equal(all_ids[pos], s.sample):
                raise ValueError(f"{s.name} holds samples the merged data does not")
            p = torch.from_numpy(pos).to(x.device)
            if data_fingerprint(x[p], y[p], ids[p]) != s.manifest["fingerprint"].get("data"):
                raise ResultsFolderMismatch(f"{s.name} evaluated other images than its slice "
                                            "of the merged data (data fingerprint differs)")
            _same_clean(s, pos, clean)
            covered[pos] += 1
            s.pos = pos
        if (covered != 1).any():
            raise ValueError(f"the shards cover {int((covered == 0).sum())} samples not at all "
                             f"and {int((covered > 1).sum())} more than once")

    def cell(self, key: str, eps: float, n: int
             ) -> tuple[ResultsTable, int, float, dict[str, torch.Tensor] | None] | None:
        """The merged cell (rows in the merged order, mismatches, seconds, kept examples);
        None for a screen the shards deferred (the merge runs it)."""
        if key in self.deferred:
            return None
        parts = []
        for s in self.shards:
            c = s.cells.get((key, float(eps)))
            if c is None:
                raise ValueError(f"{s.name} has not finished cell {key} at eps={eps:g}: rerun "
                                 "its command (same --shard and --out) to complete it")
            parts.append((s, c, read_cell(s.path, c)))
        cols = {}
        for col, dtype in COLUMNS.items():
            out = np.empty(n, dtype=dtype)
            for s, _, t in parts:
                out[s.pos] = t[col]
            cols[col] = out
        adv = _merged_adversarial(parts)
        return (ResultsTable(cols), sum(int(c["mismatch"]) for _, c, _ in parts),
                sum(float(c["seconds"]) for _, c, _ in parts), adv)


def _merged_adversarial(parts: list[tuple[_Shard, dict[str, Any], ResultsTable]]
                        ) -> dict[str, torch.Tensor] | None:
    """The shards' kept examples of one cell, in the merged sample order (as one process keeps
    them: by position)."""
    got = [(s, load_tensors(s.path / c["adversarial"])) for s, c, _ in parts
           if "adversarial" in c]
    if not got:
        return None
    pos = _positions(got)
    order = torch.from_numpy(np.argsort(pos, kind="stable"))
    return {k: torch.cat([t[k] for _, t in got])[order] for k in ("sample", "x_adv")}


def _positions(got: list[tuple[_Shard, dict[str, torch.Tensor]]]) -> np.ndarray:
    """The merged positions of each shard's kept examples (their ids looked up in the
    shard's own rows, whose merged positions :meth:`ShardSet.bind` found)."""
    out = []
    for s, t in got:
        assert s.pos is not None
        order = np.argsort(s.sample, kind="stable")
        out.append(s.pos[order[np.searchsorted(s.sample, t["sample"].numpy(), sorter=order)]])
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def _same_evaluation(a: _Shard, b: _Shard) -> None:
    if a.count != b.count:
        raise ValueError(f"{a.name} and {b.name} split the samples differently (into "
                         f"{a.count} and {b.count} shards)")
    fa, fb = a.manifest["fingerprint"], b.manifest["fingerprint"]
    for k in SHARED_FIELDS:
        if fa.get(k) != fb.get(k):
            raise ResultsFolderMismatch(f"{a.name} and {b.name} are shards of different "
                                        f"evaluations ({k}: {fa.get(k)!r} and {fb.get(k)!r})")
    if _version(a) != _version(b):
        raise ResultsFolderMismatch(f"{a.name} and {b.name} were made by robustact "
                                    f"{_version(a)} and {_version(b)}")


def _same_clean(s: _Shard, pos: np.ndarray, clean: Mapping[str, np.ndarray]) -> None:
    for col in ("clean_pred", "clean_correct"):
        if not np.array_equal(s.clean[col], clean[col][pos]):
            raise ValueError(f"{s.name}'s clean predictions differ from the merge's ({col}): "
                             "another model, device or precision made it")


def _version(s: _Shard) -> str:
    return str((s.manifest["meta"].get("environment") or {}).get("robustact"))

