"""Learning-rate schedules as pure functions of training progress.

Why pure functions instead of PyTorch's stateful ``LRScheduler`` objects: the learning rate of a
step is then fully determined by ``(epoch, step)`` and the config, so a resumed run computes the
very same float for every step without restoring any scheduler counter, and a card can record the
schedule as plain JSON. :class:`LRSchedule` still offers ``state_dict`` / ``load_state_dict`` so it
drops into code written for PyTorch schedulers.

Conventions (match ``torch.optim.lr_scheduler`` stepped once per epoch):

- epochs are counted from 0 inside the schedule; ``milestones`` are the 0-based epoch indices at
  which the rate is multiplied by ``gamma``: with milestones (30, 60) epochs 0–29 use ``lr``,
  epochs 30–59 use ``lr·gamma`` (the 31st epoch is the first decayed one, as in MultiStepLR);
- ``cosine`` anneals per step from ``lr`` to 0 over the epochs after warm-up;
- warm-up (``warmup_epochs > 0``) ramps linearly per step from ``lr / warmup_steps`` to ``lr``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["SCHEDULES", "LRSchedule", "lr_at"]

SCHEDULES = ("step", "cosine", "constant")


def lr_at(epoch: int, step: int, steps_per_epoch: int, **config: Any) -> float:
    """Learning rate for optimizer step ``step`` (0-based) of epoch ``epoch`` (0-based).

    ``config``: the schedule's keywords as for :class:`LRSchedule` (``lr``, ``epochs`` and
    optionally ``schedule``, ``milestones``, ``gamma``, ``warmup_epochs``), declared and checked
    there once.
    """
    return LRSchedule(None, steps_per_epoch=steps_per_epoch, **config).lr_for(epoch, step)


class LRSchedule:
    """Sets the optimizer's learning rate before every step from :meth:`lr_for`.

    The only state is the configuration, so ``state_dict`` is JSON and ``load_state_dict`` simply
    checks that a resumed run uses the same schedule (a silently different schedule would make a
    "resumed" run a different experiment).
    """

    def __init__(
        self,
        optimizer: Any,
        *,
        lr: float,
        epochs: int,
        steps_per_epoch: int,
        schedule: str = "step",
        milestones: Sequence[int] = (),
        gamma: float = 0.1,
        warmup_epochs: int = 0,
    ) -> None:
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}; choose from {SCHEDULES}")
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if warmup_epochs < 0 or warmup_epochs > epochs:
            raise ValueError(f"warmup_epochs must be in [0, epochs={epochs}], got {warmup_epochs}")
        self.optimizer = optimizer
        self.lr = float(lr)
        self.epochs = int(epochs)
        self.steps_per_epoch = int(steps_per_epoch)
        self.schedule = schedule
        self.milestones = [int(m) for m in milestones]
        self.gamma = float(gamma)
        self.warmup_epochs = int(warmup_epochs)

    def lr_for(self, epoch: int, step: int) -> float:
        """The rate of optimizer step ``step`` (0-based) of epoch ``epoch`` (0-based)."""
        if not 0 <= step < self.steps_per_epoch:
            raise ValueError(f"step {step} is outside [0, {self.steps_per_epoch})")
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        lr = self.lr
        global_step = epoch * self.steps_per_epoch + step
        warmup_steps = self.warmup_epochs * self.steps_per_epoch
        if global_step < warmup_steps:
            return lr * (global_step + 1) / warmup_steps
        if self.schedule == "constant":
            return lr
        if self.schedule == "step":
            return lr * self.gamma ** sum(1 for m in self.milestones if epoch >= m)
        # cosine over the steps after warm-up; epochs beyond ``epochs`` stay at the final value 0.
        total = max(1, (self.epochs - self.warmup_epochs) * self.steps_per_epoch)
        t = min(1.0, (global_step - warmup_steps) / total)
        return lr * 0.5 * (1.0 + math.cos(math.pi * t))

    def apply(self, epoch: int, step: int) -> float:
        """Write the rate for ``(epoch, step)`` into every param group; returns it."""
        value = self.lr_for(epoch, step)
        for group in self.optimizer.param_groups:
            group["lr"] = value
        return value

    def state_dict(self) -> dict[str, Any]:
        return {
            "lr": self.lr, "epochs": self.epochs, "steps_per_epoch": self.steps_per_epoch,
            "schedule": self.schedule, "milestones": list(self.milestones), "gamma": self.gamma,
            "warmup_epochs": self.warmup_epochs,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mine = self.state_dict()
        diff = {k: (state.get(k), v) for k, v in mine.items() if state.get(k) != v}
        if diff:
            detail = ", ".join(f"{k}: saved {a!r} vs now {b!r}" for k, (a, b) in diff.items())
            raise ValueError(f"the saved learning-rate schedule differs from this one ({detail})")
