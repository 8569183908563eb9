"""The data side of training: tensors from datasets, seeds per epoch and stream, batch orders.

Why apart from the loop: the same seeding (``derive_seed``, ``seeded``) serves model
construction, shuffling, augmentation and dropout, and evaluation code reads datasets through
``as_tensors`` too; none of that needs the trainer. (``as_tensors`` and ``to_float`` live in
:mod:`robustact.data.tensors` and are re-exported here.)
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch

# Moved down to the data layer (the models layer needs them and may not import training);
# re-exported so ``from robustact.train.batches import as_tensors`` keeps working.
from robustact.data.tensors import as_tensors, to_float

__all__ = ["as_tensors", "balanced_batches", "balanced_layout", "derive_seed", "seeded",
           "to_float"]


def derive_seed(seed: int, epoch: int, stream: str) -> int:
    """A 63-bit seed for one random stream of one epoch (stable across runs and platforms)."""
    digest = hashlib.sha256(f"robustact:{seed}:{epoch}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@contextmanager
def seeded(seed: int, stream: str = "init") -> Iterator[None]:
    """Run a block with torch's CPU RNG seeded from ``(seed, stream)``, then restore it.

    Why: layers draw their initial weights from the global RNG, so a run's ``seed`` must seed
    model construction too, or two runs with the same seed start from different weights. The
    caller's RNG state is left as it was (no global state changes behind the user's back);
    distinct ``stream`` names give independent draws from one seed (e.g. two models).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, 0, stream))
        yield


def balanced_layout(labels: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, int, int]:
    """(classes, samples per class per batch, number of batches) for balanced batches."""
    classes, counts = torch.unique(labels, return_counts=True)
    k = len(classes)
    if k < 2:
        raise ValueError(f"balanced batches need at least 2 classes, the labels hold {k}")
    per_class = batch_size // k
    if per_class < 1:
        raise ValueError(f"batch_size {batch_size} is smaller than the number of classes {k}")
    return classes, per_class, math.ceil(int(counts.max()) / per_class)


def balanced_batches(labels: torch.Tensor, batch_size: int, generator: torch.Generator
                     ) -> list[torch.Tensor]:
    """Index batches holding ``batch_size // K`` samples of each of the K classes present.

    There are ``ceil(largest class / per_class)`` batches, so every sample of the largest class
    appears exactly once per epoch; smaller classes are walked in a fresh random order and
    reshuffled each time they run out (repeated, never truncated).
    """
    classes, per_class, n_batches = balanced_layout(labels, batch_size)
    need = n_batches * per_class
    streams = []
    for c in classes:
        idx = torch.nonzero(labels == c).flatten()
        rounds = [idx[torch.randperm(idx.numel(), generator=generator)]
                  for _ in range(math.ceil(need / idx.numel()))]
        streams.append(torch.cat(rounds)[:need].view(n_batches, per_class))
    return list(torch.cat(streams, dim=1).unbind(0))
