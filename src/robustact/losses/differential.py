"""Differential training loss (Nar, Ocal, Sastry, Ramchandran, arXiv:1901.08360; papers.md §4).

For a binary task with penultimate features φ(x) and score s(x) = wᵀφ(x) + b, the loss looks only
at pairs from opposite classes::

    L = mean_{i ∈ pos, j ∈ neg} log(1 + exp(−wᵀ(φ(x_i) − φ(x_j))))

Why pairs: cross-entropy stops pushing once each point is on the right side, while the pairwise
loss keeps widening the gap between the two classes' scores; the bias b cancels in every pair
difference, so it is set afterwards to the middle of the gap
(:func:`robustact.train.recipes.set_bias_by_margin`).

Binary models here are ordinary 2-class classifiers (``num_classes=2``; the model contract needs
at least two logits). The choice, documented: the score direction is ``w = W[pos] − W[neg]`` of
the 2-output head, so the logit difference z_pos − z_neg = wᵀφ + (b_pos − b_neg) is the paper's
score and ``argmax`` agrees with its sign. The positive class is label 1 by default.

Efficiency: only the N scores s = φ·w are formed; the |pos|×|neg| pair differences come from
broadcasting two score vectors, never from a list of feature pairs. ``softplus(−d)`` is the
numerically stable form of log(1 + exp(−d)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["differential_loss", "score_direction", "find_classifier", "DifferentialLoss"]


def differential_loss(scores: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Mean of softplus(−(s_i − s_j)) over all (positive i, negative j) pairs.

    ``scores`` is (N,), ``positive`` a bool mask (N,). Both classes must be present.
    """
    if scores.ndim != 1:
        raise ValueError(f"scores must have shape (N,), got {tuple(scores.shape)}")
    if positive.shape != scores.shape or positive.dtype != torch.bool:
        raise ValueError("positive must be a bool mask with the same shape as scores")
    pos, neg = scores[positive], scores[~positive]
    if pos.numel() == 0 or neg.numel() == 0:
        raise ValueError(
            f"the batch needs both classes for pairwise differences, got {pos.numel()} positive "
            f"and {neg.numel()} negative samples (use class-balanced batches: "
            "TrainConfig(balanced=True))"
        )
    return F.softplus(neg[None, :] - pos[:, None]).mean()


def find_classifier(model: nn.Module) -> nn.Module:
    """The module that owns ``features`` and the linear ``head`` (looks through wrappers)."""
    for m in model.modules():
        if callable(getattr(m, "features", None)) and isinstance(getattr(m, "head", None),
                                                                 nn.Linear):
            return m
    raise TypeError(
        "differential training needs a model with features(x) and a linear head "
        "(the robustact Classifier contract); none found in "
        f"{type(model).__name__}"
    )


def score_direction(head: nn.Linear, positive_class: int = 1) -> torch.Tensor:
    """w = W[pos] − W[neg] of a 2-output head: the direction of the binary score."""
    if not isinstance(head, nn.Linear) or head.out_features != 2:
        out = getattr(head, "out_features", None)
        raise ValueError(
            f"differential training needs a binary model (a head with 2 outputs), got {out}; "
            "build it with num_classes=2"
        )
    if positive_class not in (0, 1):
        raise ValueError(f"positive_class must be 0 or 1, got {positive_class}")
    return head.weight[positive_class] - head.weight[1 - positive_class]


class DifferentialLoss:
    """Trainer loss ``(model, x, y) -> (loss, logits)`` for differential training.

    The forward goes through ``model`` (so a DDP wrapper still synchronises gradients); φ is
    captured as the input of the classifier's ``head`` with a forward pre-hook. The returned
    logits let the trainer report accuracy, which reflects the current bias (see
    :func:`robustact.train.recipes.set_bias_by_margin`). The head bias receives no
    gradient from this loss.
    """

    def __init__(self, positive_class: int = 1) -> None:
        if positive_class not in (0, 1):
            raise ValueError(f"positive_class must be 0 or 1, got {positive_class}")
        self.positive_class = positive_class

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(f"y must have shape ({x.shape[0]},), got {tuple(y.shape)}")
        if bool(((y != 0) & (y != 1)).any()):
            raise ValueError("differential training is binary: labels must be 0 or 1")
        clf = find_classifier(model)
        captured: list[torch.Tensor] = []
        handle = clf.head.register_forward_pre_hook(lambda m, args: captured.append(args[0]))
        try:
            logits = model(x)
        finally:
            handle.remove()
        if not captured:
            raise RuntimeError("the model's forward did not call its head")
        phi = captured[-1]
        w = score_direction(clf.head, self.positive_class)
        scores = phi @ w
        return differential_loss(scores, y == self.positive_class), logits

    def __repr__(self) -> str:
        return f"DifferentialLoss(positive_class={self.positive_class})"
