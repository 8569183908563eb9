"""The JumpReLU retrofit defense (Erichson, Yao, Mahoney 2019) and its κ tuner.

Retrofit: take a trained ReLU network and replace every ReLU by JumpReLU_κ with one shared κ, at
inference only; no retraining. :func:`retrofit_jumprelu` swaps every ``nn.ReLU`` (and
``JumpReLU``) module for ``JumpReLU(κ)`` *and* runs the model under a
:class:`~robustact.nn.surgery.JumpReLUMode`, so ReLUs called functionally inside ``forward``
(``F.relu``, ``torch.relu``, ``x.relu()``, in-place variants) jump too. At κ = 0 the retrofit is
bit-for-bit the original model.

κ is chosen on validation data (:func:`tune_jumprelu`): the largest κ of a grid whose clean
accuracy drop stays within a budget. The paper's grids are :data:`MNIST_KAPPA_GRID`,
:data:`ALEXLIKE_KAPPA_GRID` and :data:`RESNET_KAPPA_GRID`.
"""

from __future__ import annotations

import contextlib
import copy
import math
import numbers
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from robustact.core.validate import check_eval_mode, check_images, check_labels
from robustact.defenses.base import DefenseWrapper
from robustact.models.predict import accuracy
from robustact.nn.jumprelu import JumpReLU, check_kappa
from robustact.nn.surgery import JumpReLUMode, replace_modules, set_module

__all__ = [
    "JumpReLURetrofit",
    "retrofit_jumprelu",
    "remove_jumprelu",
    "tune_jumprelu",
    "KappaTuning",
    "MNIST_KAPPA_GRID",
    "ALEXLIKE_KAPPA_GRID",
    "RESNET_KAPPA_GRID",
    "KAPPA_GRIDS",
    "paper_kappa_grid",
]

#: κ grids of the paper (papers.md §1): LeNetLike on MNIST; AlexLike on CIFAR-10; ResNet-20, WRN and
#: MobileNetV2 on CIFAR-10.
MNIST_KAPPA_GRID: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5)
ALEXLIKE_KAPPA_GRID: tuple[float, ...] = tuple(round(0.1 * i, 10) for i in range(9))
RESNET_KAPPA_GRID: tuple[float, ...] = tuple(round(0.01 * i, 10) for i in range(10))
KAPPA_GRIDS: dict[str, tuple[float, ...]] = {
    "mnist": MNIST_KAPPA_GRID,
    "alexlike": ALEXLIKE_KAPPA_GRID,
    "resnet": RESNET_KAPPA_GRID,
}


def paper_kappa_grid(model_name: str, dataset: str) -> tuple[float, ...]:
    """The paper's grid for a model/dataset: MNIST; AlexLike on CIFAR; otherwise ResNet-like."""
    if dataset.lower() == "mnist":
        return MNIST_KAPPA_GRID
    if "alex" in model_name.lower():
        return ALEXLIKE_KAPPA_GRID
    return RESNET_KAPPA_GRID


