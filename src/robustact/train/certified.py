"""Certified training: IBP (Gowal et al. 2018) and CROWN-IBP (Zhang et al. 2020).

The loss mixes the natural cross-entropy with the cross-entropy of the *worst-case logits* the
bounds allow (z̃_y = 0, z̃_j = −m_j, where m_j is the certified lower bound of z_y − z_j over
the ε-ball):

    loss = κ · CE(z, y) + (1 − κ) · CE(z̃, y),   m = β · m_CROWN-IBP + (1 − β) · m_IBP

on a schedule in optimizer steps: ``warmup`` epochs of natural training (ε = 0, κ = 1), then
``ramp`` epochs where ε grows linearly from 0 to ``eps_train``, κ falls from 1 to ``kappa_end``
and, for CROWN-IBP, β falls from 1 to 0; then ε = ``eps_train``, κ = ``kappa_end``, β = 0.
Why a ramp: at full ε from the first step the bounds are vacuous and the network learns
nothing (both papers). Why ``eps_train`` above the test ε (Gowal: 0.4 for 0.3): the bounds of
a network trained at ε are tightest at ε; training a little wider certifies more at ε.

The model must be one the bounds cross in train mode: no batch norm and no dropout (their
training-mode behaviour makes the bound depend on the batch); :mod:`robustact.certify.graph`
refuses them in one line. One process only for now (the bound is computed on the unwrapped
model, outside DDP's gradient hooks).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustact.certify import bound_graph, margin_bounds
from robustact.certify.bounds import wrong_classes
from robustact.core.budget import check_budget

__all__ = ["CERTIFIED_RECIPES", "CertifiedLoss", "certified_spec", "schedule_at"]

CERTIFIED_RECIPES = ("ibp", "crown-ibp")


def _check(value: Any, name: str, lo: float, hi: float) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not lo <= value <= hi:
        raise ValueError(f"{name} must be a number in [{lo:g}, {hi:g}], got {value!r}")
    return float(value)


def certified_spec(recipe: str, eps: float, *, eps_train: float | None = None,
                   warmup: int = 1, ramp: int = 20, kappa_end: float = 0.5) -> dict[str, Any]:
    """The checked spec of a certified recipe, as the card records it (``config.adv``).

    ``eps``: the budget the model is for; ``eps_train`` (default ``eps``): the one it trains
    at; ``warmup``/``ramp`` in epochs; ``kappa_end``: the natural loss's final weight (Gowal
    0.5; CROWN-IBP 0).
    """
    if recipe not in CERTIFIED_RECIPES:
        raise ValueError(f"unknown certified recipe {recipe!r}; choose from "
                         f"{', '.join(CERTIFIED_RECIPES)}")
    eps = check_budget(eps, "linf")
    eps_train = eps if eps_train is None else check_budget(eps_train, "linf",
                                                           name="eps_train")
    for v, name in ((warmup, "warmup"), (ramp, "ramp")):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} must be a whole number of epochs >= 0, got {v!r}")
    return {"recipe": recipe, "eps": eps, "eps_train": eps_train, "warmup": warmup,
            "ramp": ramp, "kappa_end": _check(kappa_end, "kappa_end", 0.0, 1.0),
            "norm": "linf"}


def schedule_at(spec: dict[str, Any], step: int, steps_per_epoch: int
                ) -> tuple[float, float, float]:
    """(ε, κ, β) at optimizer step ``step`` (0-based) of the schedule above."""
    start = spec["warmup"] * steps_per_epoch
    length = max(1, spec["ramp"] * steps_per_epoch)
    t = min(1.0, max(0.0, (step - start) / length)) if step >= start else -1.0
    if t < 0:
        return 0.0, 1.0, 1.0
    kappa = 1.0 + t * (spec["kappa_end"] - 1.0)
    beta = (1.0 - t) if spec["recipe"] == "crown-ibp" else 0.0
    return t * spec["eps_train"], kappa, beta


class CertifiedLoss:
    """The trainer's loss for a certified recipe; a callback too (``on_epoch_start`` gives it
    the trainer, whose step counter drives the schedule, so a resumed run continues it)."""

    def __init__(self, spec: dict[str, Any], model: nn.Module) -> None:
        self.spec = spec
        self.model = model
        self.steps = bound_graph(model)  # refuses batch norm, dropout, unsupported layers now
        self.trainer: Any = None
        self.per_epoch = 1
        self.last: dict[str, float] = {}

    def on_epoch_start(self, trainer: Any, epoch: int) -> None:
        self.trainer = trainer
        self.per_epoch = math.ceil(len(trainer.train_y) / trainer.config.batch_size)

    def __call__(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = net(x)
        natural = F.cross_entropy(logits, y)
        step = self.trainer.state.global_step if self.trainer is not None else 0
        eps, kappa, beta = schedule_at(self.spec, step, self.per_epoch)
        self.last = {"eps": eps, "kappa": kappa, "beta": beta}
        if eps == 0.0 or kappa == 1.0:
            return natural, logits
        k = logits.shape[1]
        ibp, crown = margin_bounds(self.steps, x, y, eps, "linf", k, crown=beta > 0)
        m = ibp if crown is None else beta * crown + (1 - beta) * ibp
        worst = torch.zeros_like(logits).scatter(1, wrong_classes(y, k), -m)
        robust = F.cross_entropy(worst, y)
        return kappa * natural + (1 - kappa) * robust, logits
