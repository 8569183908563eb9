"""Shared plumbing for the real-data experiment scripts (zoo, JumpReLU κ, differential training).

Why a helper module: the three scripts must agree on where the data lives, how the device and
CPU threads are chosen, what a results file records (config, exact command line, environment,
wall time) and how a table is printed; repeating that in each script would let them drift.
This module is for the scripts in ``benchmarks/`` only, not part of the library.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustact.attacks.base import Attack
from robustact.core.storage import atomic_write_json, environment_info
from robustact.core.validate import resolve_device as _resolve_device

__all__ = [
    "DEFAULT_DATA_ROOT",
    "base_parser",
    "resolve_data_root",
    "resolve_device",
    "setup_threads",
    "format_table",
    "write_results",
    "attack_metrics",
]

#: Where the real datasets live on the project machines when neither ``--data-root`` nor
#: ``$ROBUSTACT_DATA`` says otherwise.
DEFAULT_DATA_ROOT = "/work/data"


def resolve_data_root(arg: str | None) -> Path:
    """``--data-root`` if given, else ``$ROBUSTACT_DATA``, else :data:`DEFAULT_DATA_ROOT`.

    Unlike the library default (a cache directory), the scripts point at the shared data
    directory, because they never download anything.
    """
    root = arg or os.environ.get("ROBUSTACT_DATA") or DEFAULT_DATA_ROOT
    path = Path(root).expanduser()
    if not path.is_dir():
        raise ValueError(f"data root {str(path)!r} is not a directory (set --data-root or "
                         "$ROBUSTACT_DATA)")
    return path


def resolve_device(spec: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; anything else is checked and passed on."""
    return _resolve_device(spec, "--device")


def setup_threads(threads: int) -> int:
    """Set torch's intra-op CPU threads for this script's process; returns the value set.

    Why default to 1: on a shared 2-core machine, two threads per process oversubscribe the
    cores as soon as anything else runs, and torch's spinning workers then make a LeNet step
    ~15× slower (measured: 40 ms vs 600 ms per LeNet-5 step under load). One thread is the
    robust choice there; pass ``--threads 2`` on an idle machine.
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"--threads must be a positive integer, got {threads!r}")
    torch.set_num_threads(threads)
    return threads


def base_parser(description: str, *, default_out: str,
                default_epochs: int) -> argparse.ArgumentParser:
    """The options every experiment script shares."""
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-root", default=None,
                   help=f"dataset root (default: $ROBUSTACT_DATA, else {DEFAULT_DATA_ROOT})")
    p.add_argument("--epochs", type=int, default=default_epochs, help="training epochs")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:i]")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (see setup_threads)")
    p.add_argument("--seed", type=int, default=1, help="seed for splits, init and batches")
    p.add_argument("--out", default=default_out, help="results JSON (written atomically)")
    p.add_argument("--runs-dir", default="runs", help="where checkpoints go (git-ignored)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: tiny subsets, 1 epoch, few attack samples (< 30 s)")
    p.add_argument("--progress", action="store_true", help="show per-epoch progress bars")
    return p


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """A fixed-width text table; ``columns`` are ``(key, header, format spec)``.

    Missing or ``None`` values print as ``-`` so partial rows (e.g. no attack run) stay aligned.
    """
    def cell(row: dict[str, Any], key: str, fmt: str) -> str:
        v = row.get(key)
        if v is None:
            return "-"
        return format(v, fmt) if fmt else str(v)

    body = [[cell(r, k, f) for k, _, f in columns] for r in rows]
    heads = [h for _, h, _ in columns]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h)
              for i, h in enumerate(heads)]
    line = "  ".join(h.rjust(w) for h, w in zip(heads, widths, strict=True))
    rule = "  ".join("-" * w for w in widths)
    out = [line, rule]
    out += ["  ".join(c.rjust(w) for c, w in zip(b, widths, strict=True)) for b in body]
    return "\n".join(out)


def write_results(path: str | Path, *, script: str, args: argparse.Namespace, started: float,
                  results: dict[str, Any]) -> Path:
    """Write one results file: config, exact command, environment, wall time, then results.

    ``started`` is the ``time.perf_counter()`` value taken when the script began.
    """
    payload = {
        "script": script,
        "command": [sys.executable, *sys.argv],
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "environment": environment_info(),
        "wall_seconds": time.perf_counter() - started,
        **results,
    }
    return atomic_write_json(path, payload)


def attack_metrics(attack: Attack, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                   batch_size: int = 250) -> dict[str, Any]:
    """Run ``attack`` in batches: accuracy under attack, success rate, perturbation sizes.

    ``success`` is judged by the attack on the real model output. A sample the model already
    misclassifies counts as broken (robust accuracy can never exceed clean accuracy), so
    ``accuracy`` is the robust accuracy and ``success_rate`` = 1 − accuracy;
    ``success_rate_correct`` is the success rate among the correctly classified. Perturbation sizes
    are taken over the samples that were classified correctly and then broken, in the attack's
    norm: the median ‖δ‖ and the JumpReLU paper's relative perturbation
    ρ = mean_i ‖δ_i‖ / ‖x_i‖.
    """
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"x and y must hold the same positive number of samples, got "
                         f"{x.shape[0]} and {y.shape[0]}")
    t0 = time.perf_counter()
    device = next(model.parameters()).device
    succ, clean, norms, rel = [], [], [], []
    norm = "linf"
    for i in range(0, x.shape[0], batch_size):
        xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
        with torch.no_grad():
            clean.append((model(xb).argmax(1) == yb).cpu())
        res = attack(model, xb, yb)
        norm = res.norm
        delta, xn = (res.x_adv - xb).flatten(1), xb.flatten(1)
        if norm == "linf":
            dn, ref = delta.abs().amax(1), xn.abs().amax(1)
        else:
            dn, ref = delta.norm(dim=1), xn.norm(dim=1)
        succ.append(res.success.cpu() | ~clean[-1])
        norms.append(dn.cpu())
        rel.append((dn / ref.clamp_min(1e-12)).cpu())
    s, c = torch.cat(succ), torch.cat(clean)
    n, r = torch.cat(norms), torch.cat(rel)
    broken = s & c
    out: dict[str, Any] = {
        "n": int(s.numel()),
        "clean_accuracy": float(c.float().mean()),
        "accuracy": 1.0 - float(s.float().mean()),
        "success_rate": float(s.float().mean()),
        # among the correctly classified samples only: how often the attack had to, and did,
        # find a perturbation
        "success_rate_correct": float(broken.sum()) / max(1, int(c.sum())),
        "norm": norm,
        "seconds": time.perf_counter() - t0,
    }
    if broken.any():
        out["median_norm_broken"] = float(n[broken].median())
        out["rho_broken"] = float(r[broken].mean())
    return out
