"""Shared plumbing for the scripts in ``benchmarks/`` and ``experiments/`` (not the library).

Why a helper module: every script must agree on where the data lives (the library's rule:
``--data-root``, else ``$ROBUSTACT_DATA``, else ``~/.cache/robustact/data``), what ``--quick``
means (a few seconds on a stand-in for the real data, results never written to ``results/``),
how the device and CPU threads are chosen, what a results file records (config, exact command
line, environment, wall time) and how a table is printed; repeating that in each script would
let them drift.

Scripts import it by path (``scripts/`` is put on ``sys.path`` by each of them), so it works
from any working directory without installing anything beyond ``robustact``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustact.attacks.base import Attack
from robustact.core.storage import atomic_write_json, environment_info
from robustact.data import (
    DatasetNotFoundError,
    ImageDataset,
    dataset_info,
    load_dataset,
    resolve_data_root,
)
from robustact.data.root import DEFAULT_ROOT, ENV_VAR, check_split
from robustact.models.predict import predict

__all__ = [
    "REPO_ROOT",
    "QUICK_HELP",
    "RESULTS_DIR",
    "CIFAR10_CLASSES",
    "base_parser",
    "add_data_root_arg",
    "quick_output",
    "load_data",
    "data_source",
    "standin_dataset",
    "run_script",
    "resolve_device",
    "setup_threads",
    "format_table",
    "command_line",
    "write_results",
    "save_if_asked",
    "training_parser",
    "parse_training_args",
    "attack_metrics",
]

#: The repository checkout this file belongs to, and its committed results folder.
REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "results"

#: CIFAR-10's class names in label order (what ``batches.meta`` holds), for the stand-in data.
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")

DATA_ROOT_HELP = (f"dataset root (default: ${ENV_VAR}, else {DEFAULT_ROOT}); layouts MNIST/raw/, "
                  "cifar-10-batches-py/")
QUICK_HELP = ("smoke run in seconds: synthetic stand-in data of the real data's shape, "
              "tiny budgets; writes runs/quick/<script>.json unless --out says otherwise, and "
              "never into results/")


def add_data_root_arg(p: argparse.ArgumentParser) -> None:
    """``--data-root``, resolved by the library's rule (``robustact.data.resolve_data_root``)."""
    p.add_argument("--data-root", default=None, help=DATA_ROOT_HELP)


def quick_output(out: str | Path | None, *, default: str | Path | None, quick: bool,
                 script: str) -> Path | None:
    """Where a script writes its JSON: ``out``, or under ``--quick`` ``runs/quick/<script>.json``.

    Why: a smoke run must never replace a committed measurement. Under ``--quick`` an ``out``
    left at the script's ``default`` (or unset) becomes ``runs/quick/<script>.json`` (git-ignored),
    and an explicit path inside ``results/`` is refused.
    """
    if not quick:
        return None if out is None else Path(out)
    if out is None or (default is not None and str(out) == str(default)):
        return Path("runs") / "quick" / f"{script}.json"
    path = Path(out)
    if path.resolve().is_relative_to(RESULTS_DIR):
        raise ValueError(f"--quick results are smoke runs and never go to results/ (got --out "
                         f"{out}); leave --out unset or point it elsewhere")
    return path


def standin_dataset(like: str, split: str) -> ImageDataset:
    """Synthetic images of ``like``'s shape and classes: per class a smooth random template plus
    pixel noise (1200 train / 300 test images, balanced, seeded, the same on every machine).

    Why synthetic: a ``--quick`` run must start in seconds on any machine, offline, and most of
    its time is interpreter start-up; generating these takes milliseconds, where reading even
    sklearn's bundled digits costs a second of imports per run. The classes are separable but
    noisy, so training, tuning and the attacks all have something to do.
    """
    if like not in ("mnist", "cifar10"):
        raise ValueError(f"no stand-in for dataset {like!r}; --quick supports mnist and cifar10")
    check_split(split)
    info = dataset_info(like)
    (c, h, w), k = info.shape, info.num_classes
    n = 1200 if split == "train" else 300
    templates = F.interpolate(torch.rand(k, c, 4, 4, generator=torch.Generator().manual_seed(0)),
                              size=(h, w), mode="bilinear", align_corners=False)
    g = torch.Generator().manual_seed(1 if split == "train" else 2)
    labels = (torch.arange(n) % k)[torch.randperm(n, generator=g)]
    x = templates[labels] + 0.25 * torch.randn(n, c, h, w, generator=g)
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    classes = list(CIFAR10_CLASSES) if like == "cifar10" else [str(d) for d in range(10)]
    return ImageDataset(images, labels, classes, f"synthetic-{like}")


