"""One prediction function, so every command reports the same clean accuracy on the same model.

Why one: ``robustact eval`` once counted ``argmax == y`` while the evaluation engine counted a
tied top output as wrong, and the two disagreed by 16 points (89.97 % vs 74.09 %) on a sigmoid
T = 100 model whose saturated outputs tie in float32. Training's validation and the JumpReLU κ
tuner had loops of their own too. :func:`predict` is the one loop and :func:`correct_untied` the
one rule; everything that reports a clean accuracy goes through them.

The tie rule: when the largest output is shared by two or more classes, ``argmax`` picks the
lowest index, so a "correct" tied prediction is an accident of class order, not a decision of
the model. It counts as not correct.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from robustact.core.validate import (
    check_eval_mode,
    check_labels,
    check_logits,
    check_model_output,
    check_positive_int,
    match_model_dtype,
    resolve_device,
    top_ties,
)
from robustact.data.tensors import as_images, as_tensors

__all__ = ["BatchCallback", "Predictions", "accuracy", "correct_untied", "predict"]

#: ``on_batch(logits, labels_or_None)``: called per batch, on the device, under inference mode.
BatchCallback = Callable[[torch.Tensor, "torch.Tensor | None"], None]


def correct_untied(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per row: the prediction is right AND the top output is not tied (THE tie rule).

    Why a tie is not correct: ``argmax`` breaks ties by index, so a tied "correct" prediction
    is an accident of class order. Kept separate from :func:`predict` for code that already
    holds logits (the training loop's running accuracy, the audit's checks).
    """
    return (logits.argmax(1) == labels) & ~top_ties(logits)


@dataclass(frozen=True)
class Predictions:
    """Clean predictions of a model on a data set, on the CPU.

    Attributes:
        pred: (N,) int64, ``argmax`` of the outputs (the lowest class index on a tie).
        correct: (N,) bool, right and untied (:func:`correct_untied`); None without labels.
        tied: (N,) bool, the top output is shared by two or more classes.
        num_classes: the number of outputs of the model.
    """

    pred: torch.Tensor
    correct: torch.Tensor | None
    tied: torch.Tensor
    num_classes: int

    @property
    def n(self) -> int:
        """Number of samples."""
        return int(self.pred.shape[0])

    @property
    def n_tied(self) -> int:
        """Samples whose top output is tied (counted as not correct)."""
        return int(self.tied.sum())

    @property
    def n_correct(self) -> int:
        """Samples predicted right without a tie."""
        return int(self._need_labels().sum())

    @property
    def accuracy(self) -> float:
        """Fraction in [0, 1] of samples predicted right without a tie."""
        return self.n_correct / self.n

    def _need_labels(self) -> torch.Tensor:
        if self.correct is None:
            raise ValueError("these predictions were made without labels, so nothing is "
                             "correct or not; pass labels (or an (x, y) pair) to predict")
        return self.correct


def _inputs(data: Any, labels: torch.Tensor | None
            ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(images, labels or None) from a dataset, an (x, y) pair, or a tensor plus ``labels``."""
    if isinstance(data, torch.Tensor):
        x = as_images(data, "data")
        if labels is None:
            return x, None
        check_labels(labels, x.shape[0], name="labels")
        return x, labels.long()
    if labels is not None:
        raise ValueError("labels were given twice: data already holds them; pass a dataset or "
                         "an (x, y) pair alone, or an image tensor with labels=")
    return as_tensors(data, "data")


def _device(model: nn.Module, x: torch.Tensor, device: str | torch.device | None
            ) -> torch.device:
    """``device`` if given, else where the model's weights are (else where the data is)."""
    if device is not None:
        return resolve_device(device, "device")
    t = next(itertools.chain(model.parameters(), model.buffers()), None)
    return t.device if t is not None else x.device


def _batch_logits(model: nn.Module, xb: torch.Tensor, k: int | None) -> torch.Tensor:
    """The model's checked logits for one batch (uint8 pixels become floats in [0, 1])."""
    if xb.dtype == torch.uint8:
        xb = xb.float().div_(255.0)
    z = check_model_output(model(match_model_dtype(model, xb)), "model output")
    check_logits(z, xb.shape[0], name="model output")
    if k is not None and z.shape[1] != k:
        raise ValueError(f"the model returned {z.shape[1]} outputs for one batch and {k} for "
                         "another; a classifier must return the same number of classes")
    return z


def predict(model: nn.Module, data: Any, labels: torch.Tensor | None = None, *,
            batch_size: int = 500, device: str | torch.device | None = None,
            on_batch: BatchCallback | None = None) -> Predictions:
    """Clean predictions of ``model`` (eval mode) on ``data``; a tied top output is not correct.

    Args:
        model: a classifier in eval mode returning logits (N, K); it is not moved.
        data: an :class:`~robustact.data.ImageDataset` (or anything with ``.images`` and
            ``.labels``), an ``(x, y)`` pair, or an image tensor (give ``labels`` with it, or
            none for predictions without correctness). Images are uint8 (divided by 255 per
            batch) or floats in [0, 1].
        labels: the labels when ``data`` is a bare tensor.
        batch_size: samples per forward pass (the result does not depend on it, up to the
            floating-point behaviour of the model's kernels across batch sizes).
        device: where to run (default: the model's device); batches are moved there.
        on_batch: ``on_batch(logits, labels)`` per batch, for callers that need more than the
            predictions (the trainer sums its validation loss here) without a loop of their own.

    Returns:
        :class:`Predictions`, its tensors on the CPU.
    """
    check_eval_mode(model, "predicting with it")
    bs = check_positive_int(batch_size, "batch_size")
    x, y = _inputs(data, labels)
    n = x.shape[0]
    if n == 0:
        raise ValueError("data holds no samples; pass at least one image")
    dev = _device(model, x, device)
    preds: list[torch.Tensor] = []
    ties: list[torch.Tensor] = []
    oks: list[torch.Tensor] = []
    k: int | None = None
    with torch.inference_mode():
        for start in range(0, n, bs):
            z = _batch_logits(model, x[start:start + bs].to(dev), k)
            if k is None:
                k = int(z.shape[1])
                if y is not None:
                    check_labels(y, n, num_classes=k, name="labels")
            tied = top_ties(z)
            pred = z.argmax(1)
            yb = y[start:start + bs].to(dev) if y is not None else None
            if yb is not None:
                oks.append(((pred == yb) & ~tied).cpu())
            if on_batch is not None:
                on_batch(z, yb)
            preds.append(pred.cpu())
            ties.append(tied.cpu())
    assert k is not None  # n > 0: at least one batch ran
    return Predictions(pred=torch.cat(preds), correct=torch.cat(oks) if oks else None,
                       tied=torch.cat(ties), num_classes=k)


def accuracy(model: nn.Module, data: Any, labels: torch.Tensor | None = None, *,
             batch_size: int = 500, device: str | torch.device | None = None) -> float:
    """Clean accuracy in [0, 1] of ``model`` on ``data``: :func:`predict`'s, ties not correct."""
    if isinstance(data, torch.Tensor) and labels is None:
        raise ValueError("accuracy needs labels: pass an (x, y) pair, a dataset, or labels=")
    return predict(model, data, labels, batch_size=batch_size, device=device).accuracy
