"""What determines a training run: :class:`TrainConfig`, its checks, and the papers' presets.

Why a module of its own: the config is data (it is written into every checkpoint card and
compared on resume), so it must be readable without the loop that consumes it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from robustact.core.validate import check_positive_int
from robustact.train.augment import AUGMENTATIONS
from robustact.train.averaging import check_decay
from robustact.train.schedules import SCHEDULES

__all__ = [
    "TRAJECTORY_FIELDS",
    "TrainConfig",
    "TrainingDivergedError",
    "jumprelu_alexlike_config",
    "jumprelu_mnist_config",
    "jumprelu_resnet_config",
]

# Fields that define the training trajectory: a resumed run must use the same values.
TRAJECTORY_FIELDS = ("batch_size", "optimizer", "lr", "momentum", "weight_decay", "nesterov",
                      "schedule", "milestones", "gamma", "warmup_epochs", "augment", "seed",
                      "balanced", "epochs", "betas", "adv", "ema")


#: Fields older cards may hold that no longer shape a run (``num_threads``: threads are the
#: caller's choice now); ignored when a card's config is read back.
_RETIRED_FIELDS = ("num_threads",)


class TrainingDivergedError(FloatingPointError, ValueError):
    """The training loss became NaN or infinite (usually: the learning rate is too high).

    A ``ValueError`` too, because the fix is a different argument, not a code change: the CLI
    reports it as a user error in one line.
    """


@dataclass
class TrainConfig:
    """Everything that determines a training run; JSON-serialisable (``to_dict``/``from_dict``).

    ``milestones`` are 0-based epoch indices (see :mod:`robustact.train.schedules`);
    ``checkpoint_every`` is in epochs; ``log_every`` is the number of steps between progress-bar
    updates (each update syncs the device); ``balanced`` draws class-balanced batches
    (differential training). ``adv`` is the adversarial-training recipe, a spec dict from
    :func:`robustact.train.adversarial.adversarial_spec` (None: plain training); recorded in
    the card so a reader knows how the model was made. ``ema`` (e.g. 0.999 per step) evaluates,
    saves and hands back an exponential moving average of the weights
    (:mod:`robustact.train.averaging`). Thread counts are not part of a run:
    the caller (the CLI) sets them, never the library.
    """

    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: str = "step"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    warmup_epochs: int = 0
    augment: str = "none"
    seed: int = 1
    device: str = "auto"
    checkpoint_every: int = 1
    log_every: int = 20
    balanced: bool = False
    eval_batch_size: int = 512
    betas: tuple[float, float] = (0.9, 0.999)
    adv: dict[str, Any] | None = None
    ema: float | None = None

    def __post_init__(self) -> None:
        self.milestones = tuple(int(m) for m in self.milestones)
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        positive_ints = ("epochs", "batch_size", "checkpoint_every", "log_every", "eval_batch_size")
        for name in positive_ints:
            check_positive_int(getattr(self, name), name)
        def bad(name: str, rule: str) -> ValueError:
            return ValueError(f"{name} must be {rule}, got {getattr(self, name)!r}")

        if self.optimizer not in ("sgd", "adam"):
            raise bad("optimizer", "'sgd' or 'adam'")
        if self.schedule not in SCHEDULES:
            raise bad("schedule", f"one of {SCHEDULES}")
        if self.augment not in AUGMENTATIONS:
            raise bad("augment", f"one of {AUGMENTATIONS}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise bad("lr", "a positive number")
        if not 0 <= self.momentum < 1:
            raise bad("momentum", "in [0, 1)")
        if self.weight_decay < 0:
            raise bad("weight_decay", ">= 0")
        if not 0 < self.gamma <= 1:
            raise bad("gamma", "in (0, 1]")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise bad("warmup_epochs", f"in [0, epochs={self.epochs}]")
        if any(m < 0 for m in self.milestones) or list(self.milestones) != sorted(self.milestones):
            raise bad("milestones", "increasing epoch indices >= 0")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise bad("device", "'auto', 'cpu' or 'cuda[:i]'")
        if self.adv is not None and not (isinstance(self.adv, dict) and "recipe" in self.adv):
            raise bad("adv", "None or a recipe spec dict (see adversarial_spec)")
        if self.ema is not None:
            self.ema = check_decay(self.ema, "ema")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise ValueError("TrainConfig.nesterov needs optimizer 'sgd' with momentum > 0")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["milestones"] = list(self.milestones)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k not in _RETIRED_FIELDS}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {', '.join(unknown)}")
        return cls(**d)


# --- paper presets (papers.md §1) ----------------------------------------------------------

def jumprelu_mnist_config(**overrides: Any) -> TrainConfig:
    """LeNetLike on MNIST: SGD 0.9, wd 5e-4, batch 128, 90 epochs, lr 0.02 ×0.2 at 30/60/80."""
    base = dict(epochs=90, lr=0.02, milestones=(30, 60, 80), gamma=0.2, schedule="step")
    return TrainConfig(**{**base, **overrides})


def jumprelu_alexlike_config(**overrides: Any) -> TrainConfig:
    """AlexLike on CIFAR-10: the MNIST schedule plus crop/flip augmentation."""
    base = dict(epochs=90, lr=0.02, milestones=(30, 60, 80), gamma=0.2, schedule="step",
                augment="cifar")
    return TrainConfig(**{**base, **overrides})


def jumprelu_resnet_config(**overrides: Any) -> TrainConfig:
    """ResNet-20 / WRN / MobileNetV2 on CIFAR: 120 epochs, lr 0.1 ×0.1 at 30/60/90, crop/flip."""
    base = dict(epochs=120, lr=0.1, milestones=(30, 60, 90), gamma=0.1, schedule="step",
                augment="cifar")
    return TrainConfig(**{**base, **overrides})