def load_data(name: str, split: str, root: str | Path | None, *, quick: bool) -> ImageDataset:
    """The real dataset (root by the library's rule), or under ``quick`` its synthetic stand-in."""
    if quick:
        return standin_dataset(name, split)
    return load_dataset(name, split, root=root)


def data_source(root: str | Path | None, *, quick: bool) -> str:
    """What a results file records as the data's origin: the resolved root, or the stand-in."""
    if quick:
        return "synthetic stand-in (--quick), not the real data"
    return str(resolve_data_root(root))


def run_script(main: Callable[[], Any]) -> None:
    """Run a script's ``main``: bad input or missing data end in one ``error:`` line, exit 2.

    The same contract as the CLI: a user sees what to fix, not a stack trace. Missing real data
    is the common case on a new machine, so its message names the two ways to point at the data
    and the way to run without it.
    """
    try:
        main()
    except DatasetNotFoundError as e:
        first = str(e).splitlines()[0]
        message = (f"{first}; pass --data-root DIR or set ${ENV_VAR} "
                   "(or try --quick, which needs no data)")
    except ValueError as e:
        message = str(e)
    else:
        return
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def resolve_device(spec: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(spec)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {spec!r} asked for CUDA but none is available")
    return dev


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
    add_data_root_arg(p)
    p.add_argument("--epochs", type=int, default=default_epochs, help="training epochs")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:i]")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (see setup_threads)")
    p.add_argument("--seed", type=int, default=1, help="seed for splits, init and batches")
    p.add_argument("--out", default=default_out, help="results JSON (written atomically)")
    p.add_argument("--runs-dir", default="runs", help="where checkpoints go (git-ignored)")
    p.add_argument("--quick", action="store_true", help=QUICK_HELP)
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


def command_line() -> list[str]:
    """The command as run, with ``python`` for the interpreter.

    Why not ``sys.executable``: it is a path on one machine (a venv under someone's home) and
    says nothing the recorded environment (versions) does not; ``python`` keeps the command
    copy-pasteable from the repository root.
    """
    return ["python", *sys.argv]


def write_results(path: str | Path, *, script: str, args: argparse.Namespace, started: float,
                  results: dict[str, Any]) -> Path:
    """Write one results file: config, exact command, environment, wall time, then results.

    ``started`` is the ``time.perf_counter()`` value taken when the script began. ``quick``
    is recorded at the top so a smoke run can never pass for a measurement.
    """
    payload = {
        "script": script,
        "command": command_line(),
        "quick": bool(getattr(args, "quick", False)),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "environment": environment_info(),
        "wall_seconds": time.perf_counter() - started,
        **results,
    }
    return atomic_write_json(path, payload)


def training_parser(description: str, *, ckpt_dir: str, out: str) -> argparse.ArgumentParser:
    """The options every training script shares (data root, seed, device, threads, held-out
    validation, checkpoint folder, results file, progress, ``--quick``); add the rest."""
    p = argparse.ArgumentParser(description=description)
    add_data_root_arg(p)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--val-size", type=int, default=0,
                   help="hold out this many training images for per-epoch validation")
    p.add_argument("--ckpt-dir", type=Path, default=Path(ckpt_dir))
    p.add_argument("--out", type=Path, default=Path(out))
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--quick", action="store_true", help=QUICK_HELP)
    return p


def parse_training_args(p: argparse.ArgumentParser, argv: list[str] | None, script: str
                        ) -> argparse.Namespace:
    """Parse, set the threads the script asked for (it is the entry point), and route a
    ``--quick`` run's results to ``runs/quick``."""
    a = p.parse_args(argv)
    if a.threads is not None:
        torch.set_num_threads(a.threads)
    a.out = quick_output(a.out, default=p.get_default("out"), quick=a.quick, script=script)
    return a


def save_if_asked(args: argparse.Namespace, *, script: str, started: float,
                  results: dict[str, Any]) -> Path | None:
    """:func:`write_results` to ``args.out`` and say where, unless ``--out ''`` asked for none."""
    if not args.out:
        return None
    out = write_results(args.out, script=script, args=args, started=started, results=results)
    print(f"wrote {out}")
    return out


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
    # the one prediction function (a tied top output is not correct), as `robustact evaluate`
    clean_all = predict(model, (x, y), batch_size=batch_size, device=device).correct
    assert clean_all is not None
    succ, clean, norms, rel = [], [], [], []
    norm = "linf"
    for i in range(0, x.shape[0], batch_size):
        xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
        clean.append(clean_all[i:i + batch_size])
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
