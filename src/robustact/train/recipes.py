"""Training recipes on top of the loop: differential training and adversarial batches.

Differential training (papers.md §4): the pairwise loss (:mod:`robustact.losses.differential`)
fixes the score direction w but not the bias, because b cancels in every pair. Nar et al.
then put the decision boundary in the middle of the gap between the classes on the training
set::

    b = −½ (min_{i ∈ pos} wᵀφ(x_i) + max_{j ∈ neg} wᵀφ(x_j))

so the lowest-scoring positive and the highest-scoring negative are equally far from it.
With the 2-output head convention (w = W[pos] − W[neg]), b is split as b_pos = b/2,
b_neg = −b/2, which makes z_pos − z_neg = wᵀφ + b exactly.

Adversarial batches (papers.md §1): a batch hook replaces part of each batch by attack examples
crafted with :mod:`robustact.attacks`, the same attacks the evaluation uses.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustact.attacks.fgsm import FGSM
from robustact.losses.differential import DifferentialLoss, find_classifier, score_direction
from robustact.train.batches import as_tensors
from robustact.train.config import TrainConfig
from robustact.train.distributed import DistEnv, LocalBatch
from robustact.train.loop import BatchHook, Trainer

__all__ = [
    "MarginBiasCallback",
    "differential_train",
    "fgsm_batch_hook",
    "jumprelu_robust_hook",
    "margin_scores",
    "set_bias_by_margin",
]


@torch.no_grad()
def margin_scores(model: nn.Module, data: Any, positive_class: int = 1, batch_size: int = 512
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores wᵀφ(x) without bias, bool positive mask) over ``data``, in eval mode, batched."""
    x_all, y_all = as_tensors(data, "data")
    clf = find_classifier(model)
    w = score_direction(clf.head, positive_class)
    device = w.device
    was_training = clf.training
    clf.eval()
    try:
        scores = []
        for start in range(0, x_all.shape[0], batch_size):
            xb = x_all[start:start + batch_size].to(device)
            xb = xb.float().div_(255.0) if xb.dtype == torch.uint8 else xb.float()
            scores.append(clf.features(xb) @ w)
    finally:
        clf.train(was_training)
    return torch.cat(scores).cpu(), (y_all == positive_class).cpu()


@torch.no_grad()
def set_bias_by_margin(model: nn.Module, train_data: Any, positive_class: int = 1,
                       batch_size: int = 512) -> dict[str, float]:
    """Set the head bias to the middle of the training-set gap; returns the numbers used.

    Returns ``bias`` (b), ``min_pos``, ``max_neg`` and ``gap = min_pos − max_neg`` (negative
    when the training set is not separated in score; the boundary is still put mid-way).
    """
    scores, pos = margin_scores(model, train_data, positive_class, batch_size)
    if not pos.any() or pos.all():
        raise ValueError("set_bias_by_margin needs training samples of both classes")
    min_pos = scores[pos].double().min()
    max_neg = scores[~pos].double().max()
    b = -0.5 * (min_pos + max_neg)
    head = find_classifier(model).head
    if head.bias is None:
        raise ValueError("the model's head has no bias to set (build it with bias=True)")
    head.bias[positive_class] = b / 2
    head.bias[1 - positive_class] = -b / 2
    return {"bias": float(b), "min_pos": float(min_pos), "max_neg": float(max_neg),
            "gap": float(min_pos - max_neg)}


class MarginBiasCallback:
    """Trainer callback: re-set the margin bias after every epoch's optimizer steps.

    It runs before validation and checkpointing, so each epoch's validation accuracy and saved
    weights use the bias the final model would have. ``every_epoch=False`` sets it only after
    the last epoch (saves one pass over the training data per epoch).
    """

    def __init__(self, train_data: Any, positive_class: int = 1, every_epoch: bool = True,
                 batch_size: int = 512) -> None:
        self.train_data = train_data
        self.positive_class = positive_class
        self.every_epoch = every_epoch
        self.batch_size = batch_size
        self.last: dict[str, float] | None = None

    def on_train_epoch_end(self, trainer: Trainer, epoch: int) -> None:
        if self.every_epoch or epoch == trainer.config.epochs:
            self.last = set_bias_by_margin(trainer.model, self.train_data, self.positive_class,
                                           self.batch_size)


