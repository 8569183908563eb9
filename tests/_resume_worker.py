"""Subprocess entry point for the kill-and-resume test (tests/test_resume.py).

Trains a tiny CNN with batch norm and dropout on tiny synthetic data with crop/flip augmentation
and a per-step cosine schedule, so weights, optimizer momentum, batch-norm buffers, the global RNG
(dropout), the shuffle and augmentation streams all have to be restored right for a resumed run
to match an uninterrupted one bit for bit.

    python _resume_worker.py OUT_DIR [--resume] [--pause-at-step K --marker FILE]

With ``--pause-at-step K`` the run writes FILE and sleeps just before global optimizer step K,
so the test can SIGKILL it in the middle of an epoch that has already changed the in-memory
weights after the last checkpoint.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn

from robustact.models.base import Classifier
from robustact.train import TrainConfig, Trainer

EPOCHS = 4
N_TRAIN = 96
BATCH = 16  # 6 steps per epoch


class TinyNet(Classifier):
    """conv → batch norm → ReLU → dropout → linear features; a 3-class head."""

    def __init__(self) -> None:
        super().__init__()
        self.num_classes = 3
        self.normalize = nn.Identity()
        self.body = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.3),
            nn.Flatten(), nn.Linear(4 * 8 * 8, 16), nn.ReLU(),
        )
        self.head = nn.Linear(16, 3)


Pair = tuple[torch.Tensor, torch.Tensor]


def build() -> tuple[nn.Module, Pair, Pair, TrainConfig]:
    """Model (fixed init), train and validation data, config — identical in every process."""
    g = torch.Generator().manual_seed(1234)
    x = torch.rand(N_TRAIN + 24, 3, 8, 8, generator=g)
    y = torch.randint(0, 3, (N_TRAIN + 24,), generator=g)
    x[:, 0] = (x[:, 0] + 0.3 * y[:, None, None]).clamp(0, 1)  # learnable signal
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(99)
        model = TinyNet()
    config = TrainConfig(
        epochs=EPOCHS, batch_size=BATCH, lr=0.05, schedule="cosine", augment="cifar", seed=7,
        device="cpu", weight_decay=5e-4, momentum=0.9,
    )
    return model, (x[:N_TRAIN], y[:N_TRAIN]), (x[N_TRAIN:], y[N_TRAIN:]), config


def pause_hook(step_to_pause: int, marker: Path):
    def hook(model: nn.Module, x: torch.Tensor, y: torch.Tensor, step: int):
        if step == step_to_pause:
            marker.write_text(str(step))
            time.sleep(300)  # the test kills us here
        return x, y

    return hook


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out_dir", type=Path)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--pause-at-step", type=int, default=None)
    p.add_argument("--marker", type=Path, default=None)
    a = p.parse_args()
    model, train, val, config = build()
    hook = pause_hook(a.pause_at_step, a.marker) if a.pause_at_step is not None else None
    Trainer(model, train, val, config, out_dir=a.out_dir, batch_hook=hook,
            progress=False).fit(resume=a.resume)


if __name__ == "__main__":
    main()