class JumpReLURetrofit(DefenseWrapper):
    """``base`` with every ReLU turned into JumpReLU(κ); κ settable via ``.kappa``.

    Constructing it modifies ``base`` in place (its ReLU modules are swapped); use
    :func:`retrofit_jumprelu` to leave the original untouched. In training mode it is the ReLU
    model again (the paper switches the jump on at inference only). ``features``/``head``
    delegate to ``base`` (``features`` with the jump applied), so the classifier contract holds
    through the wrapper. :meth:`undo` puts the original ReLU modules back and returns ``base``.
    """

    def __init__(self, base: nn.Module, kappa: float = 0.0) -> None:
        super().__init__()
        if not isinstance(base, nn.Module):
            raise TypeError(f"base must be an nn.Module, got {type(base).__name__}")
        if isinstance(base, JumpReLURetrofit):
            raise ValueError("the model is already JumpReLU-retrofitted; set .kappa instead")
        kappa = check_kappa(kappa)
        self.base = base
        self._mode = JumpReLUMode(kappa)
        self._originals: dict[str, nn.Module] = {}
        self._undone = False

        def make(name: str, old: nn.Module) -> nn.Module:
            self._originals[name] = old
            new = JumpReLU(kappa, inplace=bool(getattr(old, "inplace", False)))
            new.reroute_mode = self._mode
            return new

        self.sites = replace_modules(base, (nn.ReLU, JumpReLU), make)
        self._kappa = kappa
        self.train(base.training)  # a wrapper starts in the wrapped model's mode

    @property
    def kappa(self) -> float:
        return self._kappa

    @kappa.setter
    def kappa(self, value: float) -> None:
        value = check_kappa(value)
        self._kappa = value
        self._mode.kappa = value
        for m in self.base.modules():
            if isinstance(m, JumpReLU):
                m.kappa = value

    @property
    def functional_calls(self) -> int:
        """How many functional ReLU calls have been rerouted so far (0: the model has none)."""
        return self._mode.calls

    @contextlib.contextmanager
    def _jump(self) -> Iterator[None]:
        if self._undone:
            raise RuntimeError("this JumpReLU retrofit was undone; use the model undo() returned")
        if self._kappa == 0.0 or self.training:
            yield  # κ = 0 (or training): plain ReLU semantics, bit-exact, no mode needed
            return
        with self._mode:
            yield

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self._jump():
            return self.base(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``base.features(x)`` with the jump applied (penultimate representation)."""
        feats = getattr(self.base, "features", None)
        if not callable(feats):
            raise AttributeError(f"{type(self.base).__name__} has no features(x) method")
        with self._jump():
            return feats(x)

    @property
    def head(self) -> nn.Module:
        return self.base.head

    def undo(self) -> nn.Module:
        """Put the original ReLU modules back; returns ``base`` (this wrapper is then spent)."""
        if self._undone:
            raise RuntimeError("this JumpReLU retrofit was already undone")
        for name, old in self._originals.items():
            set_module(self.base, name, old)
        self._undone = True
        return self.base

    def extra_repr(self) -> str:
        return f"kappa={self._kappa:g}, sites={len(self.sites)}"


def retrofit_jumprelu(model: nn.Module, kappa: float, inplace: bool = False) -> nn.Module:
    """Return ``model`` with every ReLU replaced by JumpReLU(κ) (a :class:`JumpReLURetrofit`).

    ``inplace=False`` (default) works on a deep copy, so ``model`` stays a ReLU model. An
    already-retrofitted model just gets the new κ. Any other defense wrapper (e.g. an output
    activation) keeps its place on the outside (the retrofit goes on its ``base``), so
    ``logits_from="base"`` still names the logits.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    kappa = check_kappa(kappa)
    out = model if inplace else copy.deepcopy(model)
    if isinstance(out, JumpReLURetrofit):
        out.kappa = kappa
        return out
    if isinstance(out, DefenseWrapper):
        out.base = retrofit_jumprelu(out.base, kappa, inplace=True)
        return out
    return JumpReLURetrofit(out, kappa)


def remove_jumprelu(model: nn.Module) -> nn.Module:
    """Undo a retrofit (in place): the original ReLU model (inside an outer wrapper, if any)."""
    if isinstance(model, JumpReLURetrofit):
        return model.undo()
    if isinstance(model, DefenseWrapper) and isinstance(model.base, JumpReLURetrofit):
        model.base = model.base.undo()
        return model
    raise ValueError(f"{type(model).__name__} is not a JumpReLU retrofit (nothing to remove)")


@dataclass
class KappaTuning:
    """Result of :func:`tune_jumprelu`. Accuracies are fractions in [0, 1]."""

    kappa: float
    curve: list[tuple[float, float]]  # (κ, clean validation accuracy), κ ascending
    baseline_acc: float  # accuracy at κ = 0 (the ReLU model)
    max_drop: float  # the budget, in percentage points
    n: int = 0  # validation samples
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"kappa": self.kappa, "curve": [list(p) for p in self.curve],
                "baseline_acc": self.baseline_acc, "max_drop": self.max_drop, "n": self.n,
                **self.info}


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    """Clean accuracy by the one prediction function (a tied top output is not correct), so the
    tuner's curve matches what ``robustact evaluate`` reports for the retrofitted model."""
    return accuracy(model, (x, y), batch_size=batch_size)


def tune_jumprelu(model: nn.Module, x_val: torch.Tensor, y_val: torch.Tensor,
                  grid: Sequence[float] = RESNET_KAPPA_GRID, max_drop: float = 1.0, *,
                  batch_size: int = 256, progress: bool = True) -> KappaTuning:
    """The largest κ in ``grid`` whose clean validation accuracy is at most ``max_drop``
    percentage points below the κ = 0 (ReLU) accuracy.

    ``model`` (eval mode) is not modified: κ is swept on a retrofitted copy. Every grid point is
    evaluated (the curve is part of the result, shown with a progress bar); a κ qualifies by its
    own accuracy even if a smaller one did not. Returns κ = 0 if none qualifies.
    """
    check_eval_mode(model, "tuning kappa")
    check_images(x_val, "x_val")
    check_labels(y_val, x_val.shape[0], name="y_val")
    if isinstance(grid, (str, bytes)) or not isinstance(grid, Sequence) or len(grid) == 0:
        raise ValueError(f"grid must be a non-empty sequence of kappas, got {grid!r}")
    kappas = sorted({check_kappa(k, "grid value") for k in grid})
    if isinstance(max_drop, bool) or not isinstance(max_drop, numbers.Real) \
            or not math.isfinite(max_drop) or max_drop < 0:
        raise ValueError(f"max_drop must be a finite number of percentage points >= 0, "
                         f"got {max_drop!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")

    probe = retrofit_jumprelu(model, 0.0)
    probe.eval()
    baseline = _accuracy(probe, x_val, y_val, batch_size)
    curve: list[tuple[float, float]] = []
    for k in tqdm(kappas, desc="tuning JumpReLU kappa", disable=not progress):
        probe = retrofit_jumprelu(probe, k, inplace=True)
        acc = baseline if k == 0.0 else _accuracy(probe, x_val, y_val, batch_size)
        curve.append((k, acc))
    ok = [k for k, acc in curve if (baseline - acc) * 100.0 <= max_drop + 1e-9]
    return KappaTuning(kappa=max(ok) if ok else 0.0, curve=curve, baseline_acc=baseline,
                       max_drop=float(max_drop), n=int(x_val.shape[0]))