def differential_train(
    model: nn.Module,
    train_data: Any,
    val_data: Any = None,
    config: TrainConfig | None = None,
    *,
    out_dir: str | Path | None = None,
    positive_class: int = 1,
    set_bias_every_epoch: bool = True,
    resume: bool = False,
    progress: bool = False,
    **trainer_kwargs: Any,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Train a binary model with the pairwise loss on class-balanced batches, then set b.

    ``config.balanced`` is forced to True (the loss needs both classes in every batch). Returns
    the trainer history and the final :func:`set_bias_by_margin` numbers. Extra keyword arguments
    (``batch_hook``, ``wrap_model``, ``callbacks``, ``dist``) go to
    :class:`~robustact.train.Trainer`. Under DDP the pairs are formed within each rank's rows
    (not identical to one process), and DDP is told that the head's bias gets no gradient.
    """
    config = config if config is not None else TrainConfig()
    dist: DistEnv | None = trainer_kwargs.get("dist")
    if dist is not None and dist.world_size > 1 and "wrap_model" not in trainer_kwargs:
        # the pairwise loss leaves the head's bias without a gradient (the margin rule sets it,
        # alike on every rank): DDP must not wait for one
        bias = find_classifier(model).head.bias
        names = [n for n, p in model.named_parameters() if p is bias]
        trainer_kwargs["wrap_model"] = lambda m: dist.wrap(m, ignore=names)
    if not config.balanced:
        config = dataclasses.replace(config, balanced=True)
    bias_cb = MarginBiasCallback(train_data, positive_class, every_epoch=set_bias_every_epoch)
    callbacks = [bias_cb, *trainer_kwargs.pop("callbacks", ())]
    trainer = Trainer(model, train_data, val_data, config, out_dir=out_dir,
                      loss=DifferentialLoss(positive_class), progress=progress,
                      callbacks=callbacks, **trainer_kwargs)
    history = trainer.fit(resume=resume)
    # The last epoch's callback has set it already (also when resuming a finished run, set it
    # again: it is a pure function of the weights and costs one pass).
    info = set_bias_by_margin(trainer.model, train_data, positive_class)
    return history, info


# --- adversarial batches ---------------------------------------------------------------------

def fgsm_batch_hook(fraction: float, eps: float) -> BatchHook:
    """Replace the first ``round(fraction·N)`` samples of each batch by FGSM examples.

    The JumpReLU paper's "robust" variants (MNIST: 0.3 at ε 0.3; CIFAR: 0.6 at ε 0.031). The
    batch is already shuffled, so the first samples are a random subset. Examples are crafted
    with the model in eval mode (no dropout, batch-norm statistics untouched), then train mode is
    restored; only the input gradient is computed, so no ``param.grad`` is touched.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    attack = FGSM(eps)  # the attack suite's FGSM: one implementation, checked there

    def hook(model: nn.Module, x: torch.Tensor, y: torch.Tensor, step: int,
             part: LocalBatch | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if part is None:
            k = int(round(fraction * x.shape[0]))
        else:  # under DDP: this rank's rows among the global batch's first round(fraction·N)
            k = int((part.rows < int(round(fraction * part.size))).sum()) if part.weight else 0
        if k == 0 or eps == 0:
            return x, y
        was_training = model.training
        model.eval()
        try:
            x_adv = attack(model, x[:k], y[:k], check=False).x_adv  # unverified: not needed
        finally:
            model.train(was_training)
        return torch.cat([x_adv, x[k:]]), y

    return hook


def jumprelu_robust_hook(dataset: str) -> BatchHook:
    """The FGSM hook of the JumpReLU paper's robust variants for ``"mnist"`` or ``"cifar10"``."""
    if dataset == "mnist":
        return fgsm_batch_hook(0.3, 0.3)
    if dataset == "cifar10":
        return fgsm_batch_hook(0.6, 0.031)
    raise ValueError(f"no robust-variant recipe for dataset {dataset!r}; use fgsm_batch_hook")
