"""Sanity check of the real datasets: sizes, label histograms, pixel statistics.

Why: the unit tests only see tiny hand-written files. This script loads the real MNIST and
CIFAR-10 (and CIFAR-100 / digits if available) through ``robustact.data`` and compares what it
finds with the known facts: 60000/10000 MNIST images with mean ≈ 0.1307, 50000/10000 CIFAR-10
images whose per-channel mean matches the normalization constants the models use.

    python scripts/check_real_data.py [--data-root DIR]

The data root follows the library's rule (``--data-root``, else ``$ROBUSTACT_DATA``, else
``~/.cache/robustact/data``). Exits with status 1 if any check fails (MNIST and CIFAR-10 must be
there; CIFAR-100 is optional).
"""

from __future__ import annotations

import argparse
import time

import torch

from robustact.data import ENV_VAR, DatasetNotFoundError, ImageDataset, dataset_info, load_dataset
from robustact.data.root import DEFAULT_ROOT, describe_data_root, resolve_data_root

EXPECTED_SIZES = {
    "mnist": {"train": 60000, "test": 10000},
    "cifar10": {"train": 50000, "test": 10000},
    "cifar100": {"train": 50000, "test": 10000},
}


def channel_stats(ds: ImageDataset) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] units, from integer sums (no 600 MB float copy)."""
    x = ds.images.to(torch.int64)
    n = x.shape[0] * x.shape[2] * x.shape[3]
    s1 = x.sum(dim=(0, 2, 3)).double()
    s2 = (x * x).sum(dim=(0, 2, 3)).double()
    mean = s1 / n
    std = (s2 / n - mean * mean).sqrt()
    return (mean / 255).tolist(), (std / 255).tolist()


def check(name: str, split: str, root: str) -> bool:
    t0 = time.perf_counter()
    try:
        ds = load_dataset(name, split, root=root)
    except DatasetNotFoundError as e:
        first = str(e).splitlines()[0]
        print(f"{name:9s} {split:5s} not found ({first})")
        return name not in ("mnist", "cifar10")  # the two required ones must be there
    dt = time.perf_counter() - t0
    mean, std = channel_stats(ds)
    hist = ds.class_counts().tolist()
    ok = True
    want = EXPECTED_SIZES.get(name, {}).get(split)
    if want is not None and len(ds) != want:
        ok = False
    # digits' statistics are rounded (0.3, 0.38) on purpose, so only the papers' datasets
    # are held to their published means.
    if split == "train" and ds.name in EXPECTED_SIZES:
        ref_mean = dataset_info(ds.name).mean
        ok &= all(abs(m - r) < 2e-3 for m, r in zip(mean, ref_mean, strict=True))
    fmt = ", ".join
    print(f"{name:9s} {split:5s} n={len(ds):6d} images={tuple(ds.images.shape)} "
          f"{ds.images.dtype} loaded in {dt:.2f}s  {'OK' if ok else 'MISMATCH'}")
    print(f"          mean=[{fmt(f'{m:.4f}' for m in mean)}] std=[{fmt(f'{s:.4f}' for s in std)}]"
          f" min={int(ds.images.min())} max={int(ds.images.max())}")
    if len(hist) <= 20:
        print(f"          labels {hist}")
    else:
        print(f"          labels: {len(hist)} classes, {min(hist)}..{max(hist)} per class")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=None,
                        help=f"data root (default: ${ENV_VAR}, else {DEFAULT_ROOT})")
    args = parser.parse_args()
    root = resolve_data_root(args.data_root)
    print(f"data root: {root} ({describe_data_root(args.data_root)})  torch {torch.__version__}")
    results = [check(name, split, str(root))
               for name in ("mnist", "cifar10", "cifar100", "digits")
               for split in ("train", "test")]
    if all(results):
        print("all checks passed")
        return 0
    print(f"SOME CHECKS FAILED (data root {root}: pass --data-root DIR or set ${ENV_VAR})")
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
